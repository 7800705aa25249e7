"""The dashboard in a real headless browser (Debian's chromium driven by Playwright) against a
real `pyflue serve` with a token and the real Docker engine.

Screenshots of each page are written only when PYFLUE_SCREENSHOTS names a folder
(`PYFLUE_SCREENSHOTS=docs/images`), so a CI run rewrites nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from tests.integration.servers import COLD, Server

playwright_sync = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.docker

CHROMIUM = "/usr/bin/chromium"
TOKEN = "dash-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT_MS = 30_000

TICKER = '''
"""Logs a line per tick; with "shell" it first starts its container and says so."""
import asyncio

from pyflue import FlueContext, create_agent

box = create_agent(lambda ctx: {"cwd": "/workspace"})


async def run(ctx: FlueContext) -> dict:
    ticks = int(ctx.payload.get("ticks", 3))
    if ctx.payload.get("shell"):
        harness = await ctx.init(box)
        await harness.shell("echo container ready")
        if ctx.payload.get("artifact"):
            await harness.fs.write_file("reports/junit.xml", '<testsuite tests="1"/>\\n')
            await harness.artifacts.save("reports/junit.xml")
    for tick in range(1, ticks + 1):
        ctx.log.info(f"tick {tick} of {ticks}")
        await asyncio.sleep(float(ctx.payload.get("delay", 0.1)))
    if ctx.payload.get("fail"):
        raise ValueError("asked to fail")
    return {"ticks": ticks}
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not Path(CHROMIUM).exists():
        pytest.fail("the dashboard tests need Debian's chromium: run ./scripts/setup "
                    "(apt-get install chromium)")
    root = tmp_path_factory.mktemp("dashboard")
    (root / "workflows").mkdir()
    (root / "workflows" / "ticker.py").write_text(TICKER)
    srv = Server(root, root / "store.db", concurrency=4,
                 env={**COLD, "PYFLUE_API_TOKEN": TOKEN})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as pw, \
            tempfile.TemporaryDirectory(prefix="pyflue-chromium-") as profile:
        # A persistent context is how Playwright takes a user-data dir: a fresh one per run.
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
            viewport={"width": 1360, "height": 900}, color_scheme="light")
        yield context
        context.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    """A tab that already holds the token for this session (as after the token dialog)."""
    tab = browser.new_page()
    tab.set_default_timeout(WAIT_MS)
    tab.goto(f"{server.url}/health")  # same origin, so the session storage is the dashboard's
    tab.evaluate(f"sessionStorage.setItem('pyflue.token', {TOKEN!r})")
    yield tab
    tab.close()


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        yield client


def start_run(api: httpx.Client, **payload: Any) -> str:
    answer = api.post("/workflows/ticker", json={"payload": payload})
    assert answer.status_code == 202, answer.text
    run_id: str = answer.json()["run_id"]
    return run_id


def wait_finished(api: httpx.Client, run_id: str) -> dict[str, Any]:
    page_of = api.get(f"/runs/{run_id}/stream")  # the stream ends after run_end
    assert page_of.status_code == 200
    run: dict[str, Any] = api.get(f"/runs/{run_id}").json()
    return run


def shoot(tab: Any, name: str) -> None:
    folder = os.environ.get("PYFLUE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(Path(folder) / f"dashboard-{name}.png"), full_page=True)


def run_of(url: str) -> str | None:
    """The run id a run page's URL names."""
    return parse_qs(urlsplit(url).query).get("id", [None])[0]


def log_lines(tab: Any, kind: str = "log") -> int:
    count: int = tab.locator(f"#log .line[data-type={kind}]").count()
    return count


def until(check: Callable[[], bool], tab: Any, what: str) -> None:
    for _ in range(WAIT_MS // 100):
        if check():
            return
        tab.wait_for_timeout(100)
    raise AssertionError(f"the page never showed {what}")


def test_a_page_asks_for_the_token_on_a_401_and_says_when_it_is_wrong(
    browser: Any, server: Server,
) -> None:
    tab = browser.new_page()
    tab.set_default_timeout(WAIT_MS)
    tab.goto(f"{server.url}/ui/")
    dialog = tab.locator("#token-dialog")
    dialog.wait_for(state="visible")
    assert "needs an API token" in tab.locator("#token-why").inner_text()
    tab.fill("#token-input", "wrong")
    tab.click("#token-dialog button[type=submit]")
    tab.locator("#token-why").filter(has_text="refused").wait_for()
    assert dialog.is_visible()
    tab.fill("#token-input", TOKEN)
    tab.click("#token-dialog button[type=submit]")
    tab.locator("#live").filter(has_text="live").wait_for()
    assert not dialog.is_visible()
    assert tab.evaluate("sessionStorage.getItem('pyflue.token')") == TOKEN
    tab.close()


def test_a_new_run_appears_live_and_its_page_follows_the_log(
    page: Any, api: httpx.Client, server: Server,
) -> None:
    page.goto(f"{server.url}/ui/")
    page.locator("#live").filter(has_text="live").wait_for()
    run_id = start_run(api, ticks=12, delay=0.4, shell=True)
    row = page.locator(f"#runs tr[data-run-id='{run_id}']")
    row.wait_for()  # appeared without a reload
    row.get_by_role("link", name=run_id).click()
    page.wait_for_url(re.compile(r"run\.html\?id="))
    page.locator("#log .line[data-type=log]").first.wait_for()
    first = log_lines(page)
    until(lambda: log_lines(page) > first, page, "the log growing")
    assert first < 12  # it was followed while the run went on, not loaded at the end
    page.locator("#run-status .badge.completed").wait_for()
    assert log_lines(page) == 12
    assert '"ticks": 12' in page.locator("#result").inner_text()
    assert page.locator("#timeline li[data-type=run_end]").count() == 1
    # search and the type filter
    page.fill("#log-search", "tick 3 of")
    assert page.locator("#log .line").all_inner_texts()[0].endswith("tick 3 of 12")
    assert page.locator("#log .line").count() == 1
    page.fill("#log-search", "")
    page.select_option("#log-type", "run_end")
    assert page.locator("#log .line").count() == 1
    page.select_option("#log-type", "")
    # resources and artifacts show exactly when this server has them (hidden on a 404)
    has_artifacts = api.get(f"/runs/{run_id}/artifacts").status_code == 200
    until(lambda: page.locator("#artifacts").is_visible() == has_artifacts, page,
          "the artifacts panel as the server has it")
    metrics = api.get(f"/runs/{run_id}/metrics")
    if metrics.status_code == 404:
        assert page.locator("#resources").is_hidden()
    page.locator("h1").click()  # no focus ring in the picture
    shoot(page, "run")


def test_cancel_ends_a_running_run_cancelled_and_confirms_its_container_is_gone(
    page: Any, api: httpx.Client, server: Server, containers_of: Callable[[str], list[Any]],
) -> None:
    run_id = start_run(api, ticks=400, delay=0.2, shell=True)
    page.goto(f"{server.url}/ui/run.html?id={run_id}")
    page.locator("[data-fact=launch] .badge.cold").wait_for()  # from container_started
    page.locator("#log .line[data-type=log]").first.wait_for()
    page.click("#cancel")
    page.click("#cancel-yes")
    page.locator("#run-status .badge.cancelled").wait_for()
    page.locator("#cancel-result").filter(has_text="is gone").wait_for()
    assert api.get(f"/runs/{run_id}").json()["status"] == "cancelled"
    assert containers_of(run_id) == []
    assert page.locator("#cancel").is_hidden()
    assert "cancelled" in page.locator("#error").inner_text()
    shoot(page, "run-cancelled")


def test_filtering_by_status_keeps_the_filter_in_the_url(
    page: Any, api: httpx.Client, server: Server,
) -> None:
    failed = start_run(api, ticks=1, fail=True)
    done = start_run(api, ticks=1)
    wait_finished(api, failed)
    wait_finished(api, done)
    page.goto(f"{server.url}/ui/")
    page.locator(f"#runs tr[data-run-id='{done}']").wait_for()
    page.select_option("#f-status", "failed")
    page.wait_for_url(re.compile(r"[?&]status=failed"))
    page.locator(f"#runs tr[data-run-id='{failed}']").wait_for()
    statuses = page.locator("#runs tbody tr[data-status]")
    until(lambda: set(statuses.evaluate_all("rows => rows.map(r => r.dataset.status)"))
          == {"failed"}, page, "only failed runs")
    assert page.locator(f"#runs tr[data-run-id='{done}']").count() == 0
    # the URL alone brings the filter back, and the id filter works the same way
    part = failed.split(":")[-1][-8:]
    page.goto(f"{server.url}/ui/?status=failed&id={part}")
    page.locator(f"#runs tr[data-run-id='{failed}']").wait_for()
    assert page.locator("#f-status").input_value() == "failed"
    assert page.locator("#f-id").input_value() == part
    assert page.locator("#runs tbody tr[data-status]").count() == 1
    page.goto(f"{server.url}/ui/run.html?id={failed}")
    page.locator("#traceback").filter(has_text="ValueError").wait_for()
    page.locator("#timeline li[data-type=run_end]").wait_for()
    shoot(page, "run-failed")


def test_the_runs_page_and_the_health_page_show_the_server(
    page: Any, api: httpx.Client, server: Server,
) -> None:
    wait_finished(api, start_run(api, ticks=2, shell=True))
    page.goto(f"{server.url}/ui/health.html")
    page.locator("#workers tbody tr td.mono").first.wait_for()
    assert "alive" in page.locator("#workers tbody tr").first.inner_text()
    page.locator("#card-p50").wait_for()
    until(lambda: "ms" in page.locator("#card-p50").inner_text()
          or " s" in page.locator("#card-p50").inner_text(), page, "a start latency")
    assert page.locator("#card-queue .v").inner_text() == "0"
    shoot(page, "health")


def test_the_log_resumes_after_a_dropped_stream_from_the_last_event_it_has(
    page: Any, api: httpx.Client, server: Server,
) -> None:
    run_id = start_run(api, ticks=8)
    run = wait_finished(api, run_id)
    resumed: list[str | None] = []

    def drop_after_three(route: Any) -> None:
        if resumed:  # the reconnection: to the real server, as the page sends it
            resumed.append(route.request.headers.get("last-event-id"))
            route.continue_()
            return
        resumed.append(None)
        first = api.get(f"/runs/{run_id}/events", params={"limit": 3}).json()["events"]
        body = "".join(f"id: {e['event_index']}\nevent: {e['type']}\ndata: {json.dumps(e)}\n\n"
                       for e in first)
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    page.route("**/stream*", drop_after_three)
    page.goto(f"{server.url}/ui/run.html?id={run_id}")
    page.locator("#log .line[data-type=run_end]").wait_for()
    assert resumed[1:] == ["3"]
    indexes = page.locator("#log .line").evaluate_all("rows => rows.map(r => r.dataset.index)")
    assert indexes == [str(i) for i in range(1, run["event_count"] + 1)]


def test_rerun_starts_the_same_payload_and_the_copied_curl_works(
    page: Any, api: httpx.Client, server: Server,
) -> None:
    first = start_run(api, ticks=1, note="it's quoted")
    wait_finished(api, first)
    page.goto(f"{server.url}/ui/run.html?id={first}")
    page.locator("#run-status .badge.completed").wait_for()
    page.click("#copy-curl")
    page.locator("#copy-result").wait_for()
    command = page.locator("#curl").text_content()
    assert TOKEN not in command  # the token stays in the browser
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYFLUE_API_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    by_curl = json.loads(done.stdout)["run_id"]
    page.click("#rerun")
    page.wait_for_url(lambda url: run_of(url) not in (None, first))
    page.locator("#run-status .badge.completed").wait_for()
    again = run_of(page.url)
    assert again not in (first, by_curl)
    for run_id in (again, by_curl):
        assert wait_finished(api, run_id)["payload"] == {"ticks": 1, "note": "it's quoted"}


# The shapes of GET /runs/{id}/metrics and GET /runs/{id}/artifacts, as the branches that add
# those routes answer them: stand-ins served by the browser while this server has neither route.
SAMPLES = {"run_id": "", "status": "completed", "resources": None, "metrics": [
    {"timestamp": f"2026-01-01T00:00:0{i}Z", "cpuCount": 1.0, "cpuUsedPct": pct,
     "memUsed": mem << 20, "memTotal": 512 << 20, "diskUsed": 4096, "diskTotal": 64 << 20}
    for i, (pct, mem) in enumerate([(5.0, 10), (80.0, 40), (35.0, 25)])]}
ARTIFACTS = {"run_id": "", "artifacts": [
    {"name": "reports/junit.xml", "path": "/workspace/reports/junit.xml", "size": 11,
     "sha256": "0" * 64, "content_type": "application/xml"}]}


def test_resources_and_artifacts_show_when_the_server_has_them(
    page: Any, api: httpx.Client, server: Server,
) -> None:
    run_id = start_run(api, ticks=1)
    wait_finished(api, run_id)
    asked: list[str] = []

    def serve(route: Any) -> None:
        path = urlsplit(route.request.url).path
        asked.append(route.request.headers.get("authorization", ""))
        if path.endswith("/metrics"):
            route.fulfill(json={**SAMPLES, "run_id": run_id})
        elif path.endswith("/artifacts"):
            route.fulfill(json={**ARTIFACTS, "run_id": run_id})
        else:
            route.fulfill(body="<junit/>\n", content_type="application/xml")

    page.route(re.compile(r".*/runs/[^/]+/(metrics|artifacts)(/.*)?$"), serve)
    page.goto(f"{server.url}/ui/run.html?id={quote(run_id)}")
    page.locator("#resources").filter(has_text="peak 80.0").wait_for()
    assert "Memory, peak 40.0 MiB" in page.locator("#resources").inner_text()
    assert page.locator("#resources svg.spark").count() == 2
    row = page.locator("#artifacts tr[data-artifact='reports/junit.xml']")
    row.wait_for()
    assert "application/xml" in row.inner_text()
    with page.expect_download() as download:
        row.get_by_role("button", name="Download reports/junit.xml").click()
    assert download.value.suggested_filename == "junit.xml"
    assert Path(download.value.path()).read_text() == "<junit/>\n"
    assert set(asked) == {f"Bearer {TOKEN}"}  # every call carries the token


def test_a_real_runs_resources_and_artifact_show_and_the_artifact_downloads(
    page: Any, api: httpx.Client, server: Server,
) -> None:
    """No stand-ins: the server sampled the run's container and stored its artifact."""
    run_id = start_run(api, ticks=4, delay=0.6, shell=True, artifact=True)
    assert wait_finished(api, run_id)["status"] == "completed"
    resources = api.get(f"/runs/{run_id}/metrics").json()["resources"]
    assert resources is not None and resources["peak_memory_bytes"] > 0, resources
    page.goto(f"{server.url}/ui/run.html?id={quote(run_id)}")
    page.locator("#resources").filter(has_text="Memory, peak").wait_for()
    row = page.locator("#artifacts tr[data-artifact='reports/junit.xml']")
    row.wait_for()
    assert "application/xml" in row.inner_text()
    with page.expect_download() as download:
        row.get_by_role("button", name="Download reports/junit.xml").click()
    assert Path(download.value.path()).read_text() == '<testsuite tests="1"/>\n'


def test_the_runs_page_pages_with_the_cursor(page: Any, api: httpx.Client, server: Server) -> None:
    for _ in range(3):
        wait_finished(api, start_run(api, ticks=1))
    newest = [r["run_id"] for r in api.get("/runs", params={"limit": 4}).json()["runs"]]
    page.goto(f"{server.url}/ui/?limit=2")
    rows = page.locator("#runs tbody tr[data-run-id]")
    ids = lambda: rows.evaluate_all("rows => rows.map(r => r.dataset.runId)")  # noqa: E731
    until(lambda: ids() == newest[:2], page, "the first page")
    assert page.locator("#newer").is_disabled()
    page.click("#older")
    page.wait_for_url(re.compile(r"cursor="))
    until(lambda: ids() == newest[2:4], page, "the second page")
    assert "limit=2" in page.url
    page.click("#newer")
    until(lambda: ids() == newest[:2], page, "the first page again")
    assert "cursor=" not in page.url


def test_late_and_stuck_runs_stand_out(page: Any, api: httpx.Client, server: Server) -> None:
    # Four slow runs fill the server's four slots (a tick every 4 s: "stuck" past 1 s without
    # an event), so a fifth waits in the queue ("late" past 1 s).
    slow = [start_run(api, ticks=15, delay=4) for _ in range(4)]
    queued = start_run(api, ticks=1)
    try:
        page.goto(f"{server.url}/ui/?late=1&stuck=1")
        page.locator(f"tr.flagged[data-run-id='{queued}'] .badge.late").wait_for()
        page.locator("tr.flagged .badge.stuck").first.wait_for()
        assert "queued for" in page.locator(f"tr[data-run-id='{queued}']").inner_text()
        # the thresholds stay in the URL when a filter is applied
        page.select_option("#f-status", "running")
        page.wait_for_url(re.compile(r"status=running"))
        assert "late=1" in page.url and "stuck=1" in page.url
        page.goto(f"{server.url}/ui/?late=1&stuck=1")
        page.locator(f"tr.flagged[data-run-id='{queued}'] .badge.late").wait_for()
        shoot(page, "runs")
    finally:
        for run_id in [queued, *slow]:
            api.post(f"/runs/{run_id}/cancel")
    for run_id in slow:
        assert wait_finished(api, run_id)["status"] == "cancelled"


def test_an_unreachable_server_raises_the_banner_until_it_answers(
    page: Any, server: Server,
) -> None:
    page.goto(f"{server.url}/ui/")
    page.locator("#live").filter(has_text="live").wait_for()
    page.route("**/runs?**", lambda route: route.abort("connectionrefused"))
    page.locator("#down-banner").wait_for(state="visible")
    page.unroute("**/runs?**")
    page.click("#down-banner button")
    page.locator("#down-banner").wait_for(state="hidden")
