"""The dashboard in a real browser: Playwright driving Debian's chromium during a simulated run.

Skipped (with the reason) where /usr/bin/chromium or the playwright package is missing; the
Makefile's browser step installs chromium (apt) and playwright (pip). The screenshot is kept as a
test artefact under the test's tmp dir and copied to runs/test-artifacts/dashboard.png.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_dashboard_api import TRIP, lab_and_dashboard, synth
from transport_helpers import SYNTH

from ppu.models import TaskState

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTEFACT = Path(__file__).resolve().parents[1] / "runs" / "test-artifacts" / "dashboard.png"

try:
    pytestmark = [pytest.mark.browser]
except pytest.fail.Exception:  # the marker is not registered in pyproject yet (--strict-markers): run unmarked
    pytestmark = []


@pytest.fixture
def sync_playwright():  # type: ignore[no-untyped-def]
    if not CHROMIUM.exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium; see the Makefile's browser step)")
    api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    return api.sync_playwright


def test_watch_a_run_and_approve_from_the_page(tmp_path: Path, sync_playwright):  # type: ignore[no-untyped-def]
    furnace = {"type": SYNTH, "name": "furnace-2", "duration_s": 0.15, "time_scale": 1.0}
    with lab_and_dashboard(tmp_path, synth_s=1.5, extra=[furnace]) as (client, dash):
        # some history first: a small campaign (synthesise on the fast furnace, then measure) and digital work
        made = client.submit([synth("mof-screen", "furnace-2", 0.2 + 0.1 * i) for i in range(6)])
        for tid in made:
            client.approve(tid)
        samples = [client.result(t.id).outputs["sample_id"]  # type: ignore[union-attr]
                   for t in client.wait(made, timeout=20)]
        client.wait(client.submit([{"capability": "measure.co2_uptake", "inputs": {"sample_id": s},
                                    "campaign": "mof-screen"} for s in samples[:5]]), timeout=10)
        client.wait(client.submit([{"capability": "echo", "inputs": {"x": i}} for i in range(6)]), timeout=10)
        [tripped] = client.submit({"capability": "measure.co2_uptake", "campaign": "mof-screen",
                                   "inputs": {"sample_id": samples[5], "pressure_bar": TRIP}})
        tid, later = client.submit([synth("mof-screen", "synth-robot", 0.85), synth("mof-screen", "synth-robot", 0.9)])

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.goto(f"{dash.url}/?token={dash.token}")  # sets the cookie, redirects to /
                page.wait_for_selector('[data-backend="synth-robot"][data-state="online"]', timeout=10_000)
                row = page.locator(f'tr[data-task="{tid}"]')
                row.wait_for(timeout=10_000)
                assert "acting as" in page.inner_text("#who")
                page.locator(f'tr[data-task="{later}"]').wait_for(timeout=10_000)
                review = page.locator(f'tr[data-task="{tripped}"][data-kind="review"]')
                review.wait_for(timeout=10_000)
                row.locator('button[data-action="approve"]').click()
                page.wait_for_selector('[data-backend="synth-robot"][data-state="busy"]', timeout=10_000)
                page.wait_for_function("document.querySelector('#gantt svg rect[fill=\"#58a6ff\"]') !== null",
                                       timeout=10_000)
                shot = tmp_path / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
                row.wait_for(state="detached", timeout=10_000)  # no longer waiting for a person
                [done] = client.wait([tid], timeout=10)
                assert done.state is TaskState.succeeded
                page.wait_for_selector('[data-backend="synth-robot"][data-state="online"]', timeout=10_000)
                # a person fails the interrupted measurement; the prompt asks why
                page.once("dialog", lambda d: d.accept("transducer needs service"))
                review.locator('button[data-action="fail"]').click()
                review.wait_for(state="detached", timeout=10_000)
                [failed] = client.wait([tripped], timeout=10)
                assert failed.state is TaskState.failed
            finally:
                browser.close()
        ARTEFACT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, ARTEFACT)
        assert shot.stat().st_size > 10_000
        audit = {(e.action, e.target): e.actor for e in client.audit()}
        assert audit[("approve", tid)] == "dashboard:alice" and audit[("review_fail", tripped)] == "dashboard:alice"
