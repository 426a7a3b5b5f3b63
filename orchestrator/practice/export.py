"""`hpo results export`: a run's trials into MLflow or TensorBoard, for teams that already look there.

The Parquet tables stay the source of truth; an export is a copy made when asked (run it again after more
trials ended: what is already there is not written twice).

- MLflow (`--mlflow TRACKING_URI`: a sqlite file, `sqlite:///...`, or a local `mlruns` folder): an experiment
  named after the job, one MLflow run per trial (named `<run id>/<trial id>`), its config as params, every
  reported metric by step (the epoch), tags for its status, trial seed, run id and results URI. A trial already
  exported (tags `hpo.run_id` and `hpo.trial_id`) is skipped.
- TensorBoard (`--tensorboard DIR`): `DIR/<run id>/<trial id>/` holds one event file per trial with its
  metrics by step and its HParams (config, status and seed), and `DIR/<run id>/` the HParams experiment (the
  hyperparameters and metrics its table shows). A trial whose folder exists is skipped.

mlflow and tensorboard are imported only here (pip install 'hpo-orchestrator[export]').
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from orchestrator.errors import RunError
from orchestrator.results import config_of, load_results, load_trials, metric_columns
from orchestrator.results.layout import run_id_of
from orchestrator.results.reader import run_info
from orchestrator.storage import open_store

PARAMS_MAX = 500  # characters MLflow keeps of a param's value (6000 in newer servers; the safe floor)


class Trials:
    """What an export writes, read once from the tables: the job, the run, and per trial its config, status,
    seed and metrics by epoch."""

    def __init__(self, uri: str, options=None):
        store = open_store(uri, options)
        info = run_info(store)
        self.uri, self.run_id = store.uri, info.get("run_id") or run_id_of(store.uri)
        self.job = info.get("name") or store.uri.rstrip("/").rsplit("/", 2)[-2]
        self.trials = load_trials(store).to_pylist()
        rows = load_results(store)
        self.metrics = metric_columns(rows.schema)
        self.curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
        for row in rows.select(["trial_id", "iteration", *self.metrics]).to_pylist():
            curves = self.curves.setdefault(row["trial_id"], {})
            for metric in self.metrics:
                value = row[metric]
                if value is not None and math.isfinite(value):
                    curves.setdefault(metric, []).append((row["iteration"], value))

    def tags(self, trial: dict) -> dict[str, str]:
        return {
            "hpo.run_id": self.run_id,
            "hpo.trial_id": trial["trial_id"],
            "hpo.status": str(trial["status"]),
            "hpo.trial_seed": str(trial["trial_seed"]),
            "hpo.results_uri": self.uri,
        }


def to_mlflow(trials: Trials, tracking_uri: str, experiment: str | None = None) -> tuple[int, int]:
    """Export to MLflow; returns (trials written, trials already there)."""
    try:
        from mlflow.entities import Metric, Param, RunStatus
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise RunError("--mlflow needs MLflow: pip install 'hpo-orchestrator[export]' (or mlflow)") from None
    if "://" not in tracking_uri:  # a folder: MLflow's file store, which it now only opens when told
        tracking_uri = Path(tracking_uri).resolve().as_uri()
    if tracking_uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=tracking_uri)
    name = experiment or trials.job
    found = client.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found else client.create_experiment(name)
    there = {
        run.data.tags.get("hpo.trial_id")
        for run in client.search_runs(
            [experiment_id], filter_string=f"tags.`hpo.run_id` = '{trials.run_id}'", max_results=50000
        )
    }
    written = 0
    for trial in trials.trials:
        if trial["trial_id"] in there:
            continue
        run = client.create_run(
            experiment_id, run_name=f"{trials.run_id}/{trial['trial_id']}", tags=trials.tags(trial)
        )
        params = [Param(k, str(v)[:PARAMS_MAX]) for k, v in config_of(trial).items()]
        now = int(time.time() * 1000)
        metrics = [
            Metric(metric, value, now, step)
            for metric, curve in trials.curves.get(trial["trial_id"], {}).items()
            for step, value in curve
        ]
        for start in range(0, max(len(metrics), 1), 1000):  # MLflow takes at most 1000 metrics a batch
            client.log_batch(
                run.info.run_id, metrics=metrics[start : start + 1000], params=params if start == 0 else []
            )
        ended = trial["status"] in ("completed", "stopped_early")
        client.set_terminated(
            run.info.run_id, RunStatus.to_string(RunStatus.FINISHED if ended else RunStatus.FAILED)
        )
        written += 1
    return written, len(there)


def to_tensorboard(trials: Trials, folder: str) -> tuple[int, int]:
    """Export to TensorBoard event files with the HParams plugin's data; returns (written, already there)."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import summary_v2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise RunError(
            "--tensorboard needs TensorBoard: pip install 'hpo-orchestrator[export]' (or tensorboard)"
        ) from None
    root = Path(folder) / trials.run_id
    root.mkdir(parents=True, exist_ok=True)

    def write(where: Path, summaries: list[tuple[int, summary_pb2.Summary]]) -> None:
        writer = EventFileWriter(str(where))
        for step, summary in summaries:
            writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
        writer.close()

    hparams = sorted({k for trial in trials.trials for k in config_of(trial)} | {"status", "trial_seed"})
    metric_tags = [summary_v2.Metric(m) for m in trials.metrics]
    if not any(root.glob("events.out.tfevents.*")):
        write(root, [(0, summary_v2.hparams_config_pb([summary_v2.HParam(h) for h in hparams], metric_tags))])
    written = there = 0
    for trial in trials.trials:
        where = root / trial["trial_id"]
        if where.exists():
            there += 1
            continue
        values = {
            **config_of(trial),
            "status": str(trial["status"]),
            "trial_seed": int(trial["trial_seed"]),
        }
        values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in values.items()}
        summaries = [(0, summary_v2.hparams_pb(values, trial_id=trial["trial_id"]))]
        for metric, curve in trials.curves.get(trial["trial_id"], {}).items():
            for step, value in curve:
                summaries.append(
                    (
                        step,
                        summary_pb2.Summary(
                            value=[summary_pb2.Summary.Value(tag=metric, simple_value=value)]
                        ),
                    )
                )
        write(where, summaries)
        written += 1
    return written, there
