"""The dashboard at scale, in a real browser: a run of 10,000 trials x 20 reports (written here through the real
results writer, in 100 part files as a long run leaves them before its end), served by `hpo dashboard`, opened
in headless Chromium (Debian's, driven by Playwright).

1. Page load: from navigation to the trial table rendered with every trial counted (goal < 2 s).
2. Refresh: a new trial reports (a part file, the manifest, trials.parquet rewritten, as the driver does); the
   page's next poll sees the run changed and redraws the trial table; the refresh's own time is the poll's,
   from its request to the redrawn table (goal < 0.5 s). The server decodes only the new file.
3. The same refresh on the Curves view, and the first load of Parameters (parallel coordinates of 10,000 lines).

    python bench/dashboard.py [--trials 10000] [--reports 20] [--out figures.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

import yaml  # noqa: E402

from orchestrator.results import ResultsSchema, ResultsWriter  # noqa: E402
from orchestrator.results.layout import RUN_FILE, SPEC_FILE, trial_id  # noqa: E402
from orchestrator.spec import parse_spec  # noqa: E402
from orchestrator.storage import join_uri, open_store  # noqa: E402

CHROMIUM = os.environ.get("HPO_CHROMIUM", "/usr/bin/chromium")
METRICS = ("train_loss", "val_loss", "val_accuracy")
SPEC = {
    "name": "synthetic",
    "workload": "digits-mlp",
    "seed": 0,
    "search": {
        "algorithm": "random",
        "num_samples": 10000,
        "max_concurrent": 8,
        "metric": "val_loss",
        "mode": "min",
        "space": {
            "lr": {"loguniform": [1.0e-4, 1.0e-1]},
            "hidden": {"choice": [16, 32, 64, 128]},
            "dropout": {"uniform": [0.0, 0.5]},
        },
        "fixed": {"batch_size": 64},
    },
    "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2},
    "train": {"max_epochs": 20},
}


class SyntheticRun:
    """A run's tables written through the real writer: `trials` trials of `reports` reports each, in `parts`
    part files. Variants for the views that need them: `stop_every` k stops every k-th trial early at half its
    epochs (as ASHA would); `objectives` searches (val_loss min, val_accuracy max) with a Pareto front;
    `pbt` makes every trial from the third on continue the one two before it at half its epochs, with its
    learning rate halved (PBT's lineage and schedules)."""

    def __init__(
        self,
        root: Path,
        *,
        trials: int,
        reports: int,
        parts: int = 100,
        run_id="20260101-000000-0000",
        name: str = "synthetic",
        stop_every: int = 0,
        objectives: bool = False,
        pbt: bool = False,
    ):
        import random

        spec_data = {**SPEC, "name": name, "search": {**SPEC["search"], "num_samples": trials + 1}}
        spec_data["train"] = {"max_epochs": reports}
        if objectives:
            spec_data["search"].update(metric=["val_loss", "val_accuracy"], mode=["min", "max"])
        if pbt:
            spec_data["scheduler"] = {"type": "pbt", "perturbation_interval": max(1, reports // 2)}
            spec_data["search"]["max_concurrent"] = min(8, trials)
        spec = parse_spec(spec_data, check_workload=False)
        self.uri = join_uri(str(root), spec.name, run_id)
        self.store = open_store(self.uri)
        self.store.write_bytes(SPEC_FILE, yaml.safe_dump(spec_data).encode())
        self.schema = ResultsSchema.for_spec(spec, METRICS)
        self.writer = ResultsWriter(self.store, self.schema, flush_every_s=1e9, compact_at=10**9)
        self.random = random.Random(0)
        self.reports, self.records, self.clock = reports, [], 1.7e9
        self.stop_every, self.pbt = stop_every, pbt
        per_part = max(1, trials // parts)
        for start in range(0, trials, per_part):
            for index in range(start, min(trials, start + per_part)):
                self._trial(index)
            self.writer.flush()
        self.writer.write_trials(self._trials_table())
        self._run_json("running")

    def _trial(self, index: int) -> None:
        lr = 10 ** self.random.uniform(-4, -1)
        config = {
            "lr": lr,
            "hidden": self.random.choice([16, 32, 64, 128]),
            "dropout": self.random.uniform(0, 0.5),
        }
        config["batch_size"] = 64
        floor = 0.05 + abs(lr - 0.01) * 3 + self.random.random() * 0.05
        stopped = bool(self.stop_every) and index % self.stop_every == self.stop_every - 1
        epochs = self.reports // 2 if stopped else self.reports
        name = trial_id(index)
        last, best = {}, None
        for epoch in range(1, epochs + 1):
            self.clock += 0.05
            loss = floor + 2.0 / (epoch + 1)
            last = {"train_loss": loss * 0.9, "val_loss": loss, "val_accuracy": 1 - loss / 3 - lr}
            lineage = {}
            if self.pbt:
                exploited = index >= 2 and epoch > self.reports // 2
                if exploited and epoch == self.reports // 2 + 1:
                    config = {**config, "lr": config["lr"] / 2}
                lineage = {
                    "parent_trial": trial_id(index - 2) if exploited else None,
                    "exploited_at": self.reports // 2 if exploited else None,
                }
            best = loss if best is None else min(best, loss)
            self.writer.add(
                {
                    "trial_id": name,
                    "iteration": epoch,
                    **last,
                    **{f"config/{k}": v for k, v in config.items()},
                    "trial_seed": index,
                    "attempt": 0,
                    "epoch_time_s": 0.05,
                    "time_total_s": 0.05 * epoch,
                    "timestamp": int(self.clock * 1000),
                    **lineage,
                }
            )
        self.records.append(
            {
                "trial_id": name,
                "status": "stopped_early" if stopped else "completed",
                "iterations": epochs,
                "stopped_early": stopped,
                "best_val_loss": best,
                "best_iteration": epochs,
                **{f"last_{k}": v for k, v in last.items()},
                **{f"config/{k}": v for k, v in config.items()},
                "trial_seed": index,
                "node_type": "local",
                "wall_s": 0.05 * epochs,
                "cpu_s": 0.05 * epochs,
                "gpu_s": 0.0,
                "retries": 0,
                "preemptions": 0,
            }
        )

    def _trials_table(self):
        import pyarrow as pa

        table = pa.Table.from_pylist(self.records, schema=self.schema.trials_schema())
        return self.schema.with_front(table)

    def _run_json(self, status: str) -> None:
        info = {
            "name": Path(self.uri).parent.name,
            "run_id": Path(self.uri).name,
            "status": status,
            "time": "2026-01-01T00:00:00Z",
        }
        self.store.write_bytes(RUN_FILE, json.dumps(info).encode())

    def add_trial(self) -> str:
        """One more trial, written as the driver writes one: its part file, the manifest, trials.parquet."""
        self._trial(len(self.records))
        self.writer.flush()
        self.writer.write_trials(self._trials_table())
        return self.records[-1]["trial_id"]


def serve(root: str | Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`hpo dashboard ROOT --port 0 ARGS` in a subprocess; (process, its URL) once it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "dashboard", str(root), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=HERE.parent,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )
    line = proc.stdout.readline()
    found = re.search(r"(http://\S+/)", line)
    if not found:
        proc.kill()
        raise RuntimeError(f"hpo dashboard did not start: {line}{proc.stdout.read()}")
    return proc, found.group(1)


def browser():
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    return playwright, playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


def measure(trials: int, reports: int) -> dict:
    figures: dict = {"trials": trials, "reports_per_trial": reports}
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        run = SyntheticRun(Path(tmp), trials=trials, reports=reports)
        figures["rows"] = sum(r["iterations"] for r in run.records)
        figures["write_s"] = round(time.perf_counter() - began, 2)
        proc, url = serve(Path(tmp))
        playwright, chromium = browser()
        try:
            page = chromium.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            loads = []
            for _ in range(3):  # the first also warms the server's cache of the run (one decode of each file)
                began = time.perf_counter()
                page.goto(url)
                page.wait_for_function(
                    f"document.getElementById('trial-shown')?.textContent.includes('of {trials} trials')",
                    timeout=60_000,
                )
                loads.append(round(time.perf_counter() - began, 3))
            figures["page_load_s"] = {"cold": loads[0], "warm": min(loads[1:])}
            refreshes = []
            for _ in range(3):
                count = len(run.records) + 1
                run.add_trial()
                page.wait_for_function(
                    f"document.getElementById('trial-shown')?.textContent.includes('of {count} trials')",
                    timeout=30_000,
                )
                refreshes.append(float(page.evaluate("document.body.dataset.refreshMs")) / 1000)
            figures["refresh_s"] = {"trials_view": round(max(refreshes), 3)}
            page.click("nav a[data-view=curves]")
            page.wait_for_selector("#curves .main-svg", timeout=30_000)
            run.add_trial()
            page.wait_for_function(
                "document.body.dataset.version && document.body.dataset.refreshMs", timeout=30_000
            )
            version = page.evaluate("document.body.dataset.version")
            run.add_trial()
            page.wait_for_function(f"document.body.dataset.version !== '{version}'", timeout=30_000)
            figures["refresh_s"]["curves_view"] = round(
                float(page.evaluate("document.body.dataset.refreshMs")) / 1000, 3
            )
            began = time.perf_counter()
            page.click("nav a[data-view=parameters]")
            page.wait_for_selector("#parcoords .main-svg", timeout=60_000)
            figures["parameters_view_s"] = round(time.perf_counter() - began, 3)
            figures["console_errors"] = errors
        finally:
            chromium.close()
            playwright.stop()
            proc.terminate()
            proc.wait(10)
    figures["goals"] = {
        "page_load_under_2s": figures["page_load_s"]["warm"] < 2.0,
        "refresh_under_0.5s": max(figures["refresh_s"].values()) < 0.5,
    }
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10000)
    parser.add_argument("--reports", type=int, default=20)
    parser.add_argument("--out", help="also write the figures here (JSON)")
    args = parser.parse_args()
    figures = measure(args.trials, args.reports)
    text = json.dumps(figures, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
