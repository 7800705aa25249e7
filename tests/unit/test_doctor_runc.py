"""`pyflue doctor` on the engine's runc: the fix of CVE-2024-21626 (Leaky Vessels)."""

from __future__ import annotations

import pytest

from pyflue.doctor import runc_check


@pytest.mark.parametrize(("version", "ok"), [
    ("1.1.12", True),
    ("v1.1.12-0-g51d5e94", True),
    ("1.2.0", True),
    ("1.1.5+ds1-1+deb12u1", True),  # Debian's patched build (this machine's)
    ("1.0.0~rc93+ds1-5+deb11u3", True),
    ("1.1.11", False),
    ("v1.1.5-0-gf19387a", False),
    ("1.1.5+ds1-1", False),  # Debian's build before the fix
    ("1.0.0~rc93+ds1-5+deb11u2", False),
])
def test_a_runc_older_than_the_fix_fails_the_check(version: str, ok: bool) -> None:
    check = runc_check({"RuncCommit": {"ID": version, "Expected": version}})
    assert check.ok is ok and not check.optional and version in check.detail
    if not ok:
        assert "CVE-2024-21626" in check.detail and check.fix and "1.1.12" in check.fix


@pytest.mark.parametrize("info", [{}, {"RuncCommit": {"ID": "N/A"}}])
def test_an_unknown_runc_is_a_warning(info: dict[str, object]) -> None:
    check = runc_check(info)
    assert not check.ok and check.optional and "cannot tell" in check.detail
