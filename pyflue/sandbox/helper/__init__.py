"""The channel helper's binary: built from ``pyflue-helper.c`` (shipped in the package) into a
cache folder, once per source version.

The binary is static (musl-gcc when it is installed, else the C compiler with glibc's static
library), so it runs in any image, with or without a libc. It is built by ``./scripts/setup``
and otherwise on first use when a C compiler is present; ``python -m pyflue.sandbox.helper``
builds it and prints its path. Where it lives: ``$PYFLUE_HELPER_CACHE``, else
``$XDG_CACHE_HOME/pyflue`` (``~/.cache/pyflue``), in a file named after the source's hash.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from importlib import resources
from pathlib import Path

FLAGS = ("-static", "-O2", "-Wall", "-Wextra", "-std=gnu11")
_lock = threading.Lock()


def source() -> bytes:
    return resources.files(__package__).joinpath("pyflue-helper.c").read_bytes()


def version() -> str:
    """The helper's version: 12 hex digits of the hash of its source and build flags."""
    digest = hashlib.sha256(source() + " ".join(FLAGS).encode() + platform.machine().encode())
    return digest.hexdigest()[:12]


def cache_dir() -> Path:
    if os.environ.get("PYFLUE_HELPER_CACHE"):
        return Path(os.environ["PYFLUE_HELPER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pyflue"


def binary_path() -> Path:
    return cache_dir() / f"pyflue-helper-{version()}"


class BuildError(Exception):
    """The helper could not be built here; ``str()`` says why."""


def ensure_binary() -> Path:
    """The built helper, built now when it is not yet (BuildError when it cannot be)."""
    path = binary_path()
    if path.is_file():
        return path
    if platform.system() != "Linux":
        raise BuildError(f"the helper is built for Linux only (this is {platform.system()})")
    with _lock:
        if path.is_file():
            return path
        compilers = [c for c in ("musl-gcc", os.environ.get("CC") or "cc", "gcc")
                     if shutil.which(c)]
        if not compilers:
            raise BuildError("no C compiler (musl-gcc, cc or gcc) to build it with")
        path.parent.mkdir(parents=True, exist_ok=True)
        errors = []
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            src = Path(tmp) / "pyflue-helper.c"
            src.write_bytes(source())
            out = Path(tmp) / "pyflue-helper"
            for compiler in dict.fromkeys(compilers):
                done = subprocess.run([compiler, *FLAGS, "-o", str(out), str(src)],
                                      capture_output=True, text=True, timeout=120)
                if done.returncode == 0 and out.is_file():
                    out.chmod(0o755)
                    os.replace(out, path)
                    return path
                errors.append(f"{compiler}: {done.stderr.strip()[-300:]}")
        raise BuildError("could not compile it: " + "; ".join(errors))


def main() -> None:
    print(ensure_binary())


if __name__ == "__main__":
    main()
