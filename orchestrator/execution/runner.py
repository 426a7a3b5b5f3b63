"""Plan a job (pure) and run it on Ray: spec -> plan -> Tune run -> results on storage -> summary.

`plan(spec)` builds every Tune object without starting anything, so tests can inspect what would run.
`run(spec)` starts (or joins) Ray, writes `spec.yaml` and `run.json`, runs the search with results streamed
to Parquet and checkpoints written through the run's store, waits for anything an outage left in the local
spool, and returns a `RunSummary`. `execute` is the same for a results URI chosen by the caller, with two
hooks: a check before the search (the sanity gate, handed in by orchestrator/api.py, so execution/ never imports
practice/) and the continuation of a stored run (handed in by resume.py).

Ray itself only ever writes to local disk (its experiment state and the Ray Train controller's files go to a
staging directory, mirrored into `tune/` at the end): every byte that reaches the store goes through our
spooling Store, so a storage outage delays uploads instead of failing trials.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from orchestrator.budget.capacity import check_prices, check_resources
from orchestrator.budget.ledger import Ledger
from orchestrator.errors import RunError
from orchestrator.execution.lease import RunLease
from orchestrator.execution.pbt import wire_pbt
from orchestrator.execution.warm import WarmStart, load_warm_start
from orchestrator.launch.launcher import Launcher, launcher_for
from orchestrator.ray_support.driver import DriverSession
from orchestrator.ray_support.ray_compat import (
    callbacks_untagged,
    lean_experiment_state,
    lost_nodes_not_counted,
    no_retry_on,
    silent_trials_ended_at_once,
    staging_of_its_own,
    trial_name,
)
from orchestrator.ray_support.ray_env import check_address
from orchestrator.ray_support.up import UpSession
from orchestrator.ray_support.warm import joinable
from orchestrator.ray_support.warm import top_up as warm_top_up
from orchestrator.results import ResultsSchema, ResultsWriter
from orchestrator.results.layout import (
    RUN_FILE,
    SPEC_FILE,
    TRAIN_DIR,
    TUNE_DIR,
    new_run_id,
    results_uri_for,
    run_id_of,
)
from orchestrator.results.summary import RunSummary, summarize_run
from orchestrator.spec import JobSpec, check_against_workload
from orchestrator.stopping import DISK_FULL, FAILED, INTERRUPTED, RUN_STATUSES, StopRequest
from orchestrator.storage import Store, join_uri, open_store
from orchestrator.storage.base import DiskFull, DiskReserve
from orchestrator.storage.spool import (
    DRIVER,
    STAGING,
    SpoolingStore,
    drain_until,
    pending_items,
    remove_run_spool,
    run_spool_dir,
    writer_dirs,
)
from orchestrator.tracking.tracker import RunStopper, RunTracker, SearchGate
from orchestrator.train.exceptions import FinalTrialError
from orchestrator.train.plan import TrialPlan
from orchestrator.tuning.tune_search import TrialNamer, build_scheduler, build_search, tune_num_samples


def drain_timeout_s() -> float:
    """How long the end of a run waits for the spool to empty (HPO_DRAIN_TIMEOUT_S, default 60 s)."""
    return float(os.environ.get("HPO_DRAIN_TIMEOUT_S", "60"))


@dataclass(frozen=True)
class Plan:
    """What a run of a spec will do, decided once by plan() (the launch adds the name of what trials share)."""

    spec: JobSpec  # resolved: workload and scheduler defaults filled in
    results_uri: str
    staging: str  # local directory where Ray writes its own state
    schema: ResultsSchema
    trial_plan: TrialPlan
    launcher: Launcher
    search_alg: Any
    param_space: dict
    namer: TrialNamer
    num_samples: int
    scheduler: Any
    warm_start: WarmStart = WarmStart()  # earlier runs' finished trials, the searcher's history (not rerun)


# A check before the search (the results store, the results URI, progress) and the continuation of a stored run.
BeforeSearch = Callable[[JobSpec, Store, str, Callable[[str], None]], None]
ContinueRun = Callable[[Plan, ResultsWriter, RunTracker, Callable[[str], None]], Plan]


def plan(spec: JobSpec, results_uri: str) -> Plan:
    """Everything Tune needs for `spec`, built without starting Ray or writing anything."""
    workload = check_against_workload(spec)
    spec = spec.resolved(workload)
    warm = load_warm_start(spec) if spec.search.warm_start else WarmStart()
    search_alg, param_space, namer = build_search(spec, warm.trials)
    train = spec.train
    store = open_store(results_uri, spec.storage_options.s3())
    staging = str(run_spool_dir(results_uri) / STAGING) if store.remote else store.uri
    trial_plan = TrialPlan(
        workload=spec.workload,
        job_seed=spec.seed,
        fixed=dict(spec.search.fixed),
        max_epochs=train.max_epochs,
        workers=train.workers,
        use_gpu=train.use_gpu,
        cpus_per_worker=train.cpus_per_worker,
        checkpoints_to_keep=train.checkpoints_to_keep,
        metric=spec.search.primary.metric,
        mode=spec.search.primary.mode,
        results_uri=results_uri,
        storage_options=spec.storage_options.s3(),
        train_storage=join_uri(staging, TRAIN_DIR),
        precision=train.precision,
        resources_per_worker=dict(train.resources_per_worker),
        accelerator_type=train.accelerator_type,
        gpus_per_worker=train.gpus_per_worker or 1.0,
        stored_every=spec.scheduler.settings().get("perturbation_interval", 0)
        if spec.scheduler.kind.adapts_configs
        else 0,
    )
    return Plan(
        spec,
        results_uri,
        staging,
        ResultsSchema.for_spec(spec, workload.metric_names),
        trial_plan,
        launcher_for(train),
        search_alg,
        param_space,
        namer,
        tune_num_samples(spec, search_alg),
        build_scheduler(spec),
        warm,
    )


def print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(
    spec: JobSpec,
    *,
    storage: str | None = None,
    address: str | None = None,
    num_cpus: float | None = None,
    progress: Callable[[str], None] = print_progress,
    on_start: Callable[[str], None] | None = None,
    run_id: str | None = None,
    before_search: BeforeSearch | None = None,
) -> RunSummary:
    """Run the job described by `spec` as a new run and return its summary. `on_start(results_uri)` runs before
    any trial. Library users call orchestrator.run, which hands in the sanity gate for `sanity: true`."""
    if run_id is not None and not re.fullmatch(r"[0-9A-Za-z-]{1,64}", run_id):
        raise RunError(f"run id {run_id!r}: use letters, digits and dashes")
    results_uri = results_uri_for(storage or spec.storage, spec.name, run_id or new_run_id())
    if run_id is not None:  # a new run never writes over a stored one
        existing = open_store(results_uri, spec.storage_options.s3())
        if existing.exists(SPEC_FILE) or existing.exists(RUN_FILE):
            raise RunError(
                f"run id {run_id!r} is taken: {existing.uri} holds a run; `hpo resume {existing.uri}` continues "
                "it, another run id starts a new one"
            )
    return execute(
        spec,
        results_uri,
        address=address,
        num_cpus=num_cpus,
        progress=progress,
        on_start=on_start,
        before_search=before_search,
        fresh_id=run_id is None,
    )


def execute(
    spec: JobSpec,
    results_uri: str,
    *,
    address: str | None = None,
    num_cpus: float | None = None,
    progress: Callable[[str], None] = print_progress,
    on_start: Callable[[str], None] | None = None,
    before_search: BeforeSearch | None = None,
    continue_run: ContinueRun | None = None,
    fresh_id: bool = False,
) -> RunSummary:
    """Run `spec` with its results at `results_uri`; see run. The run's phases, in order: its plan (pure, and
    decided there once); the checks, which write nothing (`_check`); the launch, which starts what trials share
    (`_launch`); the run opened, from which it writes (`_open`); the search and, however it ends, the run's last
    writes (`_search`, `_end_run`); and the summary, built once from what they returned."""
    began = time.monotonic()
    with DriverSession() as session, contextlib.ExitStack() as held:
        the_plan = plan(spec, results_uri)
        if the_plan.warm_start.runs:
            progress(
                f"warm start: {len(the_plan.warm_start.trials)} finished trial(s) of "
                f"{len(the_plan.warm_start.runs)} earlier run(s) are the searcher's history, not rerun"
            )
        inner, reachable, up = _check(session, the_plan, address, num_cpus, progress, before_search, spec)
        the_plan = _launch(the_plan)
        opened = _open(held, the_plan, inner, reachable, progress, on_start, settle=not fresh_id)
        if continue_run:
            the_plan = continue_run(the_plan, opened.writer, opened.tracker, progress)
        outcome = _search(session, the_plan, opened, joined=bool(address or up), up=up, progress=progress)
    tracker = opened.tracker
    return summarize_run(
        results_uri,
        the_plan.schema,
        tracker.best.row,
        list(tracker.records.values()),
        wall_time_s=time.monotonic() - began,
        budget_exhausted=tracker.ledger.exhausted,
        stop_signal=tracker.stop.signal,
        reason=tracker.stop.message,
        **outcome,
    )


def _check(
    session: DriverSession, the_plan: Plan, address, num_cpus, progress, before_search, asked
) -> tuple[Store, bool, UpSession | None]:
    """Everything that can refuse the run, before it writes anything: the cluster's address, the store (a missing
    bucket), the caller's check (the sanity gate), Ray (started or joined here), the trials' resources, the
    cluster's shape and the budget's prices. `asked`: the spec as given (the caller's check sees it as it was
    given, not resolved). Returns the run's store, whether it answered its preflight, and the warm session of
    `hpo up` the run joined, if it joined one (with no address given)."""
    spec, launcher, results_uri = the_plan.spec, the_plan.launcher, the_plan.results_uri
    check_address(address)  # an unreachable cluster fails now, not after sanity checks wrote their results
    inner = open_store(results_uri, spec.storage_options.s3())
    if warning := inner.preflight():  # a missing bucket fails here, not later
        progress(f"storage: {warning}")
    if before_search:
        before_search(asked, inner, results_uri, progress)
    # no address: the warm session of `hpo up`, if one serves this directory (its Ray outlives this run)
    up = None if address else joinable(progress)
    session.start_ray(
        up.join() if up else address,
        num_cpus,
        extra_cpus=launcher.extra_cpus,
        dashboard=launcher.needs_dashboard,
        warm=launcher.warm_trials(_at_once(spec)),
        inherit=up.env if up else None,
    )
    at_once = check_resources(
        launcher.worker_bundle(),
        spec.train.workers,
        launcher.driver_cpus,
        embedded=not address,
        progress=progress,
    )
    if 0 < at_once < spec.search.max_concurrent:
        progress(
            f"resources: {at_once} of search.max_concurrent {spec.search.max_concurrent} trials fit at once "
            f"on {'this machine' if not address else 'the cluster'}; the others wait their turn"
        )
    launcher.check_cluster()
    check_prices(spec.budget, embedded=not address)
    return inner, warning is None, up


def _launch(the_plan: Plan) -> Plan:
    """What the job's trials share, started before the first (a DDP job's pool of warm worker groups): the plan
    with the trial plan that names it."""
    spec = the_plan.spec
    trial_plan = the_plan.launcher.before_job(
        the_plan.trial_plan, max_concurrent=spec.search.max_concurrent, run_id=run_id_of(the_plan.results_uri)
    )
    return dataclasses.replace(the_plan, trial_plan=trial_plan)


@dataclass(frozen=True)
class OpenRun:
    """A run that writes: its store (spooling), results writer, tracker (Tune's callback) and disk reserve."""

    store: SpoolingStore
    writer: ResultsWriter
    tracker: RunTracker
    reserve: DiskReserve


def _open(
    held: contextlib.ExitStack,
    the_plan: Plan,
    inner: Store,
    reachable: bool,
    progress,
    on_start,
    *,
    settle: bool,
) -> OpenRun:
    """Every check passed: the run writes from here. It takes the run's lease (one driver per run: a second one,
    a resume while this runs, is refused before it writes anything; `hpo resume` asks before it starts Ray:
    resume.py), keeps room for its last writes, and writes spec.yaml and run.json ("running"). `settle`: whether
    the lease waits for a racing driver's write (lease.py); not for a run id made here, which no other driver
    can know yet."""
    spec, results_uri = the_plan.spec, the_plan.results_uri
    stop = StopRequest()
    held.enter_context(
        RunLease(
            inner,
            on_lost=lambda why: stop.request(FAILED, message=why, grace_s=0.0),
            progress=progress,
            reachable=reachable,
            settle=settle,
        )
    )
    # room for the run's last writes, should it fill the disk of its folder or its spool
    reserve = held.enter_context(
        DiskReserve([run_spool_dir(results_uri)] + ([] if inner.remote else [Path(inner.uri)]))
    )
    store = SpoolingStore(inner, run_spool_dir(results_uri) / DRIVER, write_behind=inner.remote)
    store.write_text(SPEC_FILE, spec.to_yaml())
    _write_run_file(store, the_plan, "running")
    if on_start:
        on_start(results_uri)
    writer = ResultsWriter(store, the_plan.schema)
    launcher = the_plan.launcher
    tracker = RunTracker(
        writer,
        the_plan.schema,
        fixed=spec.search.fixed,
        max_epochs=spec.train.max_epochs,
        num_trials=spec.search.num_trials(),
        progress=progress,
        results_uri=results_uri,
        max_retries=spec.train.max_retries,
        trial_timeout_s=spec.train.trial_timeout_s,
        on_trial_end=launcher.trial_ended,
        ledger=Ledger(
            cpus=launcher.trial_cpus(),
            gpus=launcher.trial_gpus(),
            limits=spec.budget.limits(),
            prices=spec.budget.prices,
        ),
        stop_running=spec.budget.stop_running,
        stop=stop,
    )
    return OpenRun(store, writer, tracker, reserve)


def _search(
    session: DriverSession, the_plan: Plan, opened: OpenRun, *, joined: bool, up: UpSession | None, progress
) -> dict:
    """Tune's search, then the run's end however the search ended (_end_run). Returns what the summary says of
    the end: status, ledger totals, uploads pending and the spool that holds them. `joined`: the run's Ray
    outlives it (`up`: hpo up's warm session)."""
    tracker = opened.tracker
    launched: dict = {}
    crash: BaseException | None = None
    # a signal from here on winds the run down (stopping.py); a second one, also while it winds down, ends it
    with session.catch_stops(tracker.stop, the_plan.results_uri):
        try:
            # stdout stays for the results line and the summary; a final error is not retried
            with (
                contextlib.redirect_stdout(sys.stderr),
                session.private_cwd(),
                no_retry_on(FinalTrialError),
                lost_nodes_not_counted(tracker.is_lost_node),
                lean_experiment_state(),
                staging_of_its_own(),
                callbacks_untagged(),
                silent_trials_ended_at_once(lambda: bool(tracker.stop) and tracker.stop.overdue()),
            ):
                wire_pbt(the_plan.scheduler, opened.store, the_plan.results_uri, tracker)
                _tuner(the_plan, tracker).fit()
        except BaseException as exc:
            crash = exc
            # a full disk ends the run as a stop does: a summary, exit 3
            if not isinstance(exc, DiskFull):
                raise
        finally:
            launched = the_plan.launcher.after_job(progress, joined=joined)
            # in a warm session (ray_support/warm.py): the next run's trial processes start now, not when it asks
            warm_top_up(the_plan.launcher.warm_trials(_at_once(the_plan.spec)), up)
            opened.reserve.release()  # its room is for what follows
            status, totals, pending = _end_run(
                opened.store, the_plan, tracker, opened.writer, crash, launched, progress
            )
    return {
        "status": status,
        "ledger": totals,
        "upload_pending": pending,
        "spool_dir": str(run_spool_dir(the_plan.results_uri)) if pending else None,
    }


def _end_run(store, the_plan: Plan, tracker: RunTracker, writer, crash, launched: dict, progress):
    """The run's last writes, however the search ended: every record closed, the rows and trial table stored,
    run.json saying why it ended, the spool drained. Returns (status, the ledger's totals, items left)."""
    spec = the_plan.spec
    # a second Ctrl-C in a library caller's process, or one outside the main thread (no handlers there)
    if isinstance(crash, KeyboardInterrupt):
        tracker.stop.request(INTERRUPTED, signal=signal.SIGINT, grace_s=0.0)
    elif isinstance(crash, DiskFull):  # the driver's own write (rows, trials.parquet) met the full disk
        tracker.stop.request(DISK_FULL, message=str(crash), grace_s=0.0)
    elif crash is not None:  # the search itself broke: the run failed, and says why
        tracker.stop.request(FAILED, message=_one_line(crash), grace_s=0.0)
    tracker.close()  # no trial stays `running`; the ledger stops counting
    writer.finish()
    status = _status(tracker, spec)
    ledger = tracker.ledger
    totals = ledger.final_totals()  # once: run.json, the summary and trials.parquet agree
    budget = {"budget": {**spec.budget.limits(), "exhausted": ledger.exhausted}} if ledger.limits else {}
    reason = {"reason": tracker.stop.message} if tracker.stop.message else {}
    if tracker.checkpoint_fallbacks:  # damaged checkpoints passed over: their trials re-trained a few epochs
        reason["checkpoint_fallbacks"] = tracker.checkpoint_fallbacks
    _write_run_file(
        store,
        the_plan,
        status,
        rows=writer.rows_written,
        trials=len(tracker.records),
        ledger=totals,
        **reason,
        **budget,
        **launched,
    )
    if ledger.unpriced:
        progress(f"budget: node type(s) {', '.join(sorted(ledger.unpriced))} have no price: counted as 0")
    try:
        pending = _finish_uploads(store, the_plan, progress)
    finally:
        store.close()  # what is still spooled waits for `hpo results sync`, not in a thread of ours
    return status, totals, pending


def _status(tracker: RunTracker, spec: JobSpec) -> str:
    """run.json's status (stopping.RUN_STATUSES): why the run ended."""
    if tracker.stop:
        return tracker.stop.reason
    errors = [r["status"] == "error" for r in tracker.records.values()]
    if errors and (all(errors) or (spec.train.fail_fast and any(errors))):
        return "failed"
    return "budget_exhausted" if tracker.ledger.exhausted else "finished"


def _at_once(spec: JobSpec) -> int:
    """Trials the job runs at once at most."""
    return min(spec.search.max_concurrent, spec.search.num_trials())


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


def _write_run_file(store, the_plan: Plan, status: str, **extra) -> None:
    assert status in RUN_STATUSES, status  # what `hpo resume`, `results ls` and `hpo status` know
    info = {
        "name": the_plan.spec.name,
        "run_id": run_id_of(the_plan.results_uri),
        "status": status,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **({"warm_start": the_plan.warm_start.describe()} if the_plan.warm_start.runs else {}),
        **extra,
    }
    store.write_text(RUN_FILE, json.dumps(info))


def _finish_uploads(store: SpoolingStore, the_plan: Plan, progress) -> int:
    """Mirror Ray's staged state, then upload every writer's spool; return the items still waiting. Said only
    when an upload failed (a healthy remote run always has its last writes in flight here); a run whose uploads
    all landed leaves nothing in the spool."""
    if store.remote:
        tune_dir = Path(the_plan.staging) / TUNE_DIR
        for path in sorted(p for p in tune_dir.rglob("*") if p.is_file()):
            store.write_bytes(f"{TUNE_DIR}/{path.relative_to(tune_dir)}", path.read_bytes())
    store.close()  # the driver's uploader finishes its pass; from here this process uploads the rest itself
    spool = run_spool_dir(the_plan.results_uri)
    timeout = drain_timeout_s()

    def failed(error: BaseException) -> None:  # said once, and only when an upload failed
        nonlocal said
        if not said:
            said = True
            progress(
                f"storage: an upload failed ({type(error).__name__}); {pending_items(spool)} item(s) wait in "
                f"the local spool; retrying for up to {timeout:.0f}s"
            )

    said = False
    left = (
        drain_until(store.inner, writer_dirs(spool), timeout, on_failure=failed)
        if pending_items(spool)
        else 0
    )
    if not left:
        remove_run_spool(the_plan.results_uri)
    return left


def _tuner(the_plan: Plan, tracker: RunTracker) -> tune.Tuner:
    spec, launcher = the_plan.spec, the_plan.launcher
    trainable = tune.with_resources(
        tune.with_parameters(launcher.trainable, plan=the_plan.trial_plan), launcher.trial_resources()
    )
    tune_config = tune.TuneConfig(
        metric=spec.search.primary.metric,
        mode=spec.search.primary.mode,
        search_alg=the_plan.search_alg,
        scheduler=the_plan.scheduler,
        num_samples=the_plan.num_samples,
        reuse_actors=launcher.reuse_actors,
        trial_name_creator=the_plan.namer,
        trial_dirname_creator=trial_name,
    )
    failures = tune.FailureConfig(max_failures=spec.train.max_retries, fail_fast=spec.train.fail_fast)
    the_plan.search_alg.closed = SearchGate(tracker.ledger, tracker.stop)
    run_config = tune.RunConfig(
        name=TUNE_DIR,
        stop=RunStopper(tracker),
        storage_path=str(Path(the_plan.staging).resolve()),
        failure_config=failures,
        callbacks=[tracker],
        verbose=0,
    )
    return tune.Tuner(
        trainable, param_space=the_plan.param_space, tune_config=tune_config, run_config=run_config
    )
