"""The install instructions install this project, never the other `pyflue` on the package index."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# `pip install pyflue` (or `pip3`, `python -m pip`, with options, extras or a version) names the
# index's project; a path (./pyflue, /x/pyflue), a wheel or a VCS URL does not match.
BARE = re.compile(r"pip3?\s+install(?:\s+-{1,2}[\w-]+(?:=\S+)?)*\s+['\"]?pyflue(?:\[[^\]]*\])?"
                  r"(?:[=<>~!]=?[\w.*]+)?['\"]?(?=$|[\s`;&|)])")


def _instructions(text: str) -> list[str]:
    """Lines that tell someone to run pip: ones that only warn against the bare name are not."""
    return [line for line in text.splitlines()
            if BARE.search(line) and not re.search(r"\b(not|never|NOT|NEVER)\b|different|another", line)]


def test_no_doc_tells_anyone_to_pip_install_the_index_project() -> None:
    offenders = {str(p.relative_to(ROOT)): _instructions(p.read_text()) for p in DOCS}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_check_catches_a_bare_pip_install_pyflue() -> None:
    for line in ["pip install pyflue", "      - run: pip install pyflue", "`pip install -U pyflue`",
                 "python -m pip install 'pyflue[dev]'", "pip3 install pyflue==0.1.0"]:
        assert _instructions(line) == [line]
    for line in ["pip install ./pyflue", "pip install dist/pyflue_engine-0.1.0-py3-none-any.whl",
                 "pip install -e '.[dev]'", "pip install pyflue-engine"]:
        assert _instructions(line) == []


def test_the_readme_warns_that_pip_install_pyflue_is_another_project() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "`pip install pyflue` installs a different project" in readme
    assert "docs/install.md" in readme


def test_the_distribution_name_is_not_the_index_project() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "pyflue-engine"
    assert project["scripts"] == {"pyflue": "pyflue.cli:main"}


def test_the_image_requirements_that_errors_point_to_exist() -> None:
    from pyflue.sandbox.docker.box import IMAGE_REQUIREMENTS

    page, anchor = IMAGE_REQUIREMENTS.split("#")
    headings = [line.lstrip("#").strip().lower().replace(" ", "-")
                for line in (ROOT / page).read_text().splitlines() if line.startswith("#")]
    assert anchor in headings
