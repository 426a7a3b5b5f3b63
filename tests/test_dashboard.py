"""`hpo dashboard`: its views read a run's stored tables incrementally; its guard (read-only, the token off
loopback, nothing outside the run); and the page itself in a real browser (Debian's headless Chromium driven by
Playwright) on a run in progress on SeaweedFS, and at 10,000 trials x 20 reports (bench/dashboard.py).

Screenshots of every view go to $HPO_DASHBOARD_SHOTS (`make dashboard-shots`), else to the test's tmp folder."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import s3server
import yaml
from conftest import ROOT, kill_family, paced_spec, spec_file, wait_for

sys.path.insert(0, str(ROOT / "bench"))
import dashboard as bench  # noqa: E402  (bench/dashboard.py: the synthetic run and the browser measurements)

from orchestrator.dashboard.app import COOKIE, create_app  # noqa: E402
from orchestrator.dashboard.runs import CURVES_SHOWN, Dashboard, redacted, resolve  # noqa: E402

RUN_ID = "20260101-000000-0000"
VIEWS = ("trials", "curves", "parameters", "importance", "ledger", "spec")


def _run(tmp_path: Path, trials: int = 30, reports: int = 4, parts: int = 5, **kind) -> bench.SyntheticRun:
    return bench.SyntheticRun(tmp_path, trials=trials, reports=reports, parts=parts, run_id=RUN_ID, **kind)


def test_views_read_the_tables_incrementally_and_agree_with_them(tmp_path):
    run = _run(tmp_path)
    board = Dashboard(str(tmp_path))
    assert [r["run_id"] for r in board.runs()] == [RUN_ID]
    summary = board.summary("synthetic", RUN_ID)
    assert (summary["trials"], summary["reports"], summary["status"]) == (30, 120, "running")
    assert summary["pull"] == f"hpo results pull {run.uri} --to ./synthetic-{RUN_ID}"
    tables = board.tables("synthetic", RUN_ID)
    assert tables.decoded == 5  # one decode per part file
    best = min(r["best_val_loss"] for r in run.records)
    assert summary["best"] == pytest.approx(best)

    # views are built once per version of the run: asked again unchanged, the same one
    headline = board.view("summary", "synthetic", RUN_ID)
    assert board.view("summary", "synthetic", RUN_ID) is headline and headline["trials"] == 30

    # no trial measured a GPU: the table has no GPU columns
    assert not {"gpu_util", "gpu_mem_peak_gb"} & set(board.trial_table("synthetic", RUN_ID)["columns"])
    # a new trial's part file: the next refresh decodes that file only (and a trial that measured its GPU)
    run.records[0].update(gpu_s=0.1, gpu_util=42.0, gpu_mem_peak_gb=1.5)
    added = run.add_trial()
    tables.refresh(force=True)
    assert tables.decoded == 6
    assert board.view("summary", "synthetic", RUN_ID)["trials"] == 31
    table = board.trial_table("synthetic", RUN_ID)
    assert len(table["rows"]) == 31 and table["columns"][:3] == ["trial_id", "status", "best_val_loss"]
    assert {"lr", "hidden", "dropout", "batch_size"} <= set(table["columns"])
    gpu = [row[table["columns"].index("gpu_util")] for row in table["rows"]]
    assert gpu.count(42.0) == 1 and gpu.count(None) == 30, gpu
    # the end of a run compacts every part into one file: read once, the parts it replaced dropped
    run.writer.finish()
    tables.refresh(force=True)
    assert tables.decoded == 7 and tables.rows.num_rows == 124

    curves = board.curves("synthetic", RUN_ID, None, None)
    assert len(curves["curves"]) == CURVES_SHOWN and curves["metric"] == "val_loss"
    ranked = sorted(run.records, key=lambda r: r["best_val_loss"])
    assert curves["curves"][0]["trial_id"] == ranked[0]["trial_id"]
    one = board.curves("synthetic", RUN_ID, "val_accuracy", [added])["curves"]
    assert [c["trial_id"] for c in one] == [added] and one[0]["x"] == [1, 2, 3, 4]
    params = board.parameters("synthetic", RUN_ID)
    assert set(params["params"]) == {"lr", "hidden", "dropout"}  # batch_size is fixed: not a dimension
    assert len(params["trials"]) == len(params["objective"]) == 31
    importance = board.importance("synthetic", RUN_ID)["importance"]
    assert set(importance) == {"lr", "hidden", "dropout"}
    assert max(importance, key=importance.get) == "lr"  # the synthetic loss depends on lr only
    ledger = board.ledger("synthetic", RUN_ID)
    assert ledger["totals"]["local"]["trials"] == 31
    series = ledger["series"]["local"]
    assert series["t"][0] == series["cpu_hours"][0] == 0 and series["t"] == sorted(series["t"])
    assert series["cpu_hours"][-1] == pytest.approx(31 * 4 * 0.05 / 3600, abs=1e-6)
    assert board.pareto("synthetic", RUN_ID)["objectives"] == []
    assert board.lineage("synthetic", RUN_ID)["edges"] == []
    assert resolve(run.uri) == (str(tmp_path), board.newest())
    assert resolve(str(tmp_path)) == (str(tmp_path), None)
    with pytest.raises(KeyError):
        board.tables("..", "etc")


def test_curves_mark_early_stops_pareto_draws_the_front_and_lineage_follows_pbt(tmp_path):
    board = Dashboard(str(tmp_path))
    _run(tmp_path, trials=8, stop_every=4, name="asha")
    stops = {c["trial_id"]: c for c in board.curves("asha", RUN_ID, None, None)["curves"]}
    assert sorted(t for t, c in stops.items() if c["stopped_early"]) == ["trial_0003", "trial_0007"]
    assert stops["trial_0003"]["x"] == [1, 2] and stops["trial_0000"]["x"] == [1, 2, 3, 4]

    run = _run(tmp_path, trials=12, objectives=True, name="two")
    pareto = board.pareto("two", RUN_ID)
    assert pareto["objectives"] == [["val_loss", "min"], ["val_accuracy", "max"]]
    trials = {t["trial_id"]: t for t in run._trials_table().to_pylist()}
    assert {p["trial_id"] for p in pareto["points"] if p["on_front"]} == {
        k for k, t in trials.items() if t["on_front"]
    }
    volumes = [h["hypervolume"] for h in pareto["hypervolume"]]
    assert len(volumes) == 12 and volumes == sorted(volumes) and volumes[-1] > 0
    assert board.summary("two", RUN_ID)["objectives"] == pareto["objectives"]

    _run(tmp_path, trials=4, pbt=True, name="pbt")
    lineage = board.lineage("pbt", RUN_ID)
    assert lineage["edges"] == [
        {"trial_id": "trial_0002", "parent": "trial_0000", "step": 2},
        {"trial_id": "trial_0003", "parent": "trial_0001", "step": 2},
    ]
    lr = lineage["schedules"]["trial_0002"]["lr"]
    assert lr[2] == pytest.approx(lr[1] / 2) and lineage["schedules"]["trial_0002"]["x"] == [1, 2, 3, 4]
    assert board.summary("pbt", RUN_ID)["pbt"] and not board.summary("two", RUN_ID)["pbt"]
    assert [r["name"] for r in board.runs()] == [
        "two",
        "pbt",
        "asha",
    ]  # newest run id first (ties: by name, last first)


def _get(app, path: str, *, method: str = "GET", headers: dict | None = None):
    """One request straight to the ASGI app: (status, headers, body)."""
    raw_path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "method": method,
        "path": raw_path,
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "scheme": "http",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 50000),
        "root_path": "",
        "http_version": "1.1",
    }
    sent: list[dict] = []

    requested = []

    async def receive():  # the request's (empty) body, then nothing until the app is done (no disconnect)
        if not requested:
            requested.append(True)
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


def test_the_app_is_read_only_needs_its_token_and_serves_nothing_outside_the_run(tmp_path):
    run = _run(tmp_path, trials=6)
    spec = yaml.safe_load((Path(run.uri) / "spec.yaml").read_text())
    spec["storage_options"] = {"aws_secret_access_key": "hunter2-secret"}  # a stored spec edited by hand
    (Path(run.uri) / "spec.yaml").write_text(yaml.safe_dump(spec))
    app = create_app(Dashboard(str(tmp_path)))
    status, headers, body = _get(app, f"/api/run/synthetic/{RUN_ID}/summary")
    assert status == 200 and headers["x-frame-options"] == "DENY"
    assert (
        b"hunter2" not in body
        and json.loads(body)["spec"]["storage_options"]["aws_secret_access_key"] == "***"
    )
    assert _get(app, "/")[0] == 200 and b"plotly.min.js" in _get(app, "/")[2]
    assert _get(app, "/static/plotly.min.js")[0] == 200
    for outside in (
        "/static/runs.py",
        "/static/..%2Fruns.py",
        f"/api/run/synthetic/{RUN_ID}/../../spec.yaml",
    ):
        assert _get(app, outside)[0] == 404, outside
    assert _get(app, "/api/run/synthetic/20990101-000000-dead/summary")[0] == 404
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert _get(app, "/api/runs", method=method)[0] == 405

    guarded = create_app(Dashboard(str(tmp_path)), token="t0ken-abc")
    assert _get(guarded, "/")[0] == 401 and _get(guarded, "/static/app.js")[0] == 401
    assert _get(guarded, "/api/runs", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert _get(guarded, "/api/runs", headers={"Authorization": "Bearer t0ken-abc"})[0] == 200
    status, headers, _ = _get(guarded, "/?token=t0ken-abc")
    assert status == 303 and headers["location"] == "/" and f"{COOKIE}=t0ken-abc" in headers["set-cookie"]
    assert "httponly" in headers["set-cookie"].lower()
    assert _get(guarded, "/api/runs", headers={"Cookie": f"{COOKIE}=t0ken-abc"})[0] == 200
    assert _get(guarded, "/api/runs", headers={"Cookie": f"{COOKIE}=t0ken-abd"})[0] == 401
    assert redacted({"a": [{"password": 1, "b": 2}], "token": "x"}) == {
        "a": [{"password": "***", "b": 2}],
        "token": "***",
    }


def test_the_cli_refuses_an_open_host_without_a_token_a_bad_port_and_a_taken_one(cli, tmp_path, monkeypatch):
    _run(tmp_path, trials=2)
    monkeypatch.delenv("HPO_DASHBOARD_TOKEN", raising=False)
    done = cli("dashboard", str(tmp_path), "--host", "0.0.0.0")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert (
        "--host 0.0.0.0" in done.stderr and "--token" in done.stderr and "HPO_DASHBOARD_TOKEN" in done.stderr
    )
    done = cli("dashboard", str(tmp_path), "--port", "70000")
    assert done.returncode == 2 and "--port 70000" in done.stderr and done.stderr.count("\n") == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = cli("dashboard", str(tmp_path), "--port", str(port))
    assert done.returncode == 2 and f"--port {port}" in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.slow
def test_serving_every_view_loads_neither_torch_nor_ray(tmp_path):
    _run(tmp_path, trials=8, objectives=True, name="two")
    _run(tmp_path, trials=4, pbt=True, name="pbt")
    script = f"""
import sys
sys.path.insert(0, {str(ROOT / "bench")!r})
from orchestrator.cli.dashboard_cmds import dashboard
from orchestrator.dashboard.app import create_app
from orchestrator.dashboard.runs import Dashboard
board = Dashboard({str(tmp_path)!r})
create_app(board)
for run in board.runs():
    for view in ("summary", "trial_table", "parameters", "importance", "pareto", "lineage", "ledger"):
        getattr(board, view)(run["name"], run["run_id"])
    board.curves(run["name"], run["run_id"], None, None)
board.overlay(["two/{RUN_ID}", "pbt/{RUN_ID}"])
print(sorted(m for m in ("torch", "ray", "hyperopt") if m in sys.modules))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]", done.stdout


def _chromium_missing() -> str | None:
    if not Path(bench.CHROMIUM).exists():
        return f"no Chromium at {bench.CHROMIUM} (Debian: apt-get install chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    return None


def _shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("HPO_DASHBOARD_SHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.slow
def test_the_page_follows_a_run_in_progress_on_s3_in_a_real_browser(s3, tmp_path):
    if why := _chromium_missing():
        pytest.skip(why)
    storage = f"s3://{s3server.BUCKET}/dashboard-{os.getpid()}"
    # trials 2-7 wait for this file: the page is open before the job can end, however slow the machine
    hold = tmp_path / "go"
    spec = paced_spec("live", storage, samples=8, concurrency=2, train={"max_epochs": 3})
    spec["search"]["fixed"] = {"hold_marker": str(hold), "hold_from": 2}
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "run",
            str(spec_file(tmp_path / "live.yaml", spec)),
            "--quiet",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = None
    playwright, chromium = bench.browser()
    errors: list[str] = []
    shots = _shots(tmp_path)
    try:
        from orchestrator.storage import open_store

        root = open_store(storage)
        wait_for(
            lambda: any(k.endswith("/trials.parquet") for k in root.list()), "the run's first trials", 120
        )
        server, url = bench.serve(storage, "--endpoint-url", s3.endpoint)
        page = chromium.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda m: errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        page.goto(url)
        page.wait_for_selector("[data-testid=trials] tbody tr")
        count = page.locator("[data-testid=trial-count]")
        first = int(count.text_content().split()[0])
        seen = {first}
        hold.touch()
        deadline = time.monotonic() + 120
        while max(seen) < 8 and time.monotonic() < deadline:  # the header follows the job as it writes
            page.wait_for_timeout(250)
            seen.add(int(count.text_content().split()[0]))
        assert max(seen) == 8 and len(seen) >= 2, f"the trial count never grew past {sorted(seen)}"
        assert page.locator("#run-status").text_content() in ("running", "finished")
        page.screenshot(path=str(shots / "trials.png"), full_page=True)

        # the table filters: only the completed trials are left
        page.wait_for_function(
            "document.querySelectorAll('[data-testid=trials] .status.completed').length > 0"
        )
        page.fill("[data-testid=filter]", "status:completed")
        statuses = page.locator("[data-testid=trials] tbody td:nth-child(2)").all_text_contents()
        assert statuses and set(statuses) == {"completed"}, statuses
        page.fill("[data-testid=filter]", "")

        # a trial's curves, from its link in the table
        trial = page.locator("[data-testid=trials] tbody a[data-trial]").first.get_attribute("data-trial")
        page.click(f"[data-testid=trials] a[data-trial={trial}]")
        page.wait_for_selector("#curves .main-svg")
        assert page.locator("#curves .legendtext").first.text_content() == trial
        page.screenshot(path=str(shots / "curves.png"), full_page=True)

        for view in VIEWS[2:]:
            page.click(f"nav a[data-view={view}]")
            page.wait_for_selector(f"nav a.active[data-view={view}]")
            page.wait_for_selector("#view > *")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(shots / f"{view}.png"), full_page=True)
        assert page.locator("[data-testid=results-uri]").text_content().startswith(storage)
        assert s3server.SECRET_KEY not in page.content()
        # finished runs beside it under the same root: one of two objectives, one of PBT
        for kind, view in (("objectives", "pareto"), ("pbt", "lineage")):
            bench.SyntheticRun(storage, trials=8, reports=4, parts=2, name=kind, **{kind: True})
            page.goto(f"{url}#/run/{kind}/20260101-000000-0000/{view}")
            page.wait_for_selector(f"[data-testid={view}]")
            page.wait_for_selector(".main-svg")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(shots / f"{view}.png"), full_page=True)
        page.click("nav a[href='#/runs']")
        page.wait_for_selector("[data-testid=runs] tbody tr")
        page.check("[data-testid=runs] input[data-key^='live/']")
        page.wait_for_selector("#overlay-trials .scatterlayer .trace")
        page.screenshot(path=str(shots / "runs.png"), full_page=True)
        assert not [p for p in page.locator("[data-testid=problem]").all_text_contents()]
    finally:
        chromium.close()
        playwright.stop()
        if server is not None:
            server.terminate()
            server.wait(10)
        if job.poll() is None:
            try:
                job.wait(180)
            except subprocess.TimeoutExpired:
                kill_family(job)
    assert job.returncode == 0, job.stderr.read()[-3000:]
    assert not errors, errors
    every = (*VIEWS, "pareto", "lineage", "runs")
    assert sorted(p.name for p in shots.glob("*.png")) == sorted(f"{v}.png" for v in every)


@pytest.mark.slow
def test_ten_thousand_trials_of_twenty_reports_load_and_refresh_in_the_browser(tmp_path):
    """bench/dashboard.py's measurements, run: the page shows all 10,000 trials and then each new one, with no
    console error. Its times are figures (printed, and in docs/benchmarks.md), not assertions."""
    if why := _chromium_missing():
        pytest.skip(why)
    figures = bench.measure(10_000, 20)
    print(json.dumps(figures))
    assert figures["rows"] == 200_000 and figures["console_errors"] == []
    assert figures["page_load_s"]["warm"] > 0 and figures["refresh_s"]["trials_view"] > 0


def test_plotly_ships_with_the_package_not_a_cdn():
    from orchestrator.dashboard.app import STATIC, plotly_js

    assert plotly_js().stat().st_size > 1_000_000
    page = (STATIC / "index.html").read_text() + (STATIC / "app.js").read_text()
    # the page's scripts are its own and plotly's: nothing is fetched from elsewhere
    assert "http://" not in page and "https://" not in page and "cdn" not in page.lower()
