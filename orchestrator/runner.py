"""Plan a job (pure) and run it on Ray: spec -> plan -> Tune run -> results on storage -> summary.

`plan(spec)` builds every Tune object without starting anything, so tests can inspect what would run.
`run(spec)` starts (or joins) Ray, writes `spec.yaml` and `run.json`, runs the search with results streamed
to Parquet and checkpoints written through the run's store, waits for anything an outage left in the local
spool, and returns a `RunSummary`.

Ray itself only ever writes to local disk (its experiment state and the Ray Train controller's files go to a
staging directory, mirrored into `tune/` at the end): every byte that reaches the store goes through our
spooling Store, so a storage outage delays uploads instead of failing trials.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.search import BasicVariantGenerator

from orchestrator.errors import RunError, SanityFailed
from orchestrator.ray_env import (
    DRIVER_CPU,
    check_address,
    check_resources,
    check_train_can_start,
    keep_credentials_out_of_ray,
    quiet_tune,
    release_train_leftovers,
    start_ray,
    trial_cpus,
)
from orchestrator.results import ResultsSchema, ResultsWriter
from orchestrator.results.ops import RUN_FILE, SPEC_FILE
from orchestrator.search import build_scheduler, build_searcher
from orchestrator.spec import JobSpec, check_against_workload
from orchestrator.storage import is_remote, join_uri, open_store
from orchestrator.storage.spool import SpoolingStore, drain_until, pending_items, run_spool_dir, writer_dirs
from orchestrator.summary import RunSummary, summarize_rows
from orchestrator.tracking import RunTracker
from orchestrator.training import TrialPlan
from orchestrator.trial import TrialNamer, run_trial, trial_name

TUNE_DIR = "tune"  # Ray Tune's experiment state
TRAIN_DIR = "train"  # Ray Train controller state of multi-worker trials
DRAIN_TIMEOUT_S = float(os.environ.get("HPO_DRAIN_TIMEOUT_S", "60"))


@dataclass
class Plan:
    spec: JobSpec  # resolved: workload defaults filled in
    results_uri: str
    staging: str  # local directory where Ray writes its own state
    schema: ResultsSchema
    trial_plan: TrialPlan
    search_alg: Any
    param_space: dict
    num_samples: int
    scheduler: Any
    trial_resources: dict[str, float]


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def results_uri_for(spec: JobSpec, run_id: str, storage: str | None = None) -> str:
    return join_uri(open_store(storage or spec.storage).uri, spec.name, run_id)


def plan(spec: JobSpec, results_uri: str) -> Plan:
    """Everything Tune needs for `spec`, built without starting Ray or writing anything."""
    workload = check_against_workload(spec)
    spec = spec.resolved(workload)
    search_alg, param_space, num_samples = build_searcher(spec)
    train = spec.train
    staging = str(run_spool_dir(results_uri) / "ray") if is_remote(results_uri) else results_uri
    trial_plan = TrialPlan(
        workload=spec.workload,
        job_seed=spec.seed,
        fixed=dict(spec.search.fixed),
        max_epochs=train.max_epochs,
        workers=train.workers,
        use_gpu=train.use_gpu,
        cpus_per_worker=train.cpus_per_worker,
        checkpoints_to_keep=train.checkpoints_to_keep,
        metric=spec.search.metric,
        mode=spec.search.mode,
        results_uri=results_uri,
        storage_options=spec.storage_options.s3(),
        train_storage=join_uri(staging, TRAIN_DIR),
    )
    if train.workers == 1:
        resources = {"CPU": train.cpus_per_worker, "GPU": 1.0 if train.use_gpu else 0.0}
    else:  # the trial only drives a TorchTrainer, whose workers reserve their own CPUs and GPUs.
        resources = {"CPU": DRIVER_CPU}  # Tune refuses an empty request; a sliver keeps it off the budget
    return Plan(
        spec,
        results_uri,
        staging,
        ResultsSchema.for_spec(spec, workload.metrics),
        trial_plan,
        search_alg,
        param_space,
        num_samples,
        build_scheduler(spec),
        resources,
    )


def _release_train_leftovers(progress: Callable[[str], None]) -> None:
    try:
        if removed := release_train_leftovers():
            progress(f"removed {removed} placement group(s) that stopped DDP trials left on the cluster")
    except Exception as error:  # the results matter more than the cleanup; say what may be left
        progress(f"warning: could not check for placement groups left by stopped DDP trials ({error})")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(
    spec: JobSpec,
    *,
    storage: str | None = None,
    address: str | None = None,
    num_cpus: float | None = None,
    progress: Callable[[str], None] = _stderr,
    on_start: Callable[[str], None] | None = None,
    run_id: str | None = None,
    resume_from: str | None = None,
) -> RunSummary:
    """Run the job described by `spec` and return its summary. `on_start(results_uri)` runs before any trial.
    `resume_from` (see resume.py) continues the run stored there instead of starting a new one."""
    began = time.monotonic()
    if run_id is not None and not re.fullmatch(r"[0-9A-Za-z-]{1,64}", run_id):
        raise RunError(f"run id {run_id!r}: use letters, digits and dashes")
    results_uri = resume_from or results_uri_for(spec, run_id or new_run_id(), storage)
    the_plan = plan(spec, results_uri)
    check_address(address)  # an unreachable cluster fails now, not after sanity checks wrote their results
    inner = open_store(results_uri, spec.storage_options.s3())
    if is_remote(results_uri) and (warning := inner.preflight()):  # a missing bucket fails here, not later
        progress(f"storage: {warning}")
    if spec.sanity and not resume_from:
        _sanity_first(spec, inner, results_uri, progress)
    quiet_tune()
    keep_credentials_out_of_ray()
    started_ray = start_ray(address, num_cpus, min_cpus=trial_cpus(spec.train) * spec.search.max_concurrent)
    try:
        check_resources(spec.train, embedded=not address)  # before anything is written
        check_train_can_start(spec.train)
        store = SpoolingStore(
            inner, run_spool_dir(results_uri) / "driver", write_behind=is_remote(results_uri)
        )
        store.write_text(SPEC_FILE, the_plan.spec.to_yaml())
        _write_run_file(store, the_plan, "running")
        if on_start:
            on_start(results_uri)
        writer = ResultsWriter(store, the_plan.schema)
        tracker = RunTracker(
            writer,
            the_plan.schema,
            fixed=the_plan.spec.search.fixed,
            max_epochs=spec.train.max_epochs,
            num_trials=_expected_trials(the_plan),
            progress=progress,
            results_uri=results_uri,
            max_retries=spec.train.max_retries,
            trial_timeout_s=spec.train.trial_timeout_s,
        )
        if resume_from:
            from orchestrator.resume import continue_from_storage

            the_plan = continue_from_storage(the_plan, writer, tracker, progress)
        try:
            with contextlib.redirect_stdout(sys.stderr), _stable_cwd():  # stdout: results line + summary
                _tuner(the_plan, tracker).fit()
        finally:
            if address and spec.train.workers > 1:
                _release_train_leftovers(progress)
            writer.finish()
            errors = [r["status"] == "error" for r in tracker.records.values()]
            status = (
                "failed" if errors and (all(errors) or (spec.train.fail_fast and any(errors))) else "finished"
            )
            _write_run_file(store, the_plan, status, rows=writer.rows_written, trials=len(tracker.records))
            pending = _finish_uploads(store, the_plan, progress)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    summary = summarize_rows(
        results_uri,
        the_plan.schema,
        tracker.all_rows(),
        list(tracker.records.values()),
        wall_time_s=time.monotonic() - began,
    )
    summary.upload_pending = pending
    summary.spool_dir = str(run_spool_dir(results_uri)) if pending else None
    return summary


def _sanity_first(spec: JobSpec, store, results_uri: str, progress) -> None:
    """`sanity: true`: the checks of `hpo sanity`, written beside the run's results; a failure stops the job."""
    from orchestrator.sanity import sanity_checks, write_report

    report = sanity_checks(spec, progress)
    report.results_uri = results_uri
    write_report(report, store)
    if not report.passed:
        raise SanityFailed(
            f"sanity checks failed, the search did not start: {report.failures()} "
            f"(see {results_uri}/sanity.parquet)"
        )


@contextlib.contextmanager
def _stable_cwd():
    """Run Tune from a directory this run owns. A job submitted to a cluster starts in Ray's copy of its working
    dir, and Ray may delete and re-create that copy while the job runs (each node of a fake multi-node cluster
    re-extracts it into the one shared session dir); Tune's final os.getcwd() then fails and the job with it."""
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="hpo-driver-") as private:
        os.chdir(private)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.chdir(here)


def _write_run_file(store, the_plan: Plan, status: str, **extra) -> None:
    info = {
        "name": the_plan.spec.name,
        "run_id": the_plan.results_uri.rsplit("/", 1)[-1],
        "status": status,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
    store.write_text(RUN_FILE, json.dumps(info))


def _finish_uploads(store: SpoolingStore, the_plan: Plan, progress) -> int:
    """Mirror Ray's staged state, then upload every writer's spool; return the items still waiting."""
    if is_remote(the_plan.results_uri):
        tune_dir = Path(the_plan.staging) / TUNE_DIR
        for path in sorted(p for p in tune_dir.rglob("*") if p.is_file()):
            store.write_bytes(f"{TUNE_DIR}/{path.relative_to(tune_dir)}", path.read_bytes())
    spool = run_spool_dir(the_plan.results_uri)
    waiting = pending_items(spool)
    if waiting:
        progress(
            f"storage: {waiting} item(s) waiting in the local spool; retrying uploads "
            f"for up to {DRAIN_TIMEOUT_S:.0f}s"
        )
    return drain_until(store.inner, writer_dirs(spool), DRAIN_TIMEOUT_S) if waiting else 0


def _expected_trials(the_plan: Plan) -> int:
    grid = 1
    if the_plan.spec.search.algorithm == "grid":
        for name in the_plan.spec.search.space:
            grid *= len(the_plan.spec.search.distribution(name)[1])
    return grid * the_plan.num_samples


def _tuner(the_plan: Plan, tracker: RunTracker):
    from ray import tune

    spec = the_plan.spec
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, plan=the_plan.trial_plan), the_plan.trial_resources
    )
    tune_config = tune.TuneConfig(
        metric=spec.search.metric,
        mode=spec.search.mode,
        search_alg=the_plan.search_alg,
        scheduler=the_plan.scheduler,
        num_samples=the_plan.num_samples,
        reuse_actors=spec.train.workers == 1,  # measured: halves per-trial start cost of in-process trials
        trial_name_creator=TrialNamer(
            first=0 if isinstance(the_plan.search_alg, BasicVariantGenerator) else 1
        ),
        trial_dirname_creator=trial_name,
    )
    staging = the_plan.staging if is_remote(the_plan.staging) else str(Path(the_plan.staging).resolve())
    failures = tune.FailureConfig(max_failures=spec.train.max_retries, fail_fast=spec.train.fail_fast)
    run_config = tune.RunConfig(
        name=TUNE_DIR, storage_path=staging, failure_config=failures, callbacks=[tracker], verbose=0
    )
    return tune.Tuner(
        trainable, param_space=the_plan.param_space, tune_config=tune_config, run_config=run_config
    )
