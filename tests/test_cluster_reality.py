"""What a cluster can never give is refused before the search; what trials hold is on a ledger; a budget stops
the search. The pure parts here run in the fast tier; a run on the embedded Ray and the real-CLI refusal are
slow. The fake autoscaler's node types, custom resources and a cost budget: test_autoscaling.py."""

from __future__ import annotations

import os

import pytest
import yaml
from conftest import hpo, run_hpo, spec_dict

from orchestrator.budget.capacity import NodeShape, Offer, check_fit
from orchestrator.budget.ledger import Ledger
from orchestrator.errors import RunError
from orchestrator.ray_support.ray_env import WarmTrials, embedded_cpus
from orchestrator.search.distributions import Uniform
from orchestrator.search.space import Space
from orchestrator.spec import SpecError, parse_spec
from orchestrator.tuning.fast_forward import VariantGenerator

EMBEDDED = Offer((NodeShape("node 127.0.0.1", {"CPU": 3.0}),), embedded=True, note="this machine's Ray")
CLUSTER = Offer(
    (NodeShape("node 10.0.0.1", {"CPU": 2.0}),),
    (
        NodeShape("gpu-a10g", {"CPU": 8, "GPU": 1, "accelerator_type:A10G": 1}, 4),
        NodeShape("gpu-a100x4", {"CPU": 32, "GPU": 4, "accelerator_type:A100": 1}, 2),
    ),
    autoscaler=True,
)


def _refused(bundle, workers, offer) -> str:
    with pytest.raises(RunError) as refused:
        check_fit(bundle, workers, 0.01, offer)
    return str(refused.value)


def test_a_trial_the_embedded_ray_can_never_hold_is_refused_naming_both_numbers():
    assert "but this machine's Ray has 3" in _refused({"CPU": 64}, 2, EMBEDDED)
    message = _refused({"CPU": 2}, 2, EMBEDDED)
    assert "one trial needs 4 CPUs" in message and "has 3" in message and "train.cpus_per_worker" in message
    assert "train.use_gpu is true" in _refused({"CPU": 1, "GPU": 1}, 1, EMBEDDED)
    assert check_fit({"CPU": 1}, 2, 0.01, EMBEDDED) == 1  # 2 workers of 1 CPU: one trial at a time on 3
    assert check_fit({"CPU": 0.5}, 2, 0.01, EMBEDDED) == 3


def test_a_trial_no_node_type_can_hold_is_refused_naming_what_the_cluster_offers():
    message = _refused({"CPU": 1, "GPU": 8}, 1, CLUSTER)
    assert "8 GPU(s) per worker" in message and "gpu-a100x4, has 4" in message, message
    message = _refused({"CPU": 1, "nobody-has-this": 1}, 1, CLUSTER)
    assert "train.resources_per_worker.nobody-has-this" in message and "gpu-a10g" in message, message
    message = _refused({"CPU": 1, "GPU": 1, "accelerator_type:H100": 0.001}, 1, CLUSTER)
    assert "H100" in message and "the cluster offers A100, A10G" in message, message
    assert "hold 12" in _refused({"CPU": 1, "GPU": 1}, 13, CLUSTER)  # 4 x 1 + 2 x 4 GPUs
    # 4 gpu-a10g x 1 worker + 2 gpu-a100x4 x 4 workers (32 CPUs / 8, 4 GPUs / 1) = 12 workers: 6 trials of 2
    assert check_fit({"CPU": 8, "GPU": 1}, 2, 0.01, CLUSTER) == 6
    # no autoscaler: the live nodes alone
    live_only = Offer(CLUSTER.live)
    assert "the live nodes hold 1" in _refused({"CPU": 2}, 2, live_only)
    # an autoscaler whose node types cannot be read: nothing refused (0: unknown)
    assert check_fit({"CPU": 1000}, 2, 0.01, Offer(CLUSTER.live, autoscaler=True, unknown_types=True)) == 0


def test_the_embedded_ray_follows_the_machine():
    assert embedded_cpus() == os.cpu_count() and embedded_cpus(1) == os.cpu_count() + 1


def test_an_embedded_ray_starts_as_many_trial_processes_ahead_as_will_host_a_trial_at_once():
    import importlib

    from orchestrator.launch.launcher import IN_PROCESS_TRIAL_MODULE, launcher_for

    # as many as run at once, capped by what the CPUs hold (64 cores and 1 trial at a time: 1, not 64)
    assert [WarmTrials("m", 1.0, n).workers(2) for n in (1, 2, 3)] == [1, 2, 2]
    assert WarmTrials("m", 1.0, 1).workers(64) == 1 and WarmTrials("m", 0.5, 8).workers(2) == 4
    assert WarmTrials("m", 2.0, 4).workers(3) == 1 and WarmTrials("m", 4.0, 4).workers(2) == 0
    # 1-worker CPU trials: their module, which holds what the Tune trainable runs; DDP and GPU trials: none
    warm = launcher_for(parse_spec(spec_dict(train={"cpus_per_worker": 0.5})).train).warm_trials(3)
    assert warm == WarmTrials(IN_PROCESS_TRIAL_MODULE, trial_cpus=0.5, at_once=3)
    assert hasattr(importlib.import_module(IN_PROCESS_TRIAL_MODULE), "train_in_process")
    for train in ({"workers": 2}, {"use_gpu": True}):
        assert launcher_for(parse_spec(spec_dict(train=train)).train).warm_trials(3) is None


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_ledger_charges_each_trial_its_share_of_its_node_for_the_time_it_held_it():
    clock = _Clock()
    nodes = [
        {"id": "a", "type": "gpu-a10g", "resources": {"CPU": 8, "GPU": 2}},
        {"id": "b", "type": "cpu-node", "resources": {"CPU": 4}},
    ]
    gpu = Ledger(cpus=2, gpus=1, prices={"gpu-a10g": 2.0, "cpu-node": 0.4}, nodes=lambda: nodes, clock=clock)
    gpu.started("t0")
    gpu.ran_on("t0", "a")
    clock.now = 1800.0  # half an hour
    assert gpu.entry("t0") == {
        "node_type": "gpu-a10g",
        "wall_s": 1800,
        "cpu_s": 3600,
        "gpu_s": 1800,
        "gpu_util": None,  # no report measured its GPU (train/gpu_meter.py)
        "gpu_mem_peak_gb": None,
        "cost": 0.5,
    }
    gpu.ended("t0")  # a retry: the next attempt adds to the same trial
    clock.now = 2000.0
    gpu.started("t0")
    clock.now = 3800.0
    assert gpu.entry("t0")["wall_s"] == 3600 and gpu.totals()["gpu_hours"] == 1.0  # running time counts
    assert gpu.totals()["cost"] == pytest.approx(1.0) and gpu.totals()["cost_by_node_type"] == {
        "gpu-a10g": 1.0
    }
    cpu = Ledger(
        cpus=1, gpus=0, limits={"cost": 0.2}, prices={"cpu-node": 0.4}, nodes=lambda: nodes, clock=clock
    )
    clock.now = 0.0
    cpu.started("t1")
    cpu.ran_on("t1", "b")
    clock.now = 3600.0
    assert cpu.entry("t1")["cost"] == pytest.approx(0.1)  # 1 of the node's 4 CPUs for an hour at 0.4
    assert cpu.check() is None
    clock.now = 7200.0
    assert cpu.check() == "cost 0.2 of 0.2" and cpu.exhausted and cpu.check() is None  # said once
    # what a resumed run's records say was spent counts from the start
    resumed = Ledger(cpus=1, gpus=0, limits={"cpu_hours": 2}, nodes=lambda: nodes, clock=clock)
    resumed.preload(
        [{"trial_id": "t1", "node_type": "cpu-node", "wall_s": 7200.0, "cpu_s": 7200.0, "gpu_s": 0.0}]
    )
    assert resumed.totals()["cpu_hours"] == 2 and resumed.check() == "cpu_hours 2 of 2"
    # a node the ledger has never heard of is charged as local (and an unpriced type costs 0, said at the end)
    other = Ledger(cpus=1, gpus=0, prices={"gpu-a10g": 1.0}, nodes=lambda: [], clock=clock)
    other.started("t9")
    other.ran_on("t9", "zz")
    assert (
        other.entry("t9")["node_type"] == "local"
        and other.entry("t9")["cost"] == 0
        and other.unpriced == {"local"}
    )


def test_budget_and_resources_in_the_spec_are_checked_in_one_line():
    base = spec_dict()
    for budget, expected in [
        ({"cost": 5}, "budget: cost needs prices"),
        ({"stop_running": True}, "budget: stop_running needs a limit"),
        ({"gpu_hours": -1}, "budget.gpu_hours"),
        ({"cost": 5, "prices": {"local": -1}}, "budget.prices.local"),
        ({"dollars": 5}, "budget: unknown key 'dollars'"),
    ]:
        with pytest.raises(SpecError, match=expected.replace(".", r"\.")):
            parse_spec({**base, "budget": budget})
    for train, expected in [
        ({"resources_per_worker": {"CPU": 2}}, "give it with train.cpus_per_worker"),
        ({"resources_per_worker": {"GPU": 2}}, "give it with train.gpus_per_worker"),
        ({"resources_per_worker": {"bad name!": 1}}, "is not a Ray resource name"),
        ({"accelerator_type": "A100"}, "accelerator_type: A100 needs use_gpu: true"),
    ]:
        with pytest.raises(SpecError, match=expected):
            parse_spec({**base, "train": train})
    spec = parse_spec({**base, "budget": {"cost": 5, "prices": {"local": 0.5}, "stop_running": True}})
    assert spec.budget.limits() == {"cost": 5} and spec.budget.prices == {"local": 0.5}


def test_a_spent_budget_closes_the_search():
    spent = {"now": False}
    gen = VariantGenerator(Space({"x": Uniform(uniform=[0.0, 1.0])}), max_concurrent=2, random_state=0)
    gen.closed = lambda: spent["now"]
    assert not gen.is_finished()
    spent["now"] = True
    assert gen.is_finished() and gen.next_trial() is None


@pytest.mark.slow
def test_a_trial_this_machine_cannot_hold_is_refused_before_anything_is_written(
    tmp_path, ray_cluster, capsys
):
    storage = tmp_path / "store"
    path = tmp_path / "big.yaml"
    path.write_text(
        yaml.safe_dump(spec_dict(train={"workers": 2, "cpus_per_worker": 64}, storage=str(storage)))
    )
    code, out, err = hpo(capsys, "run", str(path))
    assert code == 2 and "train.cpus_per_worker is 64" in err and "has 4 CPUs" in err, (
        err
    )  # the session's Ray
    assert "Traceback" not in err and "results_uri" not in out and not storage.exists()


@pytest.mark.slow
def test_the_real_cli_on_a_fresh_embedded_ray_refuses_what_the_machine_cannot_hold(tmp_path):
    """The issue's case: 2 workers x 64 CPUs on this machine. The embedded Ray follows the machine (its cores + 1
    for Ray Train), so the trial is refused with both numbers instead of running 128 torch threads on 2 cores."""
    path = tmp_path / "big.yaml"
    storage = tmp_path / "store"
    path.write_text(
        yaml.safe_dump(spec_dict(train={"workers": 2, "cpus_per_worker": 64}, storage=str(storage)))
    )
    proc = run_hpo("run", str(path), timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"this machine's Ray has {os.cpu_count() + 1} CPUs" in proc.stderr, proc.stderr[-2000:]
    assert "train.cpus_per_worker is 64" in proc.stderr and "Traceback" not in proc.stderr
    assert not storage.exists()


def test_custom_resources_and_the_accelerator_type_reach_ray_trains_scaling_config():
    import dataclasses

    from conftest import trial_plan

    from orchestrator.launch.launcher import launcher_for
    from orchestrator.launch.torch_trainer import ddp_trainer

    plan = dataclasses.replace(
        trial_plan(workers=2, use_gpu=True),
        resources_per_worker={"node-a100": 1.0},
        gpus_per_worker=2.0,
        accelerator_type="A100",
    )
    scaling = ddp_trainer(lambda config: None, {}, plan, run_name="t").scaling_config
    assert scaling.num_workers == 2 and scaling.use_gpu and scaling.accelerator_type == "A100"
    assert scaling.resources_per_worker == {"CPU": 1.0, "node-a100": 1.0, "GPU": 2.0}
    spec = parse_spec(
        spec_dict(
            train={"use_gpu": True, "resources_per_worker": {"node-a100": 1}, "accelerator_type": "A100"}
        )
    )
    bundle = launcher_for(spec.train).worker_bundle()  # what the capacity check asks of one node, per worker
    assert bundle == {"CPU": 1.0, "node-a100": 1, "GPU": 1.0, "accelerator_type:A100": 0.001}
    assert launcher_for(spec.train).trial_resources() == bundle  # a 1-worker trial asks Tune for all of it


def test_a_spent_budget_stops_running_trials_at_their_report_only_with_stop_running():
    from types import SimpleNamespace

    from orchestrator.stopping import StopRequest
    from orchestrator.tracking.tracker import RunStopper

    for stop_running in (False, True):
        clock = _Clock()
        ledger = Ledger(cpus=1, gpus=0, limits={"cpu_hours": 1}, nodes=lambda: [], clock=clock)
        ledger.started("t0")
        tracker = SimpleNamespace(ledger=ledger, stop_running=stop_running, stop=StopRequest(), max_epochs=9)
        tracker._check_budget = ledger.check
        stopper = RunStopper(tracker)
        assert not stopper("t0", {}) and not stopper.stop_all()
        clock.now = 3600.0
        assert stopper("t0", {}) is stop_running and not stopper.stop_all()


def test_the_budget_gate_and_stopper_pickle_without_the_drivers_state():
    """Tune pickles the search algorithm and the stopper with its config (tuner.pkl): neither may drag the
    driver's tracker (locks, callbacks, every record) along."""
    import pickle
    import threading

    from orchestrator.stopping import StopRequest
    from orchestrator.tracking.tracker import RunStopper, SearchGate

    ledger = Ledger(cpus=1, gpus=0, limits={"cpu_hours": 1}, nodes=lambda: [])
    ledger.lock = threading.Lock()  # what a driver's state holds
    ledger.exhausted = "cpu_hours 1 of 1"
    stop = StopRequest()
    stop.request("interrupted", grace_s=5)
    gate, stopper = SearchGate(ledger, stop), RunStopper(ledger)
    assert gate() and not pickle.loads(pickle.dumps(gate))()
    assert not pickle.loads(pickle.dumps(stopper))("t0", {})
    assert not pickle.loads(pickle.dumps(stop))  # a live request stays in the driver
