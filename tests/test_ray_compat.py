"""Every private Ray API and internal behaviour hpo relies on (ray_support/ray_compat/, one module per Ray component), exercised against the
installed Ray. A Ray upgrade that moves or changes one fails here, naming it, before it fails a user's job."""

from __future__ import annotations

import importlib
import inspect
import itertools
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
import types
import weakref
from pathlib import Path

import pytest
import ray
import ray_internals
import tomllib
from conftest import ROOT, spec_dict, spec_file, wait_for
from ray.tune.execution import class_cache as _class_cache
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from orchestrator.ray_support import ray_compat

# Tune's own, taken when this module is collected: before any test starts an embedded Ray, whose session patches
# it until the session ends (ray_env.start_ray: trial_actors_inherit)
_TUNES_OWN_GET = _class_cache._ActorClassCache.get


def test_checked_against_the_installed_and_pinned_ray():
    pin = next(
        d
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if d.startswith("ray[")
    )
    assert ray.__version__ == ray_compat.CHECKED_WITH and pin.endswith(f"=={ray_compat.CHECKED_WITH}"), (
        f"Ray is {ray.__version__}, ray_compat was checked against {ray_compat.CHECKED_WITH}: run this file, fix "
        "what fails in ray_support/ray_compat/, then bump CHECKED_WITH"
    )


def test_every_compat_name_has_a_test_here():
    defined = [
        name
        for name in ray_compat.__all__
        if inspect.isfunction(obj := getattr(ray_compat, name))
        and obj.__module__.startswith(f"{ray_compat.__name__}.")
        or name.isupper()
    ]
    # the package says every public name of its modules (a name left out would go untested)
    for module in _compat_modules():
        public = {
            n
            for n, o in vars(module).items()
            if not n.startswith("_")
            and getattr(o, "__module__", module.__name__) == module.__name__
            and not inspect.ismodule(o)
        }
        public -= {"annotations"}
        assert public <= set(ray_compat.__all__), (module.__name__, public - set(ray_compat.__all__))
    here = Path(__file__).read_text()
    untested = [name for name in defined if name != "CHECKED_WITH" and f"ray_compat.{name}" not in here]
    assert not untested, f"ray_compat names without a test here: {untested}"


def _compat_modules() -> list:
    import pkgutil

    return [
        importlib.import_module(f"{ray_compat.__name__}.{info.name}")
        for info in pkgutil.iter_modules(ray_compat.__path__)
    ]


def test_the_raylet_has_the_fast_connect_settings():
    # RayConfig's settings are compiled into the raylet; one that Ray renamed would fail every embedded start
    raylet = (Path(ray.__file__).parent / "core" / "src" / "ray" / "raylet" / "raylet").read_bytes()
    for name, value in ray_compat.FAST_CONNECT.items():
        assert f"RAY_{name}".encode() in raylet, f"Ray's raylet no longer reads {name}"
        assert isinstance(value, int) and value > 0
    # the same total wait as Ray's defaults (1,000 ms x 10 attempts): faster retries, not a shorter patience
    waits = ray_compat.FAST_CONNECT.values()
    assert math.prod(waits) == 1000 * 10
    assert ray_internals.fast_connect_env() == {
        "RAY_raylet_client_connect_timeout_milliseconds": "20",
        "RAY_raylet_client_num_connect_attempts": "500",
    }


def test_tune_reads_the_knobs_we_set():
    sources = "".join(
        inspect.getsource(importlib.import_module(m))
        for m in (
            "ray.tune.constants",
            "ray.air.constants",
            "ray.tune.execution.experiment_state",
            "ray.tune.execution.tune_controller",
        )
    )
    for name in ray_compat.QUIET_TUNE_ENV:
        assert name in sources, f"Ray no longer reads {name}"
    for name in ray_compat.QUIET_LOGGERS:
        importlib.import_module(name)  # the logger is named after its module
    state = importlib.import_module(ray_compat.EXPERIMENT_STATE_LOGGER)
    assert "failed with exception" in inspect.getsource(state) and "exc_info=True" in inspect.getsource(state)
    controller = importlib.import_module(ray_compat.TUNE_CONTROLLER_LOGGER)
    assert 'f"Trial task failed for trial {trial}"' in inspect.getsource(controller)
    assert ray_compat.trial_failed_message("trial_0003") == "Trial task failed for trial trial_0003"


def test_tune_propagates_credentials_unless_stopped(monkeypatch):
    """Live: the env_vars Tune's class cache gives a trial actor class. Ray copies the secret by default; under
    ray_compat.stop_propagating_env it does not (ray_internals.propagated_env says so too); the undo puts Ray's own
    set back. (The session's own DriverSession may have left it out already: it is put in first, as Ray has it.)"""
    from ray.tune.execution import class_cache

    assert '"AWS_SECRET_ACCESS_KEY"' in inspect.getsource(class_cache)  # Ray copies it by default
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")

    def trial_actor_env_vars() -> dict:
        # No runtime_env at all where the session's Ray (ray_cluster, if a test before this one started it) has
        # trial_actors_inherit in place and what is left equals what that Ray inherited: nothing is copied then.
        options = class_cache._ActorClassCache().get(_Probe)._default_options
        return options.get("runtime_env", {"env_vars": {}})["env_vars"]

    as_ray_has_it = class_cache.ENV_VARS_TO_PROPAGATE | {"AWS_SECRET_ACCESS_KEY"}
    with ray_compat.patched(class_cache, ENV_VARS_TO_PROPAGATE=as_ray_has_it):
        assert trial_actor_env_vars()["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
        undo = ray_compat.stop_propagating_env(("AWS_SECRET_ACCESS_KEY", "NOT_A_VARIABLE"))
        try:
            assert "AWS_SECRET_ACCESS_KEY" not in trial_actor_env_vars()
            assert "AWS_SECRET_ACCESS_KEY" not in ray_internals.propagated_env()
        finally:
            undo()
        assert class_cache.ENV_VARS_TO_PROPAGATE is as_ray_has_it
        assert trial_actor_env_vars()["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"


def _trial(name: str, tag: str) -> Trial:
    trial = Trial("__fake", config={"x": 1}, experiment_tag=tag, trial_name_creator=lambda t: name, stub=True)
    return trial


def test_trial_internals():
    trial = _trial("trial_0007", "8_x=1")
    assert ray_compat.trial_name(trial) == "trial_0007"
    assert ray_compat.creation_counter(trial) == 8
    assert ray_compat.trial_actor(trial) is None  # not running
    assert ray_compat.trial_error_file(trial) is None


def test_an_ended_trials_metric_statistics_can_be_dropped():
    trial = _trial("trial_0007", "8_x=1")
    trial.update_last_result({"val_loss": 0.5, "training_iteration": 1, "config": {"x": 1}})
    assert (
        "val_loss" in trial.run_metadata.metric_analysis and "val_loss" in trial.run_metadata.metric_n_steps
    )
    ray_compat.forget_trial_metrics(trial)
    assert trial.run_metadata.metric_analysis == {} and trial.run_metadata.metric_n_steps == {}
    assert trial.last_result["val_loss"] == 0.5  # Tune's own use of the trial is untouched


def test_the_experiment_state_can_leave_out_the_trials():
    from ray.tune.execution.tune_controller import TuneController

    original = TuneController._get_trial_checkpoints
    assert "trial.get_json_state()" in inspect.getsource(original)
    assert "self._get_trial_checkpoints().values()" in inspect.getsource(TuneController.save_to_dir)
    controller = types.SimpleNamespace(_trials_to_cache={"t"}, _trial_metadata={})
    with ray_compat.lean_experiment_state():
        assert TuneController._get_trial_checkpoints(controller) == {} and not controller._trials_to_cache
    assert TuneController._get_trial_checkpoints is original


def test_two_runs_started_in_one_second_stage_their_files_in_folders_of_their_own(tmp_path):
    """Ray's local staging folder is keyed by the StorageContext's timestamp, to the second: under
    ray_compat.staging_of_its_own two contexts made at once (same storage, same experiment name, as two hpo runs
    of one Ray) get different ones (a flake in CI: a second run's trial_0000 became trial_0000_350b there)."""
    from ray.train._internal.storage import StorageContext

    original = StorageContext.__init__
    assert "self._timestamp = date_str()" in inspect.getsource(original)
    assert "self._timestamp" in inspect.getsource(StorageContext._get_session_path)

    def context():
        return StorageContext(storage_path=str(tmp_path), experiment_dir_name="tune")

    with ray_compat.staging_of_its_own():
        first, second = context(), context()
    assert first._timestamp != second._timestamp
    assert first._timestamp.startswith(time.strftime("%Y-%m-%d_")), first._timestamp
    assert StorageContext.__init__ is original


def test_a_run_does_not_import_rays_logger_integrations_to_tag_its_callbacks():
    from ray.air._internal import usage
    from ray.tune import tune as tune_module

    original = usage.tag_callbacks
    assert "from ray.air.integrations.mlflow import" in inspect.getsource(usage._count_callbacks)
    assert "air_usage.tag_callbacks(callbacks)" in inspect.getsource(tune_module.run)
    with ray_compat.callbacks_untagged():
        assert usage.tag_callbacks([object()]) is False
    assert usage.tag_callbacks is original


class _Final(Exception):
    pass


def test_final_errors_are_found_through_rays_wrappers_and_not_retried():
    from ray.exceptions import RayTaskError
    from ray.train.v2.api.exceptions import WorkerGroupError

    task_error = RayTaskError("trainable", "Traceback ...", _Final("x"))
    assert ray_compat.contains_error(task_error, _Final)
    assert ray_compat.contains_error(WorkerGroupError("rank 1 failed", {1: _Final("y")}), _Final)
    try:
        try:
            raise _Final("z")
        except _Final as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as chained:
        assert ray_compat.contains_error(chained, _Final)
    assert not ray_compat.contains_error(RayTaskError("trainable", "Traceback ...", ValueError("v")), _Final)
    assert not ray_compat.contains_error(None, _Final)
    assert list(ray_compat.errors_within(None)) == []
    assert [type(e) for e in ray_compat.errors_within(WorkerGroupError("r", {0: _Final("y")}))] == [
        WorkerGroupError,
        _Final,
    ]

    trial = _trial("trial_0001", "1")
    trial.max_failures = 2
    trial.storage = types.SimpleNamespace(trial_driver_staging_path=None)  # a stub trial: no error file
    should_recover, handle_error = Trial.should_recover, Trial.handle_error
    with ray_compat.no_retry_on(_Final):
        trial.handle_error(RayTaskError("trainable", "Traceback ...", ValueError("v")))
        assert trial.should_recover()  # an ordinary failure: retried
        trial.handle_error(task_error)
        assert not trial.should_recover()  # a final one: not, though max_failures allows it
    assert (Trial.should_recover, Trial.handle_error) == (should_recover, handle_error)  # restored
    assert trial.should_recover()  # outside, Tune's own rule again


def test_schedulers_can_be_told_results_without_a_controller():
    results = [{"epoch": e, "loss": loss} for e, loss in enumerate([3.0, 2.0, 1.0], start=1)]
    assert ray_compat.tell_scheduler(FIFOScheduler(), _trial("trial_0000", "0"), results) == results
    asha = ASHAScheduler(
        time_attr="epoch", metric="loss", mode="min", max_t=3, grace_period=1, reduction_factor=2
    )
    good = [{"epoch": 1, "loss": 0.1}, {"epoch": 2, "loss": 0.1}, {"epoch": 3, "loss": 0.1}]
    # at max_t ASHA stops every trial: as Tune does, the searcher never hears that last result
    assert ray_compat.tell_scheduler(asha, _trial("trial_0000", "0"), good) == good[:2]
    bad = [{"epoch": 1, "loss": 9.0}, {"epoch": 2, "loss": 9.0}, {"epoch": 3, "loss": 9.0}]
    assert ray_compat.tell_scheduler(asha, _trial("trial_0001", "1"), bad) == []  # stopped at its first rung


def test_a_scheduler_scans_the_trials_only_when_one_waits():
    from ray.tune.execution.tune_controller import TuneController

    # the sets the shortcut reads are kept for every status a trial enters, as it is added and as it changes
    for kept in (TuneController._set_trial_status, TuneController.add_trial):
        source = inspect.getsource(kept)
        assert "Trial.PENDING: self._pending_trials" in source, kept
        assert "Trial.PAUSED: self._paused_trials" in source, kept
    _chooses_as_tune_does(FIFOScheduler())
    _chooses_as_tune_does(ASHAScheduler(time_attr="epoch", metric="loss", mode="min", max_t=3))


def _chooses_as_tune_does(scheduler) -> None:
    from ray import cloudpickle
    from ray.tune.execution.tune_controller import TrialRunnerWrapper

    tunes_own = type(scheduler)
    assert ray_compat.choose_only_when_a_trial_waits(scheduler) is scheduler
    assert isinstance(scheduler, tunes_own) and type(scheduler).__name__ == tunes_own.__name__
    trials = [_trial(f"trial_{i:04d}", str(i)) for i in range(5)]
    for trial, status in zip(trials, (Trial.TERMINATED, Trial.ERROR, *[Trial.RUNNING] * 3), strict=True):
        trial.set_status(status)
    scans = []

    def get_trials():
        scans.append(1)
        return trials

    controller = types.SimpleNamespace(_pending_trials=set(), _paused_trials=set(), get_trials=get_trials)
    wrapped = TrialRunnerWrapper(controller, trial_executor=None, runner_whitelist_attr={"get_trials"})
    assert scheduler.choose_trial_to_run(wrapped) is None and not scans  # nothing waits: no scan
    assert tunes_own.choose_trial_to_run(scheduler, wrapped) is None  # what Tune's scan finds too
    for status, waiting in (
        (Trial.PAUSED, controller._paused_trials),
        (Trial.PENDING, controller._pending_trials),
    ):
        trials[4].set_status(status)
        waiting.add(trials[4])
        chosen = scheduler.choose_trial_to_run(wrapped)
        assert chosen is trials[4] and chosen is tunes_own.choose_trial_to_run(scheduler, wrapped)
    copy = cloudpickle.loads(cloudpickle.dumps(scheduler))  # Tune pickles its config into tuner.pkl
    assert isinstance(copy, tunes_own) and copy.choose_trial_to_run(wrapped) is not None


def test_hyperopt_pinning():
    """ray_compat.pin_hyperopt_suggestion and ray_internals.hyperopt_record: exercised on a real TPE in
    test_fast_forward.py."""
    import test_fast_forward

    test_fast_forward.test_a_pinned_proposal_is_the_recorded_config_and_tpe_learns_it_there()


@pytest.mark.slow
def test_a_held_trial_starts_only_when_its_scheduler_chooses_it(ray_cluster, tmp_path, monkeypatch):
    """ray_compat.hold_trial: Tune starts every PENDING trial it has CPUs for; held (PAUSED) trials start only
    when chosen, so a scheduler that chooses one at a time runs 3 one-CPU trials one after another on 2 CPUs."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    def timed_trial(config):  # local: pickled by value for the trial's process
        start = time.monotonic()
        time.sleep(0.5)
        with open(config["log"], "a") as fh:
            fh.write(json.dumps([start, time.monotonic()]) + "\n")

    class OneAtATime(FIFOScheduler):
        def on_trial_add(self, tune_controller, trial):
            ray_compat.hold_trial(trial)

        def choose_trial_to_run(self, tune_controller):
            trials = tune_controller.get_trials()
            if any(t.status in (Trial.RUNNING, Trial.PENDING) for t in trials):
                return None
            return next((t for t in trials if t.status == Trial.PAUSED), None)

    log = tmp_path / "ran.jsonl"
    # a bare Tuner installs its own SIGINT handler and leaves it: this test process's later tests must not inherit it
    monkeypatch.setenv("TUNE_DISABLE_SIGINT_HANDLER", "1")
    tune.Tuner(
        tune.with_resources(timed_trial, {"cpu": 1}),
        param_space={"log": str(log), "x": tune.grid_search([1, 2, 3])},
        tune_config=tune.TuneConfig(scheduler=OneAtATime(), reuse_actors=False),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0),
    ).fit()
    spans = sorted(json.loads(line) for line in log.read_text().splitlines())
    assert len(spans) == 3
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans)), (
        spans
    )  # never two at once


def test_optuna_trials_and_repinning():
    """ray_compat.optuna_trial, repin_optuna_trial and add_optuna_history on a real OptunaSearch: the trial asked for a Tune trial is
    found, and a repinned one has the pinned params, the proposed one is failed in the study, and the sampler is
    told the result at the pinned config."""
    import optuna
    from optuna.distributions import FloatDistribution
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(
        space={"x": FloatDistribution(0.0, 1.0)},
        metric="loss",
        mode="min",
        sampler=optuna.samplers.TPESampler(seed=0),
    )
    assert ray_compat.optuna_trial(searcher, "t0") is None
    proposed = searcher.suggest("t0")
    asked = ray_compat.optuna_trial(searcher, "t0")
    assert asked.params == proposed and proposed["x"] != 0.25
    ray_compat.repin_optuna_trial(searcher, "t0", {"x": 0.25})
    assert ray_compat.optuna_trial(searcher, "t0").params == {"x": 0.25}
    searcher.on_trial_complete("t0", {"loss": 1.0, "training_iteration": 1})
    trials = ray_compat.optuna_trial(searcher, "t0").study.trials
    states = [(t.state.name, t.params) for t in trials]
    assert states == [("FAIL", proposed), ("COMPLETE", {"x": 0.25})], states
    # add_optuna_history: trials that ran elsewhere join the study, complete, with their values and attributes
    ray_compat.add_optuna_history(
        searcher, [({"x": 0.5}, {"x": FloatDistribution(0.0, 1.0)}, [0.3], {"note": 1})]
    )
    added = ray_compat.optuna_trial(searcher, "t0").study.trials[-1]
    assert (added.state.name, added.params, added.values, added.user_attrs) == (
        "COMPLETE",
        {"x": 0.5},
        [0.3],
        {"note": 1},
    )


def test_repinning_a_define_by_run_optuna_trial():
    """ray_compat.repin_optuna_trial on an OptunaSearch whose space is a define-by-run function (a conditional
    space): the new trial takes the pinned branch and only its parameters, through the function."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    def space(trial):
        if trial.suggest_categorical("opt", ["adam", "sgd"]) == "sgd":
            trial.suggest_float("momentum|opt=sgd", 0.5, 0.99)

    searcher = OptunaSearch(
        space=space, metric="loss", mode="min", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    proposed = searcher.suggest("t0")
    pinned = {"opt": "sgd", "momentum|opt=sgd": 0.75} if proposed["opt"] == "adam" else {"opt": "adam"}
    ray_compat.repin_optuna_trial(searcher, "t0", pinned)
    assert ray_compat.optuna_trial(searcher, "t0").params == pinned
    searcher.on_trial_complete("t0", {"loss": 1.0, "training_iteration": 1})
    trials = ray_compat.optuna_trial(searcher, "t0").study.trials
    assert [(t.state.name, t.params) for t in trials] == [("FAIL", proposed), ("COMPLETE", pinned)]


def test_train_worker_logger_and_placement_group_ids():
    ray_compat.quiet_train_worker()
    from ray.train.v2._internal.execution import context

    assert logging.getLogger(context.__file__).level == logging.WARNING
    from ray.train.v2._internal.execution.controller import controller

    assert hasattr(controller, ray_compat.TRAIN_CONTROLLER_CLASS)  # the actor class the state API lists
    from ray.train.v2._internal import constants

    # the controller reads each knob we set (by its constant's name), and passes it on to the workers
    assert set(ray_compat.TRAIN_ENV) <= constants.ENV_VARS_TO_PROPAGATE
    read = "".join(inspect.getsource(controller).split())
    for name in ray_compat.TRAIN_ENV:
        constant = next(k for k, v in vars(constants).items() if v == name)
        assert f"os.getenv({constant}," in read, f"Ray Train's controller no longer reads {name}"
    hex_id = "ab" * 18  # a placement group id is 18 bytes (the job id's 4 at its end)
    assert ray_compat.placement_group(hex_id).id.hex() == hex_id


def test_auth_errors():
    from ray.exceptions import AuthenticationError

    assert ray_compat.is_refused_token(AuthenticationError("no"))
    wrapped = ConnectionError("could not connect")
    wrapped.__cause__ = RuntimeError("rpc error: InvalidAuthToken")
    assert ray_compat.is_refused_token(wrapped)
    assert not ray_compat.is_refused_token(ConnectionError("refused"))


def test_tune_propagated_env_is_readable():
    assert isinstance(ray_internals.propagated_env(), set)


def test_cluster_config_validation_and_fake_provider():
    """ray_internals.validate_cluster_config and ray_internals.fake_head_node_id: the shipped configs' tests
    (test_cluster_configs.py, test_autoscaling.py) use them; here, that they exist and reject nonsense."""
    assert ray_internals.fake_head_node_id()
    with pytest.raises(Exception):  # noqa: B017  (Ray raises jsonschema's or its own)
        ray_internals.validate_cluster_config(
            {"cluster_name": "x", "provider": {"type": "nonsense"}}, prepare=False
        )


@pytest.mark.slow
def test_gcs_key_value_store_and_session(ray_cluster):
    assert ray_compat.kv_ready()
    ray_compat.kv_put(b"hpo-compat-test", b"1", namespace="hpo-test")
    assert ray_compat.kv_get(b"hpo-compat-test", namespace="hpo-test") == b"1"
    ray_compat.kv_del(b"hpo-compat-test", namespace="hpo-test")
    assert ray_compat.kv_get(b"hpo-compat-test", namespace="hpo-test") is None
    assert ray_compat.dashboard_url()
    assert ray_compat.started_here_without_dashboard() is False  # the test session's Ray has its dashboard
    assert ray_compat.job_placement_groups(ray.get_runtime_context().get_job_id()) == []
    assert Path(ray_compat.session_dir()).is_dir()


@pytest.mark.slow
def test_enable_token_auth_sets_token_mode_and_refresh_ray_config_undoes_it():
    """In a process of its own: both change Ray's process-wide cached config (never in this one, whose
    session Ray stays connected)."""
    code = (
        "import os; from orchestrator.ray_support import ray_compat; "
        "from ray._private.authentication.authentication_utils import is_token_auth_enabled; "
        "ray_compat.enable_token_auth(); print(os.environ.get('RAY_AUTH_MODE'), is_token_auth_enabled()); "
        "os.environ['RAY_AUTH_MODE'] = 'disabled'; ray_compat.refresh_ray_config(); print(is_token_auth_enabled())"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["token", "True", "False"], (
        proc.stdout + proc.stderr[-2000:]
    )


@pytest.mark.slow
def test_ray_train_is_told_its_clusters_address(ray_cluster, monkeypatch):
    from ray.train.v2._internal import constants

    monkeypatch.setenv("RAY_ADDRESS", "http://elsewhere:8265")  # a user's, for hpo submit: put back after
    with ray_compat.train_knows_its_cluster():
        propagated = constants.get_env_vars_to_propagate()
        assert propagated["RAY_ADDRESS"] == ray.get_runtime_context().gcs_address == os.environ["RAY_ADDRESS"]
    assert os.environ["RAY_ADDRESS"] == "http://elsewhere:8265"
    assert "RAY_ADDRESS" not in constants.ENV_VARS_TO_PROPAGATE


def test_lost_nodes_are_told_from_failures_and_not_counted():
    """ray_compat.lost_node_error on what Ray 2.60 raises for an actor on a lost node, ray_compat.preempted_error,
    ray_compat.NODE_DEATH_TEXTS, and ray_compat.lost_nodes_not_counted / ray_compat.was_lost_node on a stub trial."""
    from ray.core.generated.common_pb2 import ActorDiedErrorContext, NodeDeathInfo
    from ray.exceptions import ActorDiedError, RayTaskError
    from ray.train.v2.api.exceptions import WorkerGroupError

    drained = ActorDiedErrorContext(
        actor_id=b"\x01" * 16,
        error_message="The actor died because its node has died. Node Id: ab12",
        node_death_info=NodeDeathInfo(reason=NodeDeathInfo.AUTOSCALER_DRAIN_PREEMPTED),
    )
    assert ActorDiedError(drained).preempted and ray_compat.lost_node_error(ActorDiedError(drained))
    killed = ActorDiedErrorContext(
        actor_id=b"\x02" * 16,
        error_message=f"{ray_compat.NODE_DEATH_TEXTS[0]}. Node Id: cd34",
        node_death_info=NodeDeathInfo(reason=NodeDeathInfo.UNEXPECTED_TERMINATION),
    )
    assert not ActorDiedError(killed).preempted  # Ray itself does not call a SIGKILLed node preempted
    assert ray_compat.lost_node_error(WorkerGroupError("rank 1 died", {1: ActorDiedError(killed)}))
    oom = ActorDiedErrorContext(
        actor_id=b"\x03" * 16, error_message="The actor's worker process was killed (OOM)"
    )
    assert not ray_compat.lost_node_error(ActorDiedError(oom))
    assert not ray_compat.lost_node_error(RayTaskError("trainable", "Traceback ...", ValueError("v")))
    assert ray_compat.lost_node_error(
        RayTaskError("trainable", "Traceback ...", ray_compat.preempted_error("x"))
    )

    trial = _trial("trial_0002", "2")
    trial.max_failures = 0  # no retry allowed: a lost node must still be retried
    trial.storage = types.SimpleNamespace(trial_driver_staging_path=None)
    handle_error = Trial.handle_error
    with ray_compat.lost_nodes_not_counted(lambda t, e: ray_compat.contains_error(e, ConnectionError)):
        trial.handle_error(RayTaskError("trainable", "Traceback ...", ConnectionError("its node went away")))
        assert (
            ray_compat.was_lost_node(trial)
            and trial.run_metadata.num_failures == 0
            and trial.should_recover()
        )
        trial.handle_error(RayTaskError("trainable", "Traceback ...", ValueError("a bug")))
        assert not ray_compat.was_lost_node(trial) and not trial.should_recover()
    assert Trial.handle_error is handle_error
    # Tune's own rule: a preempted RayActorError, as a multi-worker trial raises it, is not counted either
    fresh = _trial("trial_0003", "3")
    fresh.storage = types.SimpleNamespace(trial_driver_staging_path=None)
    fresh.handle_error(RayTaskError("trainable", "Traceback ...", ray_compat.preempted_error("lost")))
    assert fresh.run_metadata.num_failures == 0


def test_accelerator_resource_is_what_ray_train_asks_for():
    from ray.train import ScalingConfig

    asked = ScalingConfig(num_workers=1, use_gpu=True, accelerator_type="A100")._resources_per_worker_not_none
    assert asked[ray_compat.accelerator_resource("A100")] == ray_compat.ACCELERATOR_SLIVER


@pytest.mark.slow
def test_the_clusters_nodes_and_their_types_are_read(ray_cluster):
    """ray_compat.live_nodes, ray_compat.LOCAL_NODE_TYPE, ray_compat.NODE_GROUP_LABEL, ray_compat.node_gone,
    ray_compat.node_draining and ray_compat.autoscaler_node_types on the session's embedded Ray (the fake
    provider's node types are read in test_autoscaling.py)."""
    nodes = ray_compat.live_nodes()
    assert (
        len(nodes) == 1
        and nodes[0]["resources"]["CPU"] == 4
        and nodes[0]["type"] == ray_compat.LOCAL_NODE_TYPE
    )
    assert ray_compat.NODE_GROUP_LABEL == "ray.io/node-group"
    here = nodes[0]["id"]
    assert not ray_compat.node_draining(here) and not ray_compat.node_gone(here)
    assert ray_compat.node_gone("ff" * 28)  # no such node
    assert ray_compat.autoscaler_node_types() == ([], False)  # an embedded Ray has no autoscaler


@pytest.mark.slow
def test_the_head_has_a_resource_of_its_own(ray_cluster):
    """ray_compat.head_resource: one of it, on the head (the session's embedded Ray is all head); a task that asks
    for ray_compat.on_the_head() (ray_compat.HEAD_SLIVER of it) is scheduled there."""
    assert ray.cluster_resources()[ray_compat.head_resource()] == 1
    assert ray_compat.on_the_head() == {ray_compat.head_resource(): ray_compat.HEAD_SLIVER}

    @ray.remote(num_cpus=0)
    def where() -> str:
        return ray.get_runtime_context().get_node_id()

    node = ray.get(where.options(resources=ray_compat.on_the_head()).remote(), timeout=60)
    assert node == ray.get_runtime_context().get_node_id()


# What Python printed, relayed by Ray to the driver's stderr, at the end of a successful `hpo run` in CI: a
# worker that Ray stopped with SIGTERM while it ran a weakref callback.
STOP_NOISE = [
    "Exception ignored in: <function WeakSet.__init__.<locals>._remove at 0x7f3c0610a840>",
    "Traceback (most recent call last):",
    '  File "/root/.pyenv/versions/3.11.7/lib/python3.11/_weakrefset.py", line 39, in _remove',
    "    def _remove(item, selfref=ref(self)):",
    "",
    '  File "/venv/lib/python3.11/site-packages/ray/_private/worker.py", line 1063, in sigterm_handler',
    "    raise_sys_exit_with_custom_error_message(",
    '  File "python/ray/_raylet.pyx", line 712, in ray._raylet.raise_sys_exit_with_custom_error_message',
    "SystemExit: 1",
]


def test_the_stop_noise_of_rays_workers_is_dropped_and_nothing_else():
    other_ignored = [
        "Exception ignored in: <function Model.__del__ at 0x7f00>",
        "Traceback (most recent call last):",
        '  File "my_workloads.py", line 9, in __del__',
        "ValueError: a user's own error",
    ]
    assert ray_compat.without_stop_noise(["epoch 1", *STOP_NOISE, "epoch 2"]) == ["epoch 1", "epoch 2"]
    assert ray_compat.without_stop_noise(STOP_NOISE * 2) == []
    assert ray_compat.without_stop_noise(other_ignored + STOP_NOISE) == other_ignored
    # a SystemExit of the user's own, and a block cut off before its exception line, are kept
    own_exit = [*STOP_NOISE[:4], '  File "my_workloads.py", line 3, in stop', "SystemExit: 1"]
    assert ray_compat.without_stop_noise(own_exit) == own_exit
    assert ray_compat.without_stop_noise(STOP_NOISE[:-1]) == STOP_NOISE[:-1]


def test_stop_noise_split_across_two_batches_of_one_worker_is_dropped_and_nothing_else():
    """Ray's log monitor sends what a worker's log file holds when it reads it: under load Python's block comes
    in two batches (seen in CI). The relay holds the unfinished block back until the worker's next batch."""
    quiet = ray_compat.QuietBatches()
    batch = {"is_err": True, "pid": 7, "ip": "10.0.0.1"}
    for cut in range(1, len(STOP_NOISE)):
        assert ray_compat.unfinished_block(["epoch 1", *STOP_NOISE[:cut]]) == 1
        first = quiet({**batch, "lines": ["epoch 1", *STOP_NOISE[:cut]]})
        assert first["lines"] == ["epoch 1"] and first["pid"] == 7
        # another worker's batch meanwhile is its own
        assert quiet({**batch, "pid": 8, "lines": ["other"]})["lines"] == ["other"]
        assert quiet({**batch, "lines": [*STOP_NOISE[cut:], "epoch 2"]})["lines"] == ["epoch 2"]
    # a user's own ignored exception, split the same way, arrives whole with the batch that ends it
    user = ["Exception ignored in: <function Model.__del__>", "Traceback (most recent call last):"]
    assert quiet({**batch, "lines": user}) is None
    assert quiet({**batch, "lines": ["ValueError: mine", "epoch 3"]})["lines"] == [
        *user,
        "ValueError: mine",
        "epoch 3",
    ]
    assert (
        ray_compat.unfinished_block(["Exception ignored in: x", "Traceback (most recent call last):", "E: x"])
        is None
    )
    stdout = {"is_err": False, "pid": 7, "lines": STOP_NOISE[:2]}
    assert quiet(stdout) is stdout


def test_quiet_worker_stops_filters_the_drivers_relay_and_undoes_it(monkeypatch):
    """Without a Ray: the handler Ray's worker.connect registers (ray_compat.PRINT_LOGS_HANDLER) stands in. The
    relay gets each batch without the stop noise, other handlers get it whole; the undo leaves Ray's emit."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    relayed, other = [], []
    monkeypatch.setattr(
        dispatcher, "handlers", [(ray_compat.PRINT_LOGS_HANDLER, relayed.append), ("x", other.append)]
    )
    before = vars(dispatcher).get("emit")  # the session's own DriverSession may have quieted it already
    undo = ray_compat.quiet_worker_stops()
    dispatcher.emit({"is_err": True, "lines": STOP_NOISE})  # nothing left: not relayed at all
    dispatcher.emit({"is_err": True, "lines": ["epoch 1", *STOP_NOISE], "pid": 7})
    dispatcher.emit({"is_err": False, "lines": STOP_NOISE})  # stdout: not Python's stop noise, relayed as is
    assert relayed == [
        {"is_err": True, "lines": ["epoch 1"], "pid": 7},
        {"is_err": False, "lines": STOP_NOISE},
    ]
    assert len(other) == 3  # other handlers see everything
    undo()
    assert vars(dispatcher).get("emit") is before  # as it was: Ray's own method, or the session's quiet one
    if before is None:
        dispatcher.emit({"is_err": True, "lines": STOP_NOISE})
        assert relayed[-1] == {"is_err": True, "lines": STOP_NOISE}


@pytest.mark.slow
def test_a_worker_sigtermed_inside_a_weakref_callback_prints_noise_the_driver_does_not_relay(
    ray_cluster, capsys
):
    """The real thing: a worker of the session's Ray gets SIGTERM while its main thread runs a weakref callback.
    Its own log holds Python's "Exception ignored ... SystemExit: 1"; the driver's stderr (the session started Ray
    through DriverSession, which quiets the relay) has the lines around it and not that."""

    @ray.remote(num_cpus=0)
    class Worker:
        def pid(self) -> int:
            return os.getpid()

        def collect_slowly(self) -> None:
            class Thing:
                pass

            thing = Thing()
            keep = weakref.ref(thing, lambda _: time.sleep(30))  # the callback runs at `del`, in this thread
            print("before the stop", file=sys.stderr, flush=True)
            del thing
            print("after the stop", file=sys.stderr, flush=True)
            assert keep() is None  # the weakref lived through its callback

    worker = Worker.remote()
    pid = ray.get(worker.pid.remote(), timeout=60)
    done = worker.collect_slowly.remote()
    seen = []

    def relayed(line: str) -> bool:
        seen.append(capsys.readouterr().err)
        return line in "".join(seen)

    wait_for(lambda: relayed("before the stop"), "the worker's first line on the driver's stderr", 60)
    os.kill(pid, signal.SIGTERM)  # as Ray's raylet stops a worker it no longer needs
    ray.get(done, timeout=60)  # the SystemExit was swallowed inside the callback: the method goes on
    wait_for(lambda: relayed("after the stop"), "the worker's last line on the driver's stderr", 60)
    log = next(Path(ray_compat.session_dir(), "logs").glob(f"worker-*-{pid}.err")).read_text()
    assert "Exception ignored in" in log and "in sigterm_handler" in log and "SystemExit: 1" in log, log
    assert "Exception ignored" not in "".join(seen) and "Traceback" not in "".join(seen), "".join(seen)
    ray.kill(worker)


@pytest.mark.slow
def test_the_autoscaler_monitor_of_a_head_started_here_is_stopped_before_the_shutdown():
    """In a process of its own (this one's session Ray keeps its monitor): an embedded head has a monitor
    process; stop_autoscaler_monitor kills it, says so, and the shutdown after it leaves nothing running.
    A second call, and one without a head started here, stop nothing. The figures are printed, not asserted."""
    code = (
        "import logging, time, ray; from orchestrator.ray_support import ray_compat\n"
        "print(ray_compat.stop_autoscaler_monitor())\n"
        "ray.init(address='local', num_cpus=1, include_dashboard=False, logging_level=logging.ERROR)\n"
        "node = ray._private.worker._global_node\n"
        "pids = [i.process.pid for i in node.all_processes[ray_compat.MONITOR_PROCESS]]\n"
        "others = [i.process for t, infos in node.all_processes.items() for i in infos]\n"
        "began = time.monotonic(); print(ray_compat.stop_autoscaler_monitor(), len(pids))\n"
        "print(ray_compat.stop_autoscaler_monitor(), ray_compat.MONITOR_PROCESS in node.all_processes)\n"
        "stopped = time.monotonic(); ray.shutdown()\n"
        "print(all(p.poll() is not None for p in others))\n"
        "print(f'monitor {stopped - began:.2f} s, then the shutdown {time.monotonic() - stopped:.2f} s')\n"
    )
    print(_printed_by(code, ["False", "True 1", "False False", "True"]))


def test_the_quick_embedded_start_reaches_what_ray_has_and_puts_it_back():
    """The functions quick_embedded_start replaces, the client call it polls with, the flag it rewrites and the
    parameter it sets have the shape it was written against; inside the block they are replaced (the API
    server and the monitor only without the dashboard, the raylet's start only with a prestart), and after it,
    however it ends, Ray's own are back."""
    node_class, services = ray._private.node.Node, ray._private.services
    own = (node_class.start_api_server, node_class.start_head_processes, services.get_node)
    start_ray_process = services.start_ray_process
    api_params = inspect.signature(own[0]).parameters
    assert [p for p in api_params if api_params[p].kind is inspect.Parameter.KEYWORD_ONLY] == [
        "include_dashboard",
        "raise_on_failure",
    ]
    assert list(inspect.signature(own[1]).parameters) == ["self"]
    assert list(inspect.signature(own[2]).parameters) == ["gcs_address", "node_id"]
    assert list(inspect.signature(start_ray_process).parameters)[:2] == ["command", "process_type"]
    assert f'"{ray_compat.PRESTART_FLAG}{{}}"' in inspect.getsource(services.start_raylet)
    assert "no_monitor" in inspect.signature(ray._private.parameter.RayParams).parameters
    assert "timeout" in inspect.signature(ray._raylet.InnerGcsClient.get_all_node_info).parameters
    config = ray_compat.embedded_system_config()
    fast_connect = {
        "raylet_client_connect_timeout_milliseconds": 20,
        "raylet_client_num_connect_attempts": 500,
    }
    assert (
        config == {"prestart_worker_first_driver": False, **fast_connect}
        and config is not ray_compat.embedded_system_config()
    )
    assert ray_compat.embedded_system_config(("json",)) == {
        "prestart_worker_first_driver": False,
        "enable_worker_prestart": True,
        "preload_python_modules": ["json"],
        **fast_connect,
    }

    def replaced() -> tuple[bool, ...]:
        now = (node_class.start_api_server, node_class.start_head_processes, services.get_node)
        return (
            *(a is not b for a, b in zip(now, own, strict=True)),
            services.start_ray_process is not start_ray_process,
        )

    with ray_compat.quick_embedded_start(dashboard=True):
        assert replaced() == (False, False, True, False)
    with pytest.raises(RuntimeError), ray_compat.quick_embedded_start(dashboard=False, prestart=1):
        assert replaced() == (True, True, True, True)
        raise RuntimeError("ray.init failed")
    assert replaced() == (False, False, False, False)


class _Probe:
    def where(self):
        return os.getpid(), "tabnanny" in sys.modules


def _tunes_own_class_cache(monkeypatch):
    """Tune's class cache with its own `get` for the test, as collected: the session's embedded Ray
    (ray_cluster), when a test before this one started it, has trial_actors_inherit in place until it ends."""
    monkeypatch.setattr(_class_cache._ActorClassCache, "get", _TUNES_OWN_GET)
    return _class_cache


def test_trial_actors_inherit_the_environment_when_tune_would_set_the_same_and_only_then(monkeypatch):
    """Tune's class cache makes a trial actor class with a runtime_env of variables (trial_actor_env among
    them); under trial_actors_inherit it makes one without, if the environment given holds the same values, and
    Tune's own otherwise; the undo puts Tune's function back."""
    class_cache = _tunes_own_class_cache(monkeypatch)
    tune_get = class_cache._ActorClassCache.get
    assert ray_compat.trial_actor_env() == {"PL_DISABLE_FORK": "1"}
    tunes = class_cache._ActorClassCache().get(_Probe)
    assert set(tunes._default_options["runtime_env"]) == {"env_vars"}
    assert tunes._default_options["runtime_env"]["env_vars"]["PL_DISABLE_FORK"] == "1"
    same = {**os.environ, **ray_compat.trial_actor_env()}
    undo = ray_compat.trial_actors_inherit(same)
    try:
        assert class_cache._ActorClassCache.get is not tune_get
        plain = class_cache._ActorClassCache().get(_Probe)
        assert "runtime_env" not in plain._default_options
        assert class_cache._ActorClassCache().get(_Probe) is plain  # made once
        undo()
        undo = ray_compat.trial_actors_inherit({**same, "PL_DISABLE_FORK": "0"})
        assert "runtime_env" in class_cache._ActorClassCache().get(_Probe)._default_options
    finally:
        undo()
    assert class_cache._ActorClassCache.get is tune_get


def test_a_warm_sessions_record_of_tunes_variables_lets_a_driver_with_the_same_make_plain_trial_actors(
    monkeypatch,
):
    """trial_actor_env_here: Tune's defaults and every variable Tune would propagate that this environment holds,
    exactly the env_vars Tune's class cache puts in a trial actor's runtime_env; a driver given it (joining `hpo
    up`) with the same environment makes trial actors without one (they land in warm processes)."""
    class_cache = _tunes_own_class_cache(monkeypatch)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")  # one Tune propagates
    monkeypatch.setenv("HPO_NOT_PROPAGATED", "1")
    recorded = ray_compat.trial_actor_env_here()
    assert recorded["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.25" and "HPO_NOT_PROPAGATED" not in recorded
    tunes = class_cache._ActorClassCache().get(_Probe)._default_options["runtime_env"]["env_vars"]
    assert tunes == recorded
    undo = ray_compat.trial_actors_inherit(recorded)
    try:
        assert "runtime_env" not in class_cache._ActorClassCache().get(_Probe)._default_options
    finally:
        undo()
    # what Tune's defaults alone said (the record before) leaves such a driver's trials a runtime_env
    undo = ray_compat.trial_actors_inherit(ray_compat.trial_actor_env())
    try:
        assert "runtime_env" in class_cache._ActorClassCache().get(_Probe)._default_options
    finally:
        undo()


@pytest.mark.slow
def test_an_embedded_start_without_dashboard_has_no_api_server_nor_idle_workers_and_runs_tasks():
    """A head started the way every embedded run starts it (ray_env.start_ray), without the dashboard, in a
    process of its own: no dashboard process, no dashboard URL, no autoscaler monitor, Ray's functions
    restored, no worker process when the driver is connected (Ray would have pre-started one per CPU by then, 2
    here, checked), the node listed by the call the start polls with, and a task runs. The start's time is
    printed, not asserted."""
    code = (
        "import sys, time, ray; from orchestrator.ray_support import ray_compat; from orchestrator.ray_support import ray_env\n"
        "patched = (ray._private.node.Node.start_api_server, ray._private.services.get_node)\n"
        "began = time.monotonic(); ray_env.start_ray(num_cpus=2, dashboard=False); took = time.monotonic() - began\n"
        "node = ray._private.worker._global_node; from conftest import ray_workers\n"
        "print(len(ray_workers()))\n"
        "print(ray._private.ray_constants.PROCESS_TYPE_DASHBOARD in node.all_processes, ray_compat.dashboard_url())\n"
        "print(ray_compat.MONITOR_PROCESS in node.all_processes)\n"
        "print(patched == (ray._private.node.Node.start_api_server, ray._private.services.get_node))\n"
        "listed = ray._raylet.GcsClient(address=node.gcs_address).get_all_node_info(timeout=30)  # what it polls\n"
        "print([key.hex() for key in listed] == [node.node_id])\n"
        "print(ray.get(ray.remote(lambda: 'ran').remote(), timeout=120))\n"
        "print(ray.get(ray.remote(lambda: 'tabnanny' in sys.modules).remote(), timeout=120))  # not warm\n"
        "ray_compat.stop_autoscaler_monitor(); ray.shutdown(); print(f'the start took {took:.2f} s')\n"
    )
    print(_printed_by(code, ["0", "False None", "False", "True", "True", "ran", "False"]))


@pytest.mark.slow
def test_an_embedded_rays_python_workers_are_forked_from_its_fork_server_with_their_own_settings():
    """Live: in a process of its own, an embedded start as every run makes it (ray_env.start_ray) puts the fork
    server's launcher in the raylet's worker command (node_start's rewrite of `--python_worker_command`, which
    the raylet then runs), and Ray's workers come from the server: a task's process is the server's child, has
    torch imported before its first task, reads its own job id and token (Ray's settings are its own, so it
    reaches the GCS at all), and its variables and directory are those the raylet gave it; a task with a
    runtime_env of variables is forked too, with them set as Ray's setup_worker.py sets them (`${HOME}`
    expanded); one with another interpreter is started as Ray starts it (by the raylet, not the server). A
    killed actor's process ends. With the server killed, a new worker starts as Ray starts it (the launcher
    finds the server gone and execs the worker). After the shutdown the server is gone with its directory; with
    HPO_FORKSERVER=0 nothing is forked. The first task's wait is printed, not asserted."""
    code = (
        "import os, sys, time, ray, psutil; from conftest import wait_for\n"
        "from orchestrator.ray_support import ray_env, ray_compat\n"
        "began = time.monotonic(); started = ray_env.start_ray(num_cpus=2, dashboard=False)\n"
        "server = int(os.environ['HPO_FORKSERVER_PID']); directory = os.path.dirname(os.environ['HPO_FORKSERVER_SOCKET'])\n"
        "def where():\n"
        "    return os.getppid(), 'torch' in sys.modules, os.environ.get('X'), os.getcwd(), ray.get_runtime_context().get_job_id()\n"
        "task = ray.remote(where)\n"
        "ppid, torch, x, cwd, job = ray.get(task.remote(), timeout=120); took = time.monotonic() - began\n"
        "print(ppid == server, torch, x, cwd == os.getcwd(), job == ray.get_runtime_context().get_job_id())\n"
        "ppid, torch, x, _, _ = ray.get(task.options(runtime_env={'env_vars': {'X': '${HOME}/x'}}).remote(), timeout=120)\n"
        "print(ppid == server, torch, x == os.path.expanduser('~/x'))\n"
        "ppid, torch, x, _, _ = ray.get(task.options(runtime_env={'py_executable': sys.executable + ' -B'}).remote(), timeout=120)\n"
        "print(ppid != server, torch)\n"
        "actor = ray.remote(type('Pid', (), {'pid': lambda self: os.getpid()})).remote()\n"
        "pid = ray.get(actor.pid.remote(), timeout=120); ray.kill(actor)\n"
        "from orchestrator.ray_support.processes import process_alive\n"
        "print(psutil.Process(pid).ppid() == server if process_alive(pid) else True, wait_for(lambda: not process_alive(pid), 'the killed actor to end', 60))\n"
        "os.kill(server, 9); wait_for(lambda: not process_alive(server), 'the killed server to end', 30)\n"
        "raylet = ray._private.worker._global_node.all_processes['raylet'][0].process.pid\n"
        "ppid, torch, x, _, _ = ray.get(task.options(runtime_env={'env_vars': {'X': 'after'}}).remote(), timeout=120)\n"
        "print(ppid == raylet, torch, x)  # a new worker without its server: started as Ray starts it\n"
        "ray_compat.stop_autoscaler_monitor(); ray.shutdown(); started.undo()\n"
        "print(process_alive(server), os.path.exists(directory))\n"
        "os.environ['HPO_FORKSERVER'] = '0'; started = ray_env.start_ray(num_cpus=1, dashboard=False)\n"
        "raylet = ray._private.worker._global_node.all_processes['raylet'][0].process.pid\n"
        "print('HPO_FORKSERVER_PID' in os.environ, ray.get(task.remote(), timeout=120)[0] == raylet)\n"
        "ray_compat.stop_autoscaler_monitor(); ray.shutdown(); started.undo()\n"
        "print(f'the start and the first task took {took:.2f} s')\n"
    )
    expected = ["True True None True True", "True True True", "True False", "True True", "True False after"]
    expected.append("False False")
    print(_printed_by(code, [*expected, "False True"]))


@pytest.mark.slow
def test_an_embedded_start_with_warm_trials_prestarts_them_and_a_tune_trial_actor_lands_in_one():
    """In a process of its own, through a DriverSession as a run starts it: for 1 trial at a time on 2 CPUs,
    exactly 1 worker process is started ahead (Ray's own count would be 2); an actor class made by Tune's class
    cache runs in that very process, where the warm module was imported before any task (a worker of an
    embedded start without it has not: the test above); and when the session ends, Tune's class cache and the
    environment are as they were. The time is printed, not asserted."""
    code = (
        "import os, sys, ray; from conftest import wait_for\n"
        "from ray.tune.execution import class_cache\n"
        "from orchestrator.ray_support.driver import DriverSession; from orchestrator.ray_support.ray_env import WarmTrials\n"
        "from conftest import ray_workers as workers; from test_ray_compat import _Probe\n"
        "tune_get, environ = class_cache._ActorClassCache.get, dict(os.environ)\n"
        "import time; began = time.monotonic()\n"
        "with DriverSession() as session:\n"
        "    session.start_ray(num_cpus=2, dashboard=False, warm=WarmTrials('tabnanny', 1.0, 1))\n"
        "    wait_for(lambda: len(workers()) == 1, 'the prestarted worker', 60)\n"
        "    prestarted = workers()[0]\n"
        "    probe = class_cache._ActorClassCache().get(_Probe).remote()\n"
        "    print(ray.get(probe.where.remote(), timeout=120) == (prestarted.pid, True), len(workers()))\n"
        "    took = time.monotonic() - began\n"
        "print(class_cache._ActorClassCache.get is tune_get, dict(os.environ) == environ, ray.is_initialized())\n"
        "print(f'the start and the first actor took {took:.2f} s')\n"
    )
    print(_printed_by(code, ["True 1", "True True False"]))


@pytest.mark.slow
def test_a_warm_session_starts_trial_processes_again_after_its_first_ones_are_used():
    """In a process of its own: a warm session (ray_support/warm.py) starts one trial process per core ahead,
    with its module imported; Tune-made actors land in them and, killed, take them along; then
    ray_compat.prestart_workers (the raylet's PrestartWorkers RPC, which WarmSession.top_up calls after each
    run) starts a new one, which the next actor lands in, the module imported. Only Ray's own count of workers
    is read: if the pinned Ray ignored the RPC, no worker would appear (and the actor would start a cold one).
    After the session nothing is left: no Ray, no child process, the environment and Tune's class cache as
    they were. A second session inside the first is refused in one line."""
    code = (
        "import os, ray, psutil; from conftest import wait_for\n"
        "from ray.tune.execution import class_cache\n"
        "from orchestrator.errors import RunError\n"
        "from orchestrator.ray_support import ray_compat; from orchestrator.ray_support.warm import WarmSession\n"
        "from conftest import ray_workers as workers; from test_ray_compat import _Probe; from test_warm_session import _title\n"
        "tune_get, environ = class_cache._ActorClassCache.get, dict(os.environ)\n"
        "with WarmSession('tabnanny', num_cpus=2) as session:\n"
        "    ahead = wait_for(lambda: len(workers()) == os.cpu_count() and workers(), 'the prestarted workers', 60)\n"
        "    probes = [class_cache._ActorClassCache().get(_Probe).remote() for _ in ahead]\n"
        "    where = ray.get([p.where.remote() for p in probes], timeout=120)\n"
        "    print(sorted(where) == sorted((w.pid, True) for w in ahead))\n"
        "    for p in probes: ray.kill(p)\n"
        "    wait_for(lambda: not workers(), 'the used workers to end', 60)\n"
        "    ray_compat.prestart_workers(1, 60)\n"
        "    again = wait_for(workers, 'a worker started by the RPC', 60)\n"
        "    wait_for(lambda: _title(again[0]) == 'ray::IDLE', 'the new worker to register (idle)', 60)\n"
        "    probe = class_cache._ActorClassCache().get(_Probe).remote()\n"
        "    print(ray.get(probe.where.remote(), timeout=120) == (again[0].pid, True), len(workers()))\n"
        "    try:\n"
        "        with WarmSession('tabnanny'): pass\n"
        "    except RunError as error: print(str(error).count(chr(10)), 'open in this process already' in str(error))\n"
        "gone = lambda: not psutil.Process().children(recursive=True)\n"
        "print(ray.is_initialized(), wait_for(gone, 'no process of the session left', 30))\n"
        "print(class_cache._ActorClassCache.get is tune_get, dict(os.environ) == environ)\n"
    )
    assert _printed_by(code, ["True", "True 1", "0 True", "False True"]) == "True True"


def _printed_by(code: str, expected: list[str], lines: int = 0):
    """Run `code` in a Python process of its own (a Ray started there is this test's alone); its first lines of
    output must be `expected`, and the line after them (a figure to print, not assert) is returned, or with
    `lines`, that many lines after them."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=ROOT, env=env
    )
    out = proc.stdout.splitlines()
    assert proc.returncode == 0 and out[: len(expected)] == expected, proc.stdout + proc.stderr[-2000:]
    return out[len(expected) : len(expected) + lines] if lines else out[len(expected)]


def test_one_line_errors_keep_what_failed_and_drop_rays_frames():
    import logging

    logger = logging.getLogger("hpo-test-one-line")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    logger.addFilter(ray_compat.OneLineErrors())
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        logger.error(
            "Saving experiment state to storage at '%s' failed with exception: ", "/x", exc_info=True
        )
    (record,) = records
    assert record.exc_info is None
    assert record.getMessage() == (
        "Saving experiment state to storage at '/x' failed with exception: OSError: [Errno 28] No space left on "
        "device"
    )


def test_patched_puts_every_original_back_however_the_block_ends():
    """ray_compat.patched (ray_compat.patch_key, ray_compat.counted): the originals back however the block ends,
    an inherited attribute removed again (not copied onto the subclass), every call into a replaced function
    counted in ray_compat.CALLS; ray_compat.until_undone holds a block open until undone."""

    class Owner:
        a, b = 1, 2

        def where(self):
            return "own"

    class Heir(Owner):
        pass

    with pytest.raises(RuntimeError), ray_compat.patched(Owner, a=10, b=20):
        assert (Owner.a, Owner.b) == (10, 20)
        raise RuntimeError("the block fails")
    assert (Owner.a, Owner.b) == (1, 2)
    with ray_compat.patched(Owner):  # nothing to patch: nothing changes
        assert (Owner.a, Owner.b) == (1, 2)
    key = ray_compat.patch_key(Heir, "where")
    assert key.endswith("Heir.where") and ray_compat.patch_key(ray_compat, "x") == f"{ray_compat.__name__}.x"
    before = ray_compat.CALLS[key]
    with ray_compat.patched(Heir, where=lambda self: "patched"):
        assert Heir().where() == "patched" and Heir().where() == "patched" and Owner().where() == "own"
    assert ray_compat.CALLS[key] == before + 2
    assert "where" not in vars(Heir) and Heir().where() == "own"
    assert ray_compat.counted("k", len).__name__ == "len"
    undo = ray_compat.until_undone(ray_compat.patched(Heir, b=4))
    assert (Owner.b, Heir.b) == (2, 4)
    undo()
    assert (Heir.b, "b" in vars(Heir)) == (2, False)


def test_rays_error_text_is_read_here_and_says_what_hpo_needs():
    """ray_compat.raised_in, ray_compat.message_of, ray_compat.group_failure_line (ray_compat.WORKER_DIED_TEXT),
    ray_compat.jobs_api_error and ray_compat.no_jobs_agent on the errors Ray 2.60 makes; ray_compat.RAY_TEXTS
    lists ray_compat.JOBS_AUTH_REQUIRED, ray_compat.JOBS_AUTH_REFUSED, ray_compat.JOBS_NOT_FOUND,
    ray_compat.JOBS_SERVER_ERROR (ray_compat.JOBS_REQUEST_FAILED) and ray_compat.JOBS_NO_AGENT's texts (tests/test_fence.py reads it)."""
    from ray.exceptions import RayTaskError
    from ray.train.v2.api.exceptions import WorkerGroupError

    from orchestrator.train.exceptions import FinalTrialError, ReportError

    text = "Traceback ...\norchestrator.train.exceptions.ReportError: trial_0001: 'loss' is not a number"
    assert ray_compat.raised_in(text, ReportError) == "trial_0001: 'loss' is not a number"
    assert ray_compat.raised_in("ValueError: x", ReportError) is None
    ray_text = "Traceback (most recent call last):\norchestrator.train.exceptions.FinalTrialError: bad config, at train.py:3"
    final = RayTaskError("trainable", ray_text, FinalTrialError("bad config, at train.py:3"))
    assert ray_compat.message_of(final, FinalTrialError) == "bad config, at train.py:3"
    assert ray_compat.message_of(RayTaskError("t", "Traceback ...", ValueError("v")), FinalTrialError) is None

    def raised(exc):
        try:
            raise exc
        except Exception as caught:
            return caught

    bug = raised(ValueError("a bug"))
    line = ray_compat.group_failure_line(WorkerGroupError("r", {1: bug, 0: bug}))
    assert line.startswith("the worker group failed: rank 0 raised ValueError: a bug, at ") and line.endswith(
        "test_ray_compat.py:" + line.rsplit(":", 1)[1]
    ), line  # where, in the user's code (this test's file)
    died = raised(RuntimeError(f"The {ray_compat.WORKER_DIED_TEXT}. Worker exit type: SYSTEM_ERROR"))
    assert ray_compat.group_failure_line(WorkerGroupError("r", {0: bug, 1: died})) == (
        "the worker group failed: rank 1's process died (SYSTEM_ERROR)"
    )
    assert ray_compat.group_failure_line(RuntimeError("boom")) == "the worker group failed: boom"

    def said(message, **kwargs):
        return ray_compat.jobs_api_error(RuntimeError(message), **kwargs)

    assert said("Request failed with status code 401: Authentication required")[0] == "auth-required"
    assert said("Request failed with status code 403: Authentication failed")[0] == "auth-refused"
    assert said("Job raysubmit_x does not exist", about_a_job=True)[0] == "not-found"
    assert said("Job raysubmit_x does not exist")[0] == "other"
    assert said("Request failed with status code 500: it broke.\nTraceback") == ("server-error", "it broke")
    assert said("Connection refused") == ("other", "Connection refused")
    assert ray_compat.no_jobs_agent(RuntimeError(f"... {ray_compat.JOBS_NO_AGENT} ..."))
    assert not ray_compat.no_jobs_agent(RuntimeError("Connection refused"))
    assert ray_compat.JOBS_SERVER_ERROR.startswith("Request failed") and ray_compat.JOBS_NOT_FOUND
    for texts in (ray_compat.JOBS_AUTH_REQUIRED, ray_compat.JOBS_AUTH_REFUSED, ray_compat.NODE_DEATH_TEXTS):
        assert set(texts) <= set(ray_compat.RAY_TEXTS)
    assert ray_compat.JOBS_NO_AGENT in ray_compat.RAY_TEXTS


# Every function hpo patches into Ray (ray_compat.patched counts each call Ray makes into one) and the scheduler
# method its subclass overrides: a run of `hpo` as a user starts it must have Ray call every one of them.
PATCHED_BY_A_RUN = (
    "Node.start_api_server",  # quick_embedded_start, without the dashboard
    "Node.start_head_processes",  # ... the same
    "ray._private.services.get_node",  # ... always
    "ray._private.services.start_ray_process",  # ... the fork server's launcher (and warm trial processes)
    "WorkerStandardStreamDispatcher.emit",  # quiet_worker_stops (the dispatcher's own attribute)
    "_ActorClassCache.get",  # trial_actors_inherit
    "TuneController._get_trial_checkpoints",  # lean_experiment_state
    "StorageContext.__init__",  # staging_of_its_own
    "ray.air._internal.usage.tag_callbacks",  # callbacks_untagged
    "Trial.handle_error",  # no_retry_on and lost_nodes_not_counted: two layers, each counted
    "Trial.should_recover",  # no_retry_on
    "TrialScheduler.choose_trial_to_run",  # choose_only_when_a_trial_waits (a subclass, counted the same)
    # ray_compat.silent_trials_ended_at_once: called at every run's end; what it does once a stop's grace is over
    # (a held trial killed at once, not after Tune's 10 s), test_warm_session.py's Ctrl-C of a held run shows
    "TuneController._cleanup_trials",
)


@pytest.mark.slow
def test_ray_calls_every_patch_in_a_real_run(tmp_path):
    """Live, not a stub: `orchestrator.run` of a 3-trial job (its first trial fails once and is retried) in a
    process of its own, as `hpo run` starts it (an embedded Ray, no dashboard, warm trial processes). Afterwards
    ray_compat.CALLS must count a call into every patch of PATCHED_BY_A_RUN: a pinned Ray that stopped calling one
    fails here, naming it. And each is Ray's own again."""
    spec = spec_file(
        tmp_path / "job.yaml",
        spec_dict(
            name="patches",
            workload="tests.workloads_for_tests:fails_once_loudly",
            storage=str(tmp_path / "results"),
            search={
                "metric": "loss",
                "mode": "min",
                "space": {"x": {"uniform": [0.0, 1.0]}},
                "num_samples": 3,
                "max_concurrent": 1,
                "fixed": {"fail_marker": str(tmp_path / "failed-once")},
            },
            scheduler={"type": "fifo"},
            train={"max_epochs": 3, "max_retries": 1},
        ),
    )
    code = (
        "import json, sys, ray; import orchestrator; from orchestrator.spec import load_spec\n"
        "from orchestrator.ray_support import ray_compat\n"
        "from ray.tune.experiment import Trial\n"
        "own = (ray._private.node.Node.start_api_server, Trial.handle_error, Trial.should_recover)\n"
        f"summary = orchestrator.run(load_spec({str(spec)!r}), progress=lambda line: None)\n"
        "print(summary.status, summary.statuses)\n"
        "print(own == (ray._private.node.Node.start_api_server, Trial.handle_error, Trial.should_recover))\n"
        "print(json.dumps(dict(ray_compat.CALLS)))\n"
    )
    status, restored, counts = _printed_by(code, [], lines=3)
    assert status == "finished {'completed': 3}" and restored == "True", (status, restored)
    calls = json.loads(counts)
    never = [key for key in PATCHED_BY_A_RUN if not calls.get(key)]
    assert not never, f"Ray {ray.__version__} no longer calls these patches: {never} (counted: {calls})"
    assert calls["Trial.handle_error"] % 2 == 0, calls  # the one failure went through both layers


NODE_PRINTING_CALLS = (
    "import json, sys\n"
    "from orchestrator.ray_support.node import start_node\n"
    "from orchestrator.ray_support.ray_compat import CALLS\n"
    "code = start_node(sys.argv[1:])\n"
    "print('node-calls:', json.dumps(dict(CALLS)), flush=True)\n"
)

ON_THE_NODE = (  # a job (with the working_dir given, if one is) whose one task says where it ran
    "import json, os, sys, ray, psutil\n"
    "ray.init(address=sys.argv[1], runtime_env={'working_dir': sys.argv[2]} if sys.argv[2:] else None)\n"
    "def where():\n"
    "    parent = psutil.Process(os.getppid()).cmdline()\n"
    "    return parent[1:3], 'torch' in sys.modules, os.path.exists('marker.txt')\n"
    "print(json.dumps(ray.get(ray.remote(where).remote(), timeout=120)))\n"
)


@pytest.mark.slow
def test_hpo_node_forks_its_workers_with_a_jobs_working_dir_and_its_server_ends_with_its_raylet(tmp_path):
    """Live: a head started as `hpo node --head --block` starts it (ray_support/node.py: Ray's own `ray start` in
    that process, inside ray_compat.forked_node_start). A driver's task runs in a process forked by the node's
    fork server (its parent is forkserver_zygote.py), torch already imported; a task with a working_dir (what
    `hpo submit` gives a job: Ray's `cd DIR &&` prefix and PYTHONPATH) is forked too and runs in that
    directory; one whose working_dir holds its own copy of a library the server imported (here hpo's
    `orchestrator`) starts as Ray starts it. Ray called both patches in the node's process (its CALLS). The head
    takes its token and refuses another (ray_compat.token_refused). When the node stops, its server ends by itself
    and removes its directory."""
    import conftest
    import psutil
    from rayhead import RayHead

    from orchestrator.ray_support import forkserver
    from orchestrator.ray_support.processes import process_alive

    job, own_copy = tmp_path / "job", tmp_path / "own-copy"
    for folder in (job, own_copy):
        folder.mkdir()
        (folder / "marker.txt").write_text("here")
    (own_copy / "orchestrator").mkdir()
    (own_copy / "orchestrator" / "__init__.py").write_text("")
    head = RayHead(tmp_path / "ray", command=(sys.executable, "-c", NODE_PRINTING_CALLS))
    env = dict(os.environ, RAY_AUTH_TOKEN=head.token, RAY_AUTH_MODE="token")
    env.pop("RAY_ADDRESS", None)
    zygote = str(forkserver.ZYGOTE)
    head.start()
    address = f"127.0.0.1:{head.gcs_port}"

    def where(*working_dir: Path) -> list:
        proc = subprocess.run(
            [sys.executable, "-c", ON_THE_NODE, address, *map(str, working_dir)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.splitlines()[-1])

    try:
        plain, in_job, shadowed = where(), where(job), where(own_copy)
        assert plain[0][0] == zygote and plain[1:] == [True, False], plain
        assert in_job[0][0] == zygote and in_job[1:] == [True, True], in_job
        assert shadowed[0][0] != zygote and shadowed[1:] == [False, True], shadowed
        # ray_compat.token_refused, what `hpo run --address` asks before ray.init: the head's token is taken,
        # another refused (in one request; ray.init would retry it for 20 s)
        ask = (
            "import sys; from orchestrator.ray_support import ray_compat; "
            "print(ray_compat.token_refused(sys.argv[1]))"
        )
        said = [
            subprocess.run(
                [sys.executable, "-c", ask, address],
                capture_output=True,
                text=True,
                timeout=120,
                env={**env, "RAY_AUTH_TOKEN": token},
            ).stdout.strip()
            for token in (head.token, "wrong-token")
        ]
        assert said == ["False", "True"], said
        server = next(
            p.pid for p in psutil.Process(head.proc.pid).children() if conftest.command_of(p)[1:2] == [zygote]
        )
        os.killpg(head.proc.pid, signal.SIGINT)  # as Ctrl-C stops `ray start --block`: its processes, then it
        head.proc.wait(timeout=60)
        wait_for(lambda: not process_alive(server), "the node's fork server to end with its raylet", 30)
        assert not os.path.exists(os.path.dirname(plain[0][1]))  # removed by the server itself
    finally:
        head.stop()
    calls = json.loads(
        next(
            line.split(" ", 1)[1]
            for line in (tmp_path / "ray-head.log").read_text().splitlines()
            if line.startswith("node-calls: ")
        )
    )
    assert calls.get("ray._private.services.start_ray_process") and calls.get(
        "ray._private.services.get_node"
    ), calls
