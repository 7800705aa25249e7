"""Telling an image that lacks a tool from a tool that failed, from the engine's answers."""

from __future__ import annotations

from pyflue.sandbox.docker.box import _tool_missing
from pyflue.sandbox.docker.lifecycle import INIT, _no_shell


def test_runc_refusing_to_start_without_bin_sh_is_a_missing_shell() -> None:
    assert _no_shell('OCI runtime create failed: runc create failed: unable to start container '
                     'process: exec: "/bin/sh": stat /bin/sh: no such file or directory: unknown')


def test_gvisor_refusing_to_start_without_bin_sh_is_a_missing_shell() -> None:
    assert _no_shell("OCI runtime start failed: starting container: starting root container: "
                     "starting sandbox: creating process: failed to load /bin/sh: no such file "
                     "or directory: unknown")


def test_another_start_failure_is_not_a_missing_shell() -> None:
    assert not _no_shell("OCI runtime create failed: cgroup: pids limit: invalid argument")


def test_exit_codes_126_and_127_mean_the_helper_is_missing() -> None:
    assert _tool_missing(126, "exit code 126") and _tool_missing(127, "sh: 1: find: not found")


def test_a_helper_that_ran_and_failed_is_not_missing() -> None:
    assert not _tool_missing(1, "find: '/workspace/x': No such file or directory")


def test_the_sh_init_never_loops_on_sleep_alone() -> None:
    assert "sleep 2147483647 &" not in INIT and "read -r _" in INIT
