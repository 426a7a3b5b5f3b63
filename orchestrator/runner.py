"""Plan a job (pure) and run it on Ray: spec -> plan -> Tune run -> results on storage -> summary.

`plan(spec)` builds every Tune object without starting anything, so tests can inspect what would run.
`run(spec)` starts (or joins) Ray, writes `spec.yaml`, runs the search with results streamed to Parquet, and
returns a `RunSummary` computed from the stored results (the same table a user reads back).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from ray.tune.search import BasicVariantGenerator

from orchestrator.results import (ResultsNotFound, ResultsSchema, ResultsWriter, best_row, config_of, load_results,
                                  load_trials)
from orchestrator.results.reader import search_metric
from orchestrator.errors import RunError
from orchestrator.search import build_scheduler, build_searcher
from orchestrator.spec import JobSpec, check_against_workload
from orchestrator.storage import join_uri, open_store
from orchestrator.tracking import RunTracker
from orchestrator.training import TrialPlan
from orchestrator.trial import TrialNamer, run_trial, trial_name

SPEC_FILE = "spec.yaml"
DRIVER_CPU = 0.01  # logical CPUs of the Tune trial that drives a multi-worker TorchTrainer
TUNE_DIR = "tune"  # Ray Tune's experiment state and per-trial checkpoints
TRAIN_DIR = "train"  # Ray Train runs of multi-worker trials (their checkpoints)


@dataclass
class Plan:
    spec: JobSpec  # resolved: workload defaults filled in
    results_uri: str
    schema: ResultsSchema
    trial_plan: TrialPlan
    search_alg: Any
    param_space: dict
    num_samples: int
    scheduler: Any
    trial_resources: dict[str, float]


@dataclass
class RunSummary:
    results_uri: str
    num_trials: int
    best: dict  # trial_id, iteration, metric (its value), config
    metric: str
    mode: str
    statuses: dict[str, int] = field(default_factory=dict)
    wall_time_s: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def results_uri_for(spec: JobSpec, run_id: str, storage: str | None = None) -> str:
    return join_uri(open_store(storage or spec.storage).uri, spec.name, run_id)


def plan(spec: JobSpec, results_uri: str) -> Plan:
    """Everything Tune needs for `spec`, built without starting Ray."""
    workload = check_against_workload(spec)
    spec = spec.resolved(workload)
    search_alg, param_space, num_samples = build_searcher(spec)
    train = spec.train
    trial_plan = TrialPlan(
        workload=spec.workload, job_seed=spec.seed, fixed=dict(spec.search.fixed), max_epochs=train.max_epochs,
        workers=train.workers, use_gpu=train.use_gpu, cpus_per_worker=train.cpus_per_worker,
        checkpoints_to_keep=train.checkpoints_to_keep, metric=spec.search.metric, mode=spec.search.mode,
        train_storage=join_uri(open_store(results_uri).uri, TRAIN_DIR))
    if train.workers == 1:
        resources = {"CPU": train.cpus_per_worker, "GPU": 1.0 if train.use_gpu else 0.0}
    else:  # the trial only drives a TorchTrainer, whose workers reserve their own CPUs and GPUs.
        resources = {"CPU": DRIVER_CPU}  # Tune refuses an empty request; a sliver keeps it off the budget
    return Plan(spec, results_uri, ResultsSchema.for_spec(spec, workload.metrics), trial_plan, search_alg,
                param_space, num_samples, build_scheduler(spec), resources)


def cpus_needed(spec: JobSpec) -> float:
    """Logical CPUs for `max_concurrent` trials (a DDP trial's workers all run at once)."""
    driver = DRIVER_CPU if spec.train.workers > 1 else 0.0
    return (spec.train.workers * spec.train.cpus_per_worker + driver) * spec.search.max_concurrent


def start_ray(address: str | None = None, num_cpus: float | None = None, *, min_cpus: float = 1) -> bool:
    """Join `address`, or start an embedded Ray. Returns True if this call started Ray (and should stop it)."""
    import ray

    if ray.is_initialized():
        return False
    # Workers must import user workloads from the working directory, as the driver does.
    paths = [os.getcwd()] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if address:
        ray.init(address=address, logging_level=logging.WARNING, logging_config=_worker_logging())
    else:
        # address="local": never join a cluster a killed head left in ray_current_cluster. Keep the dashboard:
        # without it Ray Train's placement-group cleanup cannot reach the State API and DDP trials hang.
        cpus = num_cpus or max(os.cpu_count() or 1, int(-(-min_cpus // 1)))
        ray.init(address="local", num_cpus=cpus, include_dashboard=True, logging_level=logging.WARNING,
                 logging_config=_worker_logging())
    return True


def _worker_logging():
    import ray

    return ray.LoggingConfig(log_level="WARNING")  # Ray's per-checkpoint INFO lines drown the progress


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(spec: JobSpec, *, storage: str | None = None, address: str | None = None, num_cpus: float | None = None,
        progress: Callable[[str], None] = _stderr, on_start: Callable[[str], None] | None = None) -> RunSummary:
    """Run the job described by `spec` and return its summary. `on_start(results_uri)` runs before any trial."""
    from ray import tune

    began = time.monotonic()
    results_uri = results_uri_for(spec, new_run_id(), storage)
    the_plan = plan(spec, results_uri)
    _quiet_tune()
    started_ray = start_ray(address, num_cpus, min_cpus=cpus_needed(spec))
    writer = None
    try:
        check_resources(the_plan, embedded=not address)  # before anything is written
        store = open_store(results_uri)
        store.write_text(SPEC_FILE, the_plan.spec.to_yaml())
        if on_start:
            on_start(results_uri)
        writer = ResultsWriter(store, the_plan.schema)
        tracker = RunTracker(writer, the_plan.schema, fixed=the_plan.spec.search.fixed,
                             max_epochs=spec.train.max_epochs, num_trials=_expected_trials(the_plan),
                             progress=progress)
        tuner = _tuner(the_plan, tune, tracker, store.uri)
        with contextlib.redirect_stdout(sys.stderr):  # stdout is ours: results_uri line and the summary
            tuner.fit()
    finally:
        if writer is not None:
            writer.flush()
        if started_ray:
            import ray

            ray.shutdown()
    return summarize(results_uri, wall_time_s=time.monotonic() - began)


def _quiet_tune() -> None:
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # our Parquet replaces Tune's json/csv
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0 the legacy reporter prints nothing
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Without Tune's json/csv its ResultGrid cannot find metrics and says so per trial; we read our Parquet.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


def _expected_trials(the_plan: Plan) -> int:
    grid = 1
    if the_plan.spec.search.algorithm == "grid":
        for name in the_plan.spec.search.space:
            grid *= len(the_plan.spec.search.distribution(name)[1])
    return grid * the_plan.num_samples


def _tuner(the_plan: Plan, tune, tracker, root: str):
    spec = the_plan.spec
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=the_plan.trial_plan),
                                    the_plan.trial_resources)
    tune_config = tune.TuneConfig(
        metric=spec.search.metric, mode=spec.search.mode, search_alg=the_plan.search_alg,
        scheduler=the_plan.scheduler, num_samples=the_plan.num_samples,
        reuse_actors=spec.train.workers == 1,  # measured: halves per-trial start cost of in-process trials
        trial_name_creator=TrialNamer(first=0 if isinstance(the_plan.search_alg, BasicVariantGenerator) else 1),
        trial_dirname_creator=trial_name)
    run_config = tune.RunConfig(
        name=TUNE_DIR, storage_path=root, callbacks=[tracker], verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.train.checkpoints_to_keep,
                                                checkpoint_score_attribute=spec.search.metric,
                                                checkpoint_score_order=spec.search.mode))
    return tune.Tuner(trainable, param_space=the_plan.param_space, tune_config=tune_config, run_config=run_config)


def summarize(results_uri: str, wall_time_s: float = 0.0) -> RunSummary:
    """The summary of a run, computed from its stored tables (best is None if no trial reported a metric)."""
    trials = load_trials(results_uri)
    metric, mode = search_metric(trials)
    statuses: dict[str, int] = {}
    for status in trials.column("status").to_pylist():
        statuses[status] = statuses.get(status, 0) + 1
    best = None
    try:
        row = best_row(load_results(results_uri))
        best = {"trial_id": row["trial_id"], "iteration": row["iteration"], "metric": row[metric],
                "config": config_of(row)}
    except ResultsNotFound:
        pass
    return RunSummary(results_uri, trials.num_rows, best, metric, mode, statuses, round(wall_time_s, 2))


def check_resources(the_plan: Plan, embedded: bool) -> None:
    """Refuse a job whose trials can never be placed on an embedded Ray (Tune would wait forever)."""
    import ray

    if not embedded:
        return  # a real cluster may autoscale to fit
    have = ray.cluster_resources()
    train = the_plan.spec.train
    if train.use_gpu and have.get("GPU", 0) < train.workers:
        raise RunError(f"train.use_gpu is true with {train.workers} worker(s), but this machine's Ray has "
                       f"{int(have.get('GPU', 0))} GPU(s); set use_gpu: false or run on GPU nodes (--address)")
    need = train.workers * train.cpus_per_worker + (DRIVER_CPU if train.workers > 1 else 0)
    if need > have.get("CPU", 0) + 1e-9:
        raise RunError(f"one trial needs {need:g} CPUs (train.workers x train.cpus_per_worker) but Ray has "
                       f"{have.get('CPU', 0):g}; lower them or raise --num-cpus")

