from pyflue.sandbox.helper import main

main()
