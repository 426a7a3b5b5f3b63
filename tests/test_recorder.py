"""The trial recorder on a real results writer and local store: what a resumed run writes about a trial that was
killed between its last checkpoint and its record."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import spec_dict

from orchestrator.results import ResultsSchema, ResultsWriter, load_results, load_trials, metric_columns
from orchestrator.results.layout import ITERATION_KEY
from orchestrator.results.reader import best_row
from orchestrator.spec import parse_spec
from orchestrator.storage import LocalStore
from orchestrator.tracking.recorder import TrialRecorder

METRICS = ("train_loss", "val_loss", "val_accuracy")
CONFIG = {"lr": 0.01, "hidden": 16}


def _recorder(tmp_path) -> tuple[TrialRecorder, LocalStore]:
    spec = parse_spec(spec_dict(storage=str(tmp_path), train={"max_epochs": 2}))
    store = LocalStore(str(tmp_path / "run"))
    schema = ResultsSchema.for_spec(spec, METRICS)
    recorder = TrialRecorder(ResultsWriter(store, schema), schema, fixed=spec.search.fixed, max_epochs=2)
    return recorder, store


def _result(epoch: int, **extra) -> dict:
    return {
        ITERATION_KEY: epoch,
        "train_loss": 1.0 / epoch,
        "val_loss": 2.0 / epoch,
        "trial_seed": 5,
        **extra,
    }


def test_a_resumed_trial_that_only_re_reports_keeps_its_checkpoint_links(tmp_path):
    """Killed after its last epoch's checkpoint, before its record said so: on resume the trial trains nothing
    new and re-reports its epochs; the links in that re-report still reach trials.parquet."""
    killed, _ = _recorder(tmp_path)
    rows = [killed.schema.row("trial_0000", _result(e), {**CONFIG, "batch_size": 128}) for e in (1, 2)]
    running = killed.record("trial_0000", CONFIG, "running")
    assert running["checkpoint"] is None

    resumed, store = _recorder(tmp_path)
    resumed.preload(rows, [running])
    links = {"checkpoint": "run/checkpoints/trial_0000/epoch-2", "best_checkpoint": "run/ckpt/epoch-2"}
    assert resumed.add("trial_0000", CONFIG, _result(1)) is None  # repeats: no row written twice
    assert resumed.add("trial_0000", CONFIG, _result(2, **links)) is None
    resumed.record("trial_0000", CONFIG, "completed")
    (record,) = load_trials(store).to_pylist()
    assert (record["status"], record["iterations"]) == ("completed", 2)
    assert (record["checkpoint"], record["best_checkpoint"]) == (
        links["checkpoint"],
        links["best_checkpoint"],
    )


def test_nan_and_inf_are_recorded_and_never_the_best(tmp_path):
    recorder, store = _recorder(tmp_path)
    for epoch, loss in ((1, float("nan")), (2, 0.5), (3, float("-inf"))):
        recorder.add("trial_0000", CONFIG, {**_result(epoch), "val_loss": loss})
    recorder.record("trial_0000", CONFIG, "completed")
    (record,) = load_trials(store).to_pylist()
    assert (record["best_val_loss"], record["best_iteration"]) == (0.5, 2)
    assert record["last_val_loss"] == float("-inf")
    recorder.writer.finish()
    best = best_row(load_results(store))
    assert (best["iteration"], best["val_loss"]) == (2, 0.5)


def test_a_trials_error_is_the_exception_and_where_it_was_raised(tmp_path):
    import types

    from orchestrator.tracking.tracker import _error_line

    (tmp_path / "trial_0003").mkdir()
    log = tmp_path / "trial_0003" / "error.txt"
    log.write_text(
        "Failure # 1 (occurred at 2026-11-23_18-00-00)\n"
        "ray::ImplicitFunc.train() (pid=1, ip=127.0.0.1)\n"
        "Traceback (most recent call last):\n"
        '  File "/site-packages/ray/tune/trainable/function_trainable.py", line 261, in _trainable_func\n'
        "    output = fn()\n"
        '  File "/home/me/my_workloads.py", line 42, in train\n'
        "    rows = read(cfg)\n"
        '  File "/site-packages/pandas/core/frame.py", line 9, in __getitem__\n'
        "    return self._get(key)\n"
        '  File "/home/me/my_workloads.py", line 17, in read\n'
        '    raise KeyError("label")\n'
        "KeyError: 'label'\n"
    )
    trial = types.SimpleNamespace(error_file=str(log))
    # the user's innermost frame, the frame their code was entered at, and where the whole traceback is
    assert _error_line(trial, "trial_0003") == (
        "KeyError: 'label', at /home/me/my_workloads.py:17 in read, called from /home/me/my_workloads.py:42 "
        "in train (full traceback: tune/trial_0003/error.txt)"
    )
    assert (
        _error_line(types.SimpleNamespace(error_file=str(tmp_path / "none")))
        == "trial failed (no error recorded)"
    )


def test_the_writer_holds_only_uncompacted_parts_and_ends_with_every_row_once(tmp_path, monkeypatch):
    """A long run's rows are not kept in memory: compacted files leave it, and finish() merges them file by file
    into files of at most MAX_ROWS_PER_FILE rows, every row exactly once."""
    import pyarrow.parquet as pq

    from orchestrator.results import writer as writer_module

    monkeypatch.setattr(writer_module, "MAX_ROWS_PER_FILE", 7)
    recorder, store = _recorder(tmp_path)
    writer = recorder.writer
    writer.compact_at = 3
    for i in range(50):
        recorder.add(f"trial_{i // 5:04d}", CONFIG, _result(i % 5 + 1))
        if i % 2:
            writer.flush()
            assert len(writer._parts) < 3  # compacted as soon as there are compact_at of them
    writer.finish()
    rows = load_results(store)
    keys = list(zip(rows["trial_id"].to_pylist(), rows["iteration"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == 50
    files = [p for p in (tmp_path / "run" / "results").glob("*.parquet")]
    assert files and all(p.name.startswith("data-") for p in files)
    assert max(pq.read_metadata(p).num_rows for p in files) == 7 and len(files) == 8
    assert not writer._parts and writer._cache is None


def _results_caches(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.glob("hpo-results-*"))


def test_a_short_run_leaves_no_cache_directory_behind(tmp_path, monkeypatch):
    """A table that ends as one file never compacted: finish() used to return before removing the writer's
    temporary cache, so every short run left an empty hpo-results-* directory in /tmp."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    recorder, store = _recorder(tmp_path)
    recorder.add("trial_0000", CONFIG, _result(1))
    recorder.writer.finish()
    assert len(load_results(store)) == 1
    assert _results_caches(tmp_path) == []


def test_a_store_that_fails_in_finish_leaves_no_cache_directory_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    recorder, store = _recorder(tmp_path)
    writer = recorder.writer
    writer.compact_at = 2
    for epoch in (1, 2, 3):
        recorder.add("trial_0000", CONFIG, _result(epoch))
        writer.flush()
    assert len(_results_caches(tmp_path)) == 1  # the compacted file's bytes, kept for finish()

    def refuse(name, data):
        raise OSError("disk full")

    monkeypatch.setattr(store, "write_bytes", refuse)
    with pytest.raises(OSError, match="disk full"):
        writer.finish()
    assert _results_caches(tmp_path) == []


def test_a_trial_record_is_stored_after_its_rows_and_announced_after_it_is_stored(tmp_path):
    """Rewrites of trials.parquet wait while the last one was recent; a trial's end is stored after its rows and
    announced (its progress line) only once stored, so a trial seen finished is one `hpo resume` finds finished."""
    recorder, store = _recorder(tmp_path)
    recorder.cost_factor = 1e9  # after the first rewrite, wait (until forced)
    said: list[tuple[str, int]] = []
    recorder.add("trial_0000", CONFIG, _result(1))
    recorder.record("trial_0000", CONFIG, "running")  # the first record is written at once
    assert load_trials(store)["status"].to_pylist() == ["running"]
    recorder.add("trial_0000", CONFIG, _result(2))
    recorder.record(
        "trial_0000", CONFIG, "completed", announce=lambda r, done: said.append((r["status"], done))
    )
    assert load_trials(store)["status"].to_pylist() == ["running"] and not said  # the next one waits
    recorder.record("trial_0001", CONFIG, "running")
    recorder.sync(force=True)  # as at the end of a run, or at Tune's next step once the wait is over
    assert load_trials(store)["status"].to_pylist() == ["completed", "running"] and said == [("completed", 1)]
    assert load_results(store).num_rows == 2  # the rows it counts were stored first


def test_results_show_ranks_a_running_trial_by_its_rows_not_its_lagging_record(tmp_path, capsys):
    """A running trial's record is rewritten at its events (start, end), not at each report: while it runs,
    `hpo results show` ranks it by the rows it reported, so the table a reader sees ranks the true best."""
    from conftest import hpo

    recorder, store = _recorder(tmp_path)
    for name in ("trial_0000", "trial_0001"):
        recorder.record(name, CONFIG, "running")
    for epoch in (1, 2):
        recorder.add("trial_0000", CONFIG, _result(epoch))  # val_loss 2.0, then 1.0
    recorder.record("trial_0000", CONFIG, "completed")
    recorder.add(
        "trial_0001", CONFIG, _result(1, val_loss=0.25)
    )  # still running: its record says 0 iterations
    recorder.writer.flush()
    recorder.sync(force=True)
    stored = {r["trial_id"]: r for r in load_trials(store).to_pylist()}
    assert stored["trial_0001"]["iterations"] == 0  # the lag this is about
    code, out, err = hpo(capsys, "results", "show", store.uri)
    assert code == 0, err
    lines = out.splitlines()
    first = next(line for line in lines if line.startswith("trial_0"))
    assert first.split()[:5] == ["trial_0001", "running", "1", "0.25", "1"], out
    assert next(line for line in lines if line.startswith("trial_0000")).split()[:5] == [
        "trial_0000",
        "completed",
        "2",
        "1",
        "2",
    ], out


def test_metric_columns_are_the_reported_metrics_in_the_rows_order_with_or_without_lineage():
    for lineage in (False, True):
        schema = ResultsSchema(
            METRICS, (("lr", pa.float64()), ("hidden", pa.int64())), "val_loss", "min", lineage=lineage
        )
        assert metric_columns(schema.rows_schema()) == list(METRICS)


def test_a_trials_gpu_figures_reach_its_record_weighted_by_attempt_and_results_show_says_what_sat_idle(
    tmp_path, capsys
):
    """What a trial's GPU did (train/gpu_meter.py's keys in its reports) goes through the recorder into its
    ledger entry in trials.parquet: utilization averaged over its attempts by their walls, the highest peak
    memory; `hpo results show` then says how many of the GPU-hours held were idle. A trial that measured
    nothing (no NVML) has nulls, and counts as held, not as idle."""
    from conftest import hpo

    from orchestrator.budget.ledger import Ledger

    class Clock:
        now = 0.0

        def __call__(self):
            return self.now

    clock = Clock()
    ledger = Ledger(cpus=1, gpus=0.5, nodes=lambda: [], clock=clock)
    spec = parse_spec(spec_dict(storage=str(tmp_path), train={"max_epochs": 3}))
    store = LocalStore(str(tmp_path / "run"))
    schema = ResultsSchema.for_spec(spec, METRICS)
    recorder = TrialRecorder(
        ResultsWriter(store, schema), schema, fixed=spec.search.fixed, max_epochs=3, ledger=ledger
    )
    # trial_0000: 1,800 s at 80% busy (peak 2.5 GiB), its process dies, then 1,800 s at 20% (peak 1.5 GiB)
    ledger.started("trial_0000")
    recorder.add("trial_0000", CONFIG, _result(1, gpu_util=80.0, gpu_mem_peak_gb=2.5))
    clock.now = 1800.0
    ledger.ended("trial_0000")
    ledger.started("trial_0000")
    recorder.add("trial_0000", CONFIG, _result(2, gpu_util=20.0, gpu_mem_peak_gb=1.5))
    clock.now = 3600.0
    running = ledger.entry("trial_0000")
    assert (running["gpu_util"], running["gpu_mem_peak_gb"]) == (50.0, 2.5)  # while it runs, too
    ledger.ended("trial_0000")
    recorder.record("trial_0000", CONFIG, "completed")
    # trial_0001: 3,600 s on a GPU whose utilization it could not read
    ledger.started("trial_0001")
    recorder.add("trial_0001", CONFIG, _result(1, gpu_util=None, gpu_mem_peak_gb=0.75))
    clock.now = 7200.0
    ledger.ended("trial_0001")
    recorder.record("trial_0001", CONFIG, "completed")
    recorder.sync(force=True)
    recorder.writer.finish()
    stored = {r["trial_id"]: r for r in load_trials(store).to_pylist()}
    assert [(r["gpu_s"], r["gpu_util"], r["gpu_mem_peak_gb"]) for r in stored.values()] == [
        (1800.0, 50.0, 2.5),
        (1800.0, None, 0.75),
    ]
    assert "gpu_util" not in load_results(store).column_names  # a trial's figure, not a row's
    # a resumed run's ledger starts from what the records say
    again = Ledger(cpus=1, gpus=0.5, nodes=lambda: [], clock=clock)
    again.preload(list(stored.values()))
    assert {k: again.entry("trial_0000")[k] for k in ("gpu_util", "gpu_mem_peak_gb")} == {
        "gpu_util": 50.0,
        "gpu_mem_peak_gb": 2.5,
    }
    code, out, err = hpo(capsys, "results", "show", store.uri)
    assert code == 0, err
    # 1 GPU-hour held in all; trial_0000's half hour was measured, half of it idle
    line = next(line for line in out.splitlines() if line.startswith("ledger:"))
    assert "1 GPU-hours (0.25 of the 0.5 measured idle: the GPUs 50% busy)" in line, line


def test_without_nvml_a_gpu_trial_says_its_utilization_is_unknown_and_still_its_peak_memory():
    """train/gpu_meter.py on a device (readers given: this machine has no GPU): utilization sampled while the
    attempt trains and averaged; where NVML cannot be read, None and why, never a guess; on the CPU, nothing."""
    import threading

    from orchestrator.train.gpu_meter import GpuMeter

    enough, readings = threading.Event(), iter([30.0, 50.0, 70.0])

    def utilization(device):
        value = next(readings, None)
        if value is None:
            enough.set()
            raise RuntimeError("stop sampling")  # the meter then stops, keeping what it read
        return value

    meter = GpuMeter("cuda:0", utilization=utilization, peak_memory=lambda device: 3 * 2**30)
    meter.INTERVAL_S = 0.001
    with meter:
        assert enough.wait(10)
    assert meter.reading() == {"gpu_util": 50.0, "gpu_mem_peak_gb": 3.0}

    def no_nvml(device):
        raise ModuleNotFoundError("No module named 'pynvml'")

    with GpuMeter("cuda:0", utilization=no_nvml, peak_memory=lambda device: 2**29) as blind:
        pass
    assert blind.reading() == {"gpu_util": None, "gpu_mem_peak_gb": 0.5}
    assert "pynvml" in blind.unavailable
    with GpuMeter("cpu") as cpu:
        assert cpu.reading() == {}
