"""`hpo resume URI`: continue a run whose driver died (SIGKILL, a lost head node, a closed laptop) from what
it stored. Nothing of Ray's own state is needed, so it works the same on local disk and S3.

- The run's stored spec is the job; a spec given with --spec must match it (the first difference is named).
- Whatever the dead run left in this machine's spool is uploaded first.
- The search runs again with the same seed, so trial i gets the same config and seed as before. A trial that
  completed (or that ASHA stopped) never reaches Ray: the searcher and scheduler are told what it reported
  (fast_forward.py) and the search moves on. Every other trial continues from its latest checkpoint,
  re-reporting the epochs that checkpoint covers; the driver keeps the first row it sees for each (trial,
  epoch), so the table ends with each exactly once. Failed trials get another try, from their checkpoints.
- For whole-job-deterministic specs (see the README) the final table and summary equal an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from orchestrator.errors import ResultsNotFound, RunError
from orchestrator.execution.differences import first_difference, value_at
from orchestrator.execution.lease import RunLease
from orchestrator.execution.pbt import restore_pbt
from orchestrator.execution.runner import Plan, execute
from orchestrator.results import config_of, load_trials
from orchestrator.results.layout import ITERATION_KEY, new_run_id, trial_index
from orchestrator.results.ops import stored_spec
from orchestrator.results.reader import check_result_files_present, run_info
from orchestrator.results.schema import FINISHED
from orchestrator.results.summary import RunSummary
from orchestrator.spec import check_against_workload, load_spec
from orchestrator.storage import open_store
from orchestrator.storage.spool import drain_until, run_spool_dir, writer_dirs
from orchestrator.tuning.fast_forward import fast_forward


class AlreadyFinished(Exception):
    """The run finished before: resuming it changes nothing."""


def check_same_spec(given_path: str, stored) -> None:
    given = load_spec(given_path)
    if getattr(given, "kind", "tune") != "tune":
        raise RunError(f"{given_path} is a kind: {given.kind} spec, not the tuning run's")
    resolved = given.resolved(check_against_workload(given))
    given_json, stored_json = resolved.model_dump(mode="json"), stored.model_dump(mode="json")
    found = first_difference(given_json, stored_json)
    if found is not None:
        path = ".".join(str(step) for step in found[0])
        difference = (
            f"{path}: {value_at(given_json, found[0])!r} in the given spec, "
            f"{value_at(stored_json, found[0])!r} in the run"
        )
        raise RunError(
            f"the spec differs from the run's at {difference}; resume without --spec (the run's own "
            "spec is used) or start a new run"
        )


def resume(
    uri: str,
    *,
    spec_path: str | None = None,
    address: str | None = None,
    num_cpus: float | None = None,
    progress: Callable[[str], None] = lambda line: None,
    on_start=None,
    add_trials: int = 0,
) -> RunSummary:
    """Continue the run at `uri`; returns its RunSummary. Raises AlreadyFinished if there is nothing to do.
    `add_trials`: grow the run by that many trials (finished or not), its searcher continuing from all of the
    run's results; the run's spec.yaml then says the new num_samples."""
    spec = stored_spec(uri)
    store = open_store(uri, spec.storage_options.s3())
    uri = store.uri  # as the run stated it (a file:// prefix or a trailing slash would key another spool)
    if spec_path:
        check_same_spec(spec_path, spec)
    status = run_info(store).get("status")  # a damaged run.json is named, not guessed at
    RunLease(store, progress=progress).check_free()  # a live driver: refused before its spool is touched
    if add_trials:
        spec = _grown(spec, add_trials, uri)
        progress(
            f"adding {add_trials} trial(s): {spec.search.num_samples} in all, the searcher continuing from "
            "every result the run has"
        )
    elif status == "finished":
        raise AlreadyFinished(f"{uri} already finished; nothing to resume (--add-trials N grows it)")
    check_result_files_present(store)  # a run with results never restarts from nothing
    left = drain_until(store, writer_dirs(run_spool_dir(uri)), 30.0)
    if left:
        raise RunError(
            f"{left} item(s) of the killed run still wait in {run_spool_dir(uri)} and the store does "
            f"not take them; run `hpo results sync {uri}` when it answers, then resume"
        )
    return execute(
        spec,
        uri,
        address=address,
        num_cpus=num_cpus,
        progress=progress,
        on_start=on_start,
        continue_run=continue_from_storage,
    )


def _grown(spec, add_trials: int, uri: str):
    """The run's spec with `add_trials` more trials, or RunError saying why it cannot grow."""
    if add_trials < 1:
        raise RunError(f"--add-trials {add_trials}: give a number of trials, 1 or more")
    if spec.search.search_algorithm.enumerates:  # grid: num_samples counts passes over the grid
        raise RunError(
            f"--add-trials: {uri} is a grid search, whose num_samples counts passes over the grid; start a new "
            "run to search further"
        )
    search = spec.search.model_copy(update={"num_samples": spec.search.num_samples + add_trials})
    return spec.model_copy(update={"search": search})


def continue_from_storage(the_plan: Plan, writer, tracker, progress) -> Plan:
    """Handed to runner.execute for a resumed run: adopt the stored rows and trial records; return the plan
    whose search passes over what finished and whose trials restore the rest."""
    rows = writer.adopt()
    try:
        records = load_trials(writer.store).to_pylist()
    except ResultsNotFound:
        records = []
    tracker.preload(rows, records)
    by_trial: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (r["trial_id"], r["iteration"])):
        kept = by_trial.setdefault(row["trial_id"], [])
        if not kept or kept[-1]["iteration"] < row["iteration"]:
            kept.append(row)
    # Finished, with every row stored; anything else (a row lost with the driver, say) continues from its
    # checkpoint, which re-reports what is missing.
    done = {
        r["trial_id"]
        for r in records
        if r["status"] in FINISHED and len(by_trial.get(r["trial_id"], [])) == r["iterations"]
    }
    metrics = the_plan.schema.metrics
    fast_forward(
        the_plan.search_alg,
        the_plan.scheduler,
        {trial: [_as_result(row, metrics) for row in by_trial[trial]] for trial in done},
        {trial_index(r["trial_id"]): _searched_config(r, the_plan.spec.search) for r in records},
    )
    restore_pbt(the_plan.scheduler, by_trial, records, tracker, progress)
    progress(
        f"resuming: {len(rows)} row(s) kept; {len(done)} finished trial(s) are not rerun, the others "
        "continue from their checkpoints"
    )
    trial_plan = dataclasses.replace(
        the_plan.trial_plan,
        resume=True,
        # a fresh place for Ray Train's controller state: a resumed trial must not pick up the dead run's
        train_storage=f"{the_plan.trial_plan.train_storage}-resumed-{new_run_id()}",
    )
    return dataclasses.replace(the_plan, trial_plan=trial_plan)


def _searched_config(record: dict, search) -> dict:
    """The searched hyperparameters of a stored trial record, keyed as the searcher proposed them (a choice's
    stored value may be its string form: each distribution gives back its own value)."""
    space = search.hyperparameters
    return space.keyed(space.from_row(config_of(record)))


def _as_result(row: dict, metrics: tuple[str, ...]) -> dict:
    result = {
        ITERATION_KEY: row["iteration"],
        "trial_seed": row["trial_seed"],
        "attempt": row.get("attempt") or 0,
        "epoch_time_s": row.get("epoch_time_s") or 0.0,
    }
    result.update({m: row[m] for m in metrics if row.get(m) is not None})
    return result
