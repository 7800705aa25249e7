"""Finding a run by its id or a prefix (pyflue.describe), over the in-memory store."""

from __future__ import annotations

import pytest

from pyflue.describe import StoreRuns, describe, matches, pick, resolve
from pyflue.errors import RunIdAmbiguous, RunIdUnknown
from pyflue.models import Run, RunStatus, utcnow
from pyflue.store import MemoryStore

IDS = ["workflow:hello:01M8AQ24WNTBVK3YR2MYWR9A46", "workflow:hello:01M8AQ5FEZK49YQFX83KM8S2ZH",
       "workflow:shell_steps:01M8AT7NEDSM4798423THJW70Q"]


def test_a_prefix_of_the_id_or_of_its_ulid_in_any_case_matches() -> None:
    assert matches("workflow:hel", IDS[0]) and matches("01m8aq24", IDS[0])
    assert not matches("hello", IDS[0]) and not matches("01M8AQ5", IDS[0])


def test_one_match_is_picked_and_several_or_none_say_so() -> None:
    assert pick("01M8AT", IDS, "here") == IDS[2]
    with pytest.raises(RunIdAmbiguous, match=r"'workflow:hello' matches 2 runs in here"):
        pick("workflow:hello", IDS, "here")
    with pytest.raises(RunIdUnknown, match=r"no run 'zz' in here: `pyflue runs` lists"):
        pick("zz", IDS, "here")


async def test_a_store_resolves_a_whole_id_first_then_prefixes_over_every_page() -> None:
    store = MemoryStore()
    await store.open()
    for run_id in IDS + [f"workflow:many:{n:026d}" for n in range(600)]:
        await store.create_run(Run(run_id=run_id, workflow="w", status=RunStatus.queued,
                                   created_at=utcnow()))
    await store.create_run(Run(run_id="workflow:hello", workflow="w",
                               status=RunStatus.queued, created_at=utcnow()))
    runs = StoreRuns(store)
    assert (await resolve(runs, "workflow:hello")).run_id == "workflow:hello"
    assert (await resolve(runs, "01m8aq5")).run_id == IDS[1]
    assert (await resolve(runs, "workflow:shell")).run_id == IDS[2]
    details = await describe(runs, "01M8AT")
    assert details.container_id is None and details.document()["container_id"] is None
