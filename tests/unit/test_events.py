"""The event models: one per type, a tagged union on `type`, and readers that tolerate newer
servers."""

from __future__ import annotations

from datetime import UTC, datetime

from pyflue.events import (
    EVENT_CLASSES,
    EventType,
    RunEnd,
    ShellEnd,
    ShellEndEvent,
    UnknownEvent,
    parse_event,
    parse_event_json,
)
from pyflue.models import ErrorInfo, RunStatus


def _wire(type: str, data: dict[str, object]) -> dict[str, object]:
    return {"run_id": "workflow:w:1", "event_index": 3, "type": type,
            "timestamp": datetime(2026, 1, 1, tzinfo=UTC).isoformat(), "data": data}


def test_every_event_type_has_its_own_event_class() -> None:
    assert set(EVENT_CLASSES) == set(EventType)
    assert all(cls.model_fields["type"].default is t for t, cls in EVENT_CLASSES.items())


def test_an_event_parses_into_the_class_of_its_type() -> None:
    event = parse_event(_wire("shell_end", {"shell_id": "sh-1", "exit_code": 3,
                                            "timed_out": False, "duration_ms": 9}))
    assert isinstance(event, ShellEndEvent)
    assert event.type is EventType.shell_end and event.data.exit_code == 3


def test_an_event_of_an_unknown_type_still_parses_with_its_data() -> None:
    event = parse_event_json('{"run_id": "r", "event_index": 1, "type": "egress", '
                             '"timestamp": "2026-01-01T00:00:00Z", '
                             '"data": {"host": "index.example.com", "port": 443}}')
    assert isinstance(event, UnknownEvent)
    assert event.type == "egress" and event.data["host"] == "index.example.com"
    assert event.model_dump(mode="json")["data"] == {"host": "index.example.com", "port": 443}


def test_keys_a_newer_server_adds_are_kept() -> None:
    event = parse_event(_wire("run_end", {"status": "completed", "is_error": False,
                                          "error": None, "result_ref": "/runs/x"}))
    assert event.data["result_ref"] == "/runs/x"
    assert event.model_dump(mode="json")["data"]["result_ref"] == "/runs/x"


def test_keys_that_do_not_apply_are_left_out_and_nulls_that_do_are_kept() -> None:
    end = ShellEnd(shell_id="sh-1", exit_code=None, timed_out=False, duration_ms=5,
                   error="cancelled")
    assert end.wire == {"shell_id": "sh-1", "exit_code": None, "timed_out": False,
                        "duration_ms": 5, "error": "cancelled"}
    assert "killed" not in end and end.get("killed") is None


def test_a_run_ended_from_outside_names_its_status_and_reason() -> None:
    end = RunEnd.of(RunStatus.timed_out, reason="the run's deadline of 3 s passed")
    assert end.is_error and end.error == ErrorInfo(
        type="timed_out", message="run timed_out: the run's deadline of 3 s passed")
    assert RunEnd.of(RunStatus.completed, duration_ms=4).wire == {
        "status": "completed", "is_error": False, "error": None, "duration_ms": 4,
        "result": None}


def test_a_completed_run_end_carries_its_result_or_a_pointer_when_it_is_large() -> None:
    assert RunEnd.of(RunStatus.completed, result={"a": 1}).wire["result"] == {"a": 1}
    large = RunEnd.of(RunStatus.completed, result="x" * (64 * 1024), run_id="r")
    assert "result" not in large.wire
    assert large.wire["result_truncated"] is True and large.wire["run_path"] == "/runs/r"
    assert "result" not in RunEnd.of(RunStatus.failed, result={"a": 1}).wire


def test_payloads_read_and_compare_like_the_dicts_they_are_on_the_wire() -> None:
    event = parse_event(_wire("log", {"level": "info", "message": "hi", "fields": {"n": 1}}))
    assert event.data == {"level": "info", "message": "hi", "fields": {"n": 1}}
    assert event.data["message"] == "hi" and event.data.get("nope", 7) == 7
    assert sorted(event.data.keys()) == ["fields", "level", "message"]


def test_the_tagged_union_holds_exactly_the_event_classes() -> None:
    from typing import get_args

    from pyflue.events import KnownEvent

    union = get_args(KnownEvent)[0]
    assert set(get_args(union)) == set(EVENT_CLASSES.values())
