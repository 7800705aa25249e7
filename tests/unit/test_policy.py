"""The sandbox policy: defaults, and asks beyond the maxima refused clearly."""

from __future__ import annotations

import pytest

from pyflue.agent_config import AgentConfig
from pyflue.errors import ConfigError
from pyflue.sandbox.policy import parse_size, spec_for
from pyflue.settings import SandboxDefaults


def _spec(defaults: SandboxDefaults | None = None, **asks: object):  # type: ignore[no-untyped-def]
    return spec_for(AgentConfig.model_validate(asks), defaults or SandboxDefaults(),
                    run_id="workflow:w:1", workflow="w", image_override=None)


@pytest.mark.parametrize(("text", "size"), [("512m", 512 << 20), ("1g", 1 << 30),
                                            ("1.5GiB", 3 << 29), ("2048", 2048), ("64k", 65536)])
def test_sizes_parse_like_docker(text: str, size: int) -> None:
    assert parse_size(text, what="memory") == size


def test_the_defaults_are_the_hardened_ones() -> None:
    spec = _spec()
    assert (spec.user, spec.network, spec.memory, spec.pids, spec.read_only_root) == (
        "1000:1000", "none", "2g", 512, True)
    assert (spec.workspace_size, spec.tmp_size) == ("1g", "256m")


def test_tmpfs_sizes_stay_below_the_memory_limit() -> None:
    spec = _spec(memory="512m")
    assert (spec.workspace_size, spec.tmp_size) == ("256m", "128m")


def test_asks_within_the_maxima_are_granted() -> None:
    spec = _spec(memory="2g", cpus=2, pids=1024, network="bridge", runtime="runsc")
    assert (spec.memory, spec.cpus, spec.pids, spec.network, spec.runtime) == (
        "2g", 2, 1024, "bridge", "runsc")


@pytest.mark.parametrize(("asks", "message"), [
    ({"memory": "8g"}, "memory 8g, above the maximum of 4g (PYFLUE_SANDBOX_MAX_MEMORY)"),
    ({"cpus": 16}, "cpus 16.0, above the maximum of 2.0 (PYFLUE_SANDBOX_MAX_CPUS)"),
    ({"pids": 100000}, "pids 100000, above the maximum of 4096 (PYFLUE_SANDBOX_MAX_PIDS)"),
    ({"runtime": "kata"}, "runtime 'kata', which this server does not allow"),
    ({"memory": "lots"}, "is not a size"),
])
def test_asks_beyond_the_maxima_are_refused_naming_the_setting(
    asks: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _spec(**asks)


def test_a_server_can_forbid_the_network() -> None:
    strict = SandboxDefaults(allowed_networks=["none"])
    with pytest.raises(ConfigError, match="network 'bridge', which this server does not allow"):
        _spec(strict, network="bridge")


@pytest.mark.parametrize(("user", "message"), [
    ("0:0", "must not be root"), ("0", "must not be root"), ("flue", "should match pattern")])
def test_the_sandbox_user_is_a_numeric_non_root_id(user: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SandboxDefaults(user=user)
    assert SandboxDefaults(user="1001:1001").user == "1001:1001"
