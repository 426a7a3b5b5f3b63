"""Ray Tune's internals: its trial actors' environment, its trials, its controller, schedulers and HyperOpt searcher."""

from __future__ import annotations

import contextlib
import logging
import uuid

import ray
from ray.tune.schedulers import TrialScheduler

from orchestrator.ray_support.ray_compat.errors import contains_error
from orchestrator.ray_support.ray_compat.patching import CALLS, patch_key, patched, until_undone


def stop_propagating_env(names: tuple[str, ...]):
    """Ray Tune 2.60 copies the variables named in `class_cache.ENV_VARS_TO_PROPAGATE` (the AWS credentials among
    them) from the driver's environment into every trial actor's runtime_env, which Ray records as job metadata
    and logs. Leave `names` out of it (its module attribute is a set of our own meanwhile: Ray's is untouched)
    until the returned undo is called."""
    from ray.tune.execution import class_cache  # here, not at the top: a move breaks only this

    kept = set(class_cache.ENV_VARS_TO_PROPAGATE) - set(names)
    return until_undone(patched(class_cache, ENV_VARS_TO_PROPAGATE=kept))


def trial_actor_env() -> dict[str, str]:
    """Ray Tune 2.60 sets these in every trial actor's runtime_env whatever the driver's environment holds
    (`class_cache.DEFAULT_ENV_VARS`)."""
    from ray.tune.execution import class_cache  # here, not at the top: a move breaks only this

    return dict(class_cache.DEFAULT_ENV_VARS)


def trial_actor_env_here() -> dict[str, str]:
    """What Ray Tune 2.60 would put in a trial actor's runtime_env if this process drove the trials: its
    DEFAULT_ENV_VARS, then each variable `class_cache.ENV_VARS_TO_PROPAGATE` names that this process's
    environment holds (as `_ActorClassCache.get` builds it). A warm session records it: a driver that joins
    with the same values needs no runtime_env (trial_actors_inherit)."""
    import os

    from ray.tune.execution import class_cache  # here, not at the top: a move breaks only this

    env = dict(class_cache.DEFAULT_ENV_VARS)
    env.update({name: os.environ[name] for name in class_cache.ENV_VARS_TO_PROPAGATE if name in os.environ})
    return env


def trial_actors_inherit(environ: dict[str, str]):
    """Ray Tune 2.60 creates every trial actor with a runtime_env of environment variables
    (`class_cache._ActorClassCache.get`: trial_actor_env, then what ENV_VARS_TO_PROPAGATE names), and a worker
    the raylet started ahead has the empty runtime_env, so no trial ever lands in one. Until the returned
    function is called, an actor class whose variables all equal those in `environ` (the environment the
    embedded Ray's processes inherited when it started) is made without a runtime_env: the same variables,
    by inheritance, in a worker that may already be running. Any other stays as Tune made it."""
    from ray.tune.execution import class_cache  # here, not at the top: a move breaks only this

    get = class_cache._ActorClassCache.get
    plain: dict = {}

    def get_inheriting(self, trainable_cls):
        actor_cls = get(self, trainable_cls)
        runtime_env = actor_cls._default_options.get("runtime_env") or {}
        env_vars = runtime_env.get("env_vars") or {}
        if set(runtime_env) <= {"env_vars"} and all(environ.get(k) == v for k, v in env_vars.items()):
            if trainable_cls not in plain:
                plain[trainable_cls] = ray.remote(trainable_cls)
            return plain[trainable_cls]
        return actor_cls

    return until_undone(patched(class_cache._ActorClassCache, get=get_inheriting))


# Tune 2.60's knobs for a run whose results go to our Parquet: no json/csv loggers (TUNE_DISABLE_AUTO_CALLBACK_
# LOGGERS), the legacy reporter (RAY_AIR_NEW_OUTPUT=0), which prints nothing at verbose=0, and no warning about
# slow experiment-state syncs (our staging is local). Tune's experiment state (for Tuner.restore, which hpo does
# not use: `hpo resume` works from the run's own storage) is written at the start and the end only
# (TUNE_GLOBAL_CHECKPOINT_S): Tune otherwise rewrites every trial's JSON state every few seconds and keeps
# each trial's JSON in memory (measured: 13 KB per trial, 130 MB for 10,000 trials).
QUIET_TUNE_ENV = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "TUNE_GLOBAL_CHECKPOINT_S": "1000000000",
    # Tune logs each failed trial's whole traceback; hpo's progress says it in one line (the exception, where in
    # the user's code) and trials.parquet names tune/<trial>/error.txt, which keeps the traceback
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
}


# Without Tune's json/csv, its ResultGrid cannot find metrics and says so per trial at WARNING: we read our Parquet.
QUIET_LOGGERS = {"ray.tune.analysis.experiment_analysis": logging.ERROR}


# Tune 2.60 logs "Trial task failed for trial <name>" with the trial's traceback from this logger.
TUNE_CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"


# Tune 2.60 logs a failed sync of its experiment state (a full disk, a store gone) with the whole traceback.
EXPERIMENT_STATE_LOGGER = "ray.tune.execution.experiment_state"


def trial_failed_message(name: str) -> str:
    return f"Trial task failed for trial {name}"


def trial_name(trial) -> str:
    """Ray Tune 2.60's Trial: the name a trial_name_creator gave it (`custom_trial_name`), else its own."""
    return trial.custom_trial_name or str(trial)


def forget_trial_metrics(trial) -> None:
    """Ray Tune 2.60 keeps, for every trial, running statistics of every number it reported (config values
    included): `run_metadata.metric_analysis` and `metric_n_steps`, about 27 KB per trial, kept after it ends.
    Only ExperimentAnalysis's best-trial lookups read them, which hpo does not use (its results are in
    Parquet); drop them for an ended trial, so a driver of 10,000 trials does not hold them all."""
    trial.run_metadata.metric_analysis = {}
    trial.run_metadata.metric_n_steps = {}


@contextlib.contextmanager
def lean_experiment_state():
    """While inside: Ray Tune 2.60's experiment state (for Tuner.restore, which hpo does not use) leaves out the
    trials. TuneController.save_to_dir writes `_get_trial_checkpoints()`, every trial's JSON state, which it
    also keeps in memory (`_trial_metadata`): measured 68 MB for 10,000 trials at the end of a run. The searcher
    and callback state are still written, and ExperimentAnalysis gets the trials from memory. Restored after."""
    from ray.tune.execution.tune_controller import (
        TuneController,
    )  # here, not at the top: a move breaks only this

    def no_trials(self):
        self._trials_to_cache.clear()
        return {}

    with patched(TuneController, _get_trial_checkpoints=no_trials):
        yield


@contextlib.contextmanager
def silent_trials_ended_at_once(overdue):
    """While inside: when a run ends with `overdue()` true (its stop's grace period is over: stopping.py), the
    trial actors still live are killed at once, with Tune's own force path, instead of after Tune's waits.
    Ray Tune 2.60 ends an experiment in TuneController._cleanup_trials: it asks each trial's actor to stop, waits
    up to 5 s for every actor to go, then up to `_actor_force_cleanup_timeout` (10 s, fixed in __init__) from
    each stop request before it kills that actor. A trial silent in its loop past the grace period never stops
    on request (stopping.py: it is ended then, and continues from its latest checkpoint on resume), so each
    Ctrl-C with one running cost 10 s more than its grace (measured: 1 s of grace, exit 11.5 s after the
    signal). Otherwise (every trial reported, or ended) Tune's cleanup is unchanged. Restored after."""
    from ray.tune.execution.tune_controller import (
        TuneController,
    )  # here, not at the top: a move breaks only this

    cleanup_by_tune = TuneController._cleanup_trials

    def cleanup_trials(self):
        if overdue():
            # no grace left: a stopping actor is killed when its turn comes, without Tune's waits
            self._actor_force_cleanup_timeout = 0
            for tracked_actor in list(self._actor_to_trial):
                self._schedule_trial_stop(self._actor_to_trial[tracked_actor])
            self._cleanup_cached_actors(force_all=True)
            self._cleanup_stopping_actors(force_all=True)
        cleanup_by_tune(self)  # what is left to stop (nothing, if overdue) and Tune's own end

    with patched(TuneController, _cleanup_trials=cleanup_trials):
        yield


@contextlib.contextmanager
def staging_of_its_own():
    """While inside: each Ray Tune 2.60 run stages its driver's and trials' files on this machine under
    `<Ray session>/artifacts/<StorageContext._timestamp>/<experiment name>/`, and that timestamp is to the second
    (`date_str()`). Two runs on one Ray (a warm session, `hpo up`, the tests' session Ray) that start within the
    same second under the same experiment name (every hpo run's is "tune") would share that folder: the second
    run's trial directories get a suffix (`trial_0000_350b`, so its errors point at Ray's staging folder instead
    of the run's `tune/trial_0000/`) and its experiment state lies beside the first's. Each run's StorageContext
    gets a timestamp of its own. Restored after."""
    from ray.train._internal.storage import StorageContext  # here, not at the top: a move breaks only this

    made_by_ray = StorageContext.__init__

    def init_with_own_timestamp(self, *args, **kwargs):
        made_by_ray(self, *args, **kwargs)
        self._timestamp = f"{self._timestamp}_{uuid.uuid4().hex[:8]}"

    with patched(StorageContext, __init__=init_with_own_timestamp):
        yield


@contextlib.contextmanager
def callbacks_untagged():
    """While inside: Ray Tune 2.60's tune.run records no usage tag of the run's callbacks. To name them
    (ray.air._internal.usage.tag_callbacks, called with the run's callbacks) it imports every logger integration
    Ray ships, and the MLflow one imports MLflow wherever it is installed: measured, 1.1 s of a 2.3 s driver
    import, on every run, for one usage tag. Restored after."""
    from ray.air._internal import usage  # here, not at the top: a move breaks only this

    with patched(usage, tag_callbacks=lambda callbacks: False):
        yield


def creation_counter(trial) -> int:
    """Ray Tune 2.60 starts a trial's `experiment_tag` with its creation counter ("3_lr=0.01,..."):
    BasicVariantGenerator counts from 0, SearchGenerator (every Searcher) from 1."""
    return int(str(trial.experiment_tag).split("_", 1)[0])


def trial_actor(trial):
    """Ray Tune 2.60's Trial: the Ray actor running it (`temporary_state.ray_actor`), or None."""
    return trial.temporary_state.ray_actor


def trial_error_file(trial) -> str | None:
    """Ray Tune 2.60's Trial: the file holding its last error's traceback (`error_file`)."""
    return getattr(trial, "error_file", None)


@contextlib.contextmanager
def no_retry_on(error_class: type[BaseException]):
    """While inside: a Tune trial that fails with `error_class` (raised in its trainable, also as the cause of
    the RayTaskError Tune sees) is not retried, whatever FailureConfig.max_failures says. Ray Tune 2.60 has no
    such option: its TuneController asks `Trial.should_recover()` right after `Trial.handle_error(exc)`, so
    handle_error notes whether the error is final and should_recover honours it. Restored on the way out."""
    from ray.tune.experiment import Trial  # here, not at the top: a move breaks only this

    handle_error, should_recover = Trial.handle_error, Trial.should_recover

    def noting_handle_error(self, exc=None):
        self._hpo_final_error = contains_error(exc, error_class)
        return handle_error(self, exc)

    def unless_final(self):
        return not getattr(self, "_hpo_final_error", False) and should_recover(self)

    with patched(Trial, handle_error=noting_handle_error, should_recover=unless_final):
        yield


@contextlib.contextmanager
def lost_nodes_not_counted(is_lost):
    """While inside: a Tune trial failure for which `is_lost(trial, error)` is true does not count against
    FailureConfig.max_failures (Tune 2.60 counts all but preempted RayActorErrors in Trial.handle_error, which
    the controller calls just before Trial.should_recover), and `was_lost_node(trial)` says so."""
    from ray.tune.experiment import Trial  # here, not at the top: a move breaks only this

    handle_error = Trial.handle_error

    def not_counting_lost_nodes(self, exc=None):
        before = self.run_metadata.num_failures
        lost = False
        with contextlib.suppress(Exception):  # a classification error must not break Tune's failure handling
            lost = exc is not None and bool(is_lost(self, exc))
        self._hpo_lost_node = lost
        result = handle_error(self, exc)
        if lost:
            self.run_metadata.num_failures = before
        return result

    with patched(Trial, handle_error=not_counting_lost_nodes):
        yield


def was_lost_node(trial) -> bool:
    return getattr(trial, "_hpo_lost_node", False)


def tell_scheduler(scheduler, trial, results: list[dict]) -> list[dict]:
    """Tell a Tune scheduler (FIFO, ASHA) that `trial` reported `results` and ended, as TuneController would,
    without a controller: Ray 2.60's FIFO and ASHA never use the tune_controller argument. Returns the results
    the scheduler let through to the searcher (not the one it stopped the trial on, nor any after it)."""
    scheduler.on_trial_add(None, trial)
    passed = []
    for result in results:
        if scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP:
            break
        passed.append(result)
    scheduler.on_trial_complete(None, trial, results[-1])
    return passed


_CHOOSE_KEY = patch_key(TrialScheduler, "choose_trial_to_run")  # its CALLS key, made once: a hot path


class _ChoosesOnlyWhenATrialWaits:
    """See choose_only_when_a_trial_waits."""

    def choose_trial_to_run(self, tune_controller, **kwargs):
        CALLS[_CHOOSE_KEY] += 1  # a subclass of Tune's scheduler, not a patch of it: counted the same
        controller = getattr(tune_controller, "_tune_controller", tune_controller)  # TrialRunnerWrapper's
        if not (controller._pending_trials or controller._paused_trials):
            return None  # what the scan below would find, without reading every trial of the job
        return super().choose_trial_to_run(tune_controller, **kwargs)


_QUICK_CHOICE: dict[type, type] = {}


def choose_only_when_a_trial_waits(scheduler):
    """Ray Tune 2.60's TuneController asks its scheduler at every step of its loop (every report, every start and
    end) which trial to start next, and FIFOScheduler.choose_trial_to_run (ASHA's is the same) answers by scanning
    every trial of the job for a PENDING one, then all again for a PAUSED one. The finished trials come first, so
    late in a 10,000-trial job that is ~3 ms per report: the per-report cost of bench/scale.py's 10,000 x 100 run
    doubled from its first tenth of reports to its last. The controller keeps its pending and paused trials in
    sets (`_pending_trials`, `_paused_trials`, kept by `_set_trial_status` and `add_trial`): when both are empty
    the scan can only answer None, so it is skipped; otherwise Tune's own scan answers, as before. Returns
    `scheduler`, its class swapped for a subclass of it with that shortcut."""
    cls = type(scheduler)
    if cls not in _QUICK_CHOICE:
        _QUICK_CHOICE[cls] = type(cls.__name__, (_ChoosesOnlyWhenATrialWaits, cls), {})
    scheduler.__class__ = _QUICK_CHOICE[cls]
    return scheduler


def hold_trial(trial) -> None:
    """Ray 2.60's TuneController starts every PENDING trial it has resources for, whatever its scheduler's
    choose_trial_to_run says (that choice only orders them, and picks among PAUSED ones). A scheduler that
    decides how many trials run (PBT, which creates its whole population up front) holds each new trial as
    PAUSED from its on_trial_add, which the controller calls before it files the trial by its status
    (`add_trial`); the trial then starts when the scheduler chooses it."""
    trial.set_status(type(trial).PAUSED)


def pin_hyperopt_suggestion(searcher, trial_id: str, config: dict) -> None:
    """Ray 2.60's HyperOptSearch: make the suggestion it just made for `trial_id` be `config` in its own record
    (`_live_trial_mapping`, `_hpopt_trials`), so TPE learns the result at the config that actually ran. HyperOpt
    records a choice by its index (`_convert_categories_to_indices`)."""
    _, doc = searcher._live_trial_mapping[trial_id]
    vals = dict(config)
    searcher._convert_categories_to_indices(vals)
    for label in doc["misc"]["vals"]:
        if label in vals:
            doc["misc"]["vals"][label] = [vals[label]]
    searcher._hpopt_trials.refresh()


def optuna_trial(searcher, trial_id: str):
    """Ray 2.60's OptunaSearch: the Optuna trial it asked for Tune's `trial_id` (None before it did)."""
    return searcher._ot_trials.get(trial_id)


def repin_optuna_trial(searcher, trial_id: str, config: dict) -> None:
    """Ray 2.60's OptunaSearch: replace the Optuna trial it just asked for `trial_id` by one whose params are
    `config`, so the sampler is told the result at the config that actually ran. The proposed trial is told
    failed (Optuna cannot change a trial's params), `config` is enqueued, and the study asked again (over its
    fixed distributions, or through its define-by-run function, which takes the enqueued values)."""
    from optuna.trial import TrialState

    study = searcher._ot_study
    study.tell(searcher._ot_trials[trial_id], state=TrialState.FAIL)
    study.enqueue_trial(config, skip_if_exists=False)
    space = searcher._space
    if callable(space):
        trial = study.ask()
        space(trial)
    else:
        trial = study.ask(fixed_distributions=space)
    searcher._ot_trials[trial_id] = trial


def add_optuna_history(searcher, trials: list[tuple[dict, dict, list[float], dict]]) -> None:
    """Ray 2.60's OptunaSearch: add completed trials (params, their distributions, objective values, user
    attributes) to its study, so its sampler counts them as history."""
    from optuna.trial import TrialState, create_trial

    study = searcher._ot_study
    for params, distributions, values, attrs in trials:
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                params=params,
                distributions=distributions,
                values=values,
                user_attrs=attrs,
            )
        )
