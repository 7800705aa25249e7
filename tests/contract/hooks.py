"""Schemathesis hooks for the contract test (loaded through SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

from typing import Any

import schemathesis

RUN_OUTCOMES = {"failed", "timed_out", "interrupted"}


@schemathesis.check
def a_5xx_is_a_run_outcome(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 5xx answer is only ever a run's documented outcome (a run that did not complete,
    answering ``?wait=result``), never the server failing: not_a_server_error is told to expect
    500/503/504 on the invocation for that reason, so this check takes its place there."""
    if response.status_code < 500:
        return None
    body = response.json()
    run_id = body.get("run_id") if isinstance(body, dict) else None
    status = body.get("status") if isinstance(body, dict) else None
    if not run_id or status not in RUN_OUTCOMES:
        raise AssertionError(f"a {response.status_code} that is not a run's outcome: {body}")
    if response.headers.get("x-flue-run-id") != [run_id]:  # lowercase names, lists of values
        raise AssertionError(f"a run's outcome without its X-Flue-Run-Id header: {body}")
    return None
