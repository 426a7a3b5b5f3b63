"""Results I/O on a real S3-compatible server (SeaweedFS, started here on loopback).

1. Result-write cost as a share of a run's wall time (goal <= 2%): a digits job to S3, timing every call the
   driver makes into the results writer (flushes, manifest, trials.parquet, compaction).
2. Reading a finished 1M-row results table from S3: compacted (what a finished run holds) vs one file per
   flush (1,000 files of 1,000 rows), through the same reader (goal: compacted >= 5x faster).
3. `hpo results pull` time for the compacted 1M-row table.

    python bench/results_io.py [--rows 1000000] [--flush-rows 1000]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

import s3server  # noqa: E402

os.environ.update(
    AWS_ACCESS_KEY_ID=s3server.ACCESS_KEY,
    AWS_SECRET_ACCESS_KEY=s3server.SECRET_KEY,
    AWS_ENDPOINT_URL_S3=s3server.ENDPOINT,
    AWS_REGION="us-east-1",
)
os.environ.setdefault("HPO_SPOOL_DIR", tempfile.mkdtemp(prefix="hpo-bench-spool-"))

from orchestrator.api import run  # noqa: E402
from orchestrator.results import ResultsSchema, ResultsWriter, load_results  # noqa: E402
from orchestrator.results.ops import pull  # noqa: E402
from orchestrator.spec import parse_spec  # noqa: E402
from orchestrator.storage import open_store  # noqa: E402


def _spec(storage: str, trials: int = 16, epochs: int = 10):
    return parse_spec(
        {
            "name": "bench-io",
            "workload": "digits-mlp",
            "seed": 0,
            "storage": storage,
            "search": {
                "algorithm": "random",
                "num_samples": trials,
                "max_concurrent": 2,
                "space": {"lr": {"loguniform": [1e-3, 1e-1]}, "hidden": {"choice": [32, 64]}},
            },
            "train": {"max_epochs": epochs},
        }
    )


def write_share(storage: str) -> None:
    spent = {"s": 0.0}
    for name in ("flush", "write_trials", "finish"):
        original = getattr(ResultsWriter, name)

        def timed(self, *args, _original=original, **kwargs):
            began = time.perf_counter()
            try:
                return _original(self, *args, **kwargs)
            finally:
                spent["s"] += time.perf_counter() - began

        setattr(ResultsWriter, name, timed)
    began = time.perf_counter()
    summary = run(_spec(storage), progress=lambda line: None)
    wall = time.perf_counter() - began
    print(
        f"1. write cost: {spent['s']:.3f}s of {wall:.2f}s wall = {100 * spent['s'] / wall:.2f}% "
        f"({summary.num_trials} trials, {load_results(summary.results_uri).num_rows} rows; goal <= 2%)"
    )


def synthetic_rows(schema: ResultsSchema, n: int) -> list[dict]:
    import random

    rng = random.Random(0)
    rows = []
    for i in range(n):
        trial, epoch = divmod(i, 100)
        rows.append(
            {
                "trial_id": f"trial_{trial:05d}",
                "iteration": epoch + 1,
                "train_loss": rng.random(),
                "val_loss": rng.random(),
                "val_accuracy": rng.random(),
                "config/lr": 10 ** -rng.uniform(1, 4),
                "config/hidden": 64,
                "trial_seed": trial,
                "epoch_time_s": 0.01,
                "time_total_s": epoch * 0.01,
                "timestamp": 1_700_000_000_000 + i,
            }
        )
    return rows


def read_compacted_vs_per_flush(storage: str, n_rows: int, flush_rows: int) -> str:
    spec = _spec(storage)
    schema = ResultsSchema(
        ("train_loss", "val_loss", "val_accuracy"),
        (("lr", __import__("pyarrow").float64()), ("hidden", __import__("pyarrow").int64())),
        "val_loss",
        "min",
    )
    rows = synthetic_rows(schema, n_rows)
    uris = {}
    for layout in ("per-flush", "compacted"):
        store = open_store(f"{storage}/{layout}")
        writer = ResultsWriter(
            store, schema, flush_every_s=1e9, compact_at=10**9 if layout == "per-flush" else 16
        )
        for start in range(0, n_rows, flush_rows):
            for row in rows[start : start + flush_rows]:
                writer._rows.append(row)
            writer.flush()
        if layout == "compacted":
            writer.finish()
        uris[layout] = store.uri
        n_files = len([f for f in store.list("results") if f.endswith(".parquet")])
        print(f"   {layout}: {n_files} parquet file(s)")
    timings = {}
    for layout, uri in uris.items():
        runs = []
        for _ in range(3):
            began = time.perf_counter()
            table = load_results(uri)
            runs.append(time.perf_counter() - began)
            assert table.num_rows == n_rows
        timings[layout] = statistics.median(runs)
    ratio = timings["per-flush"] / timings["compacted"]
    print(
        f"2. read {n_rows:,} rows from S3: compacted {timings['compacted']:.2f}s, one-file-per-flush "
        f"{timings['per-flush']:.2f}s -> compacted is {ratio:.1f}x faster (goal >= 5x)"
    )
    del spec
    return uris["compacted"]


def pull_time(uri: str) -> None:
    with tempfile.TemporaryDirectory() as dest:
        began = time.perf_counter()
        report = pull(uri, dest)
        print(
            f"3. pull: {report.bytes / 1e6:.1f} MB in {time.perf_counter() - began:.2f}s "
            f"({report.files} files)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--flush-rows", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hpo-bench-weed-") as data:
        server = s3server.WeedServer(Path(data))
        server.start()
        try:
            storage = f"s3://{s3server.BUCKET}/bench-{secrets.token_hex(3)}"
            write_share(storage)
            compacted = read_compacted_vs_per_flush(storage, args.rows, args.flush_rows)
            pull_time(compacted)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
