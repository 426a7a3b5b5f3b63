"""A 2-worker DDP trial whose workers run on two different nodes of a multi-node local cluster.

`ray.cluster_utils.Cluster` starts a head and two worker nodes, 1 CPU each, in a subprocess (its Ray must not
mix with the embedded Ray of the other tests). The trial's driver takes a sliver of one node's CPU, so the two
1-CPU DDP workers can only be placed on the other two nodes, one each.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, paced_spec, spec_dict
from rayhead import free_port

pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, sys
import ray
from ray.cluster_utils import Cluster
from orchestrator.api import run
from orchestrator.spec import parse_spec

# its own dashboard port: the session's embedded Ray of the other tests may hold the default 8265
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True,
                                                         "dashboard_port": int(sys.argv[2])})
for _ in range(2):
    cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address)
nodes = [n for n in ray.nodes() if n["Alive"]]
spec = parse_spec(json.loads(sys.argv[1]))
summary = run(spec, address=cluster.address, progress=lambda line: print(line, file=sys.stderr))
print(json.dumps({"nodes": len(nodes), "summary": summary.to_json()}))
ray.shutdown()
cluster.shutdown()
"""


def _in_a_cluster(script: str, data: dict) -> tuple[dict, subprocess.CompletedProcess]:
    """Run `script` (it starts its own local cluster) on the spec `data`: (its JSON result line, the process)."""
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(data), str(free_port())],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    # the cluster's raylets write to this process's stdout too: the result is the last JSON line
    return json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("{"))), proc


def _skip_where_netns_runs(what: str) -> None:
    """One cluster of Ray nodes per suite is enough (each of these costs ~40 s here): where tests/test_netns.py
    can run, it covers `what` over a real network; these loopback variants serve machines without root or
    `ip netns`."""
    from netns import unavailable

    if not unavailable():
        pytest.skip(f"tests/test_netns.py runs {what} over a real network here")


def test_ddp_trial_spans_two_nodes(tmp_path):
    from contract import check_contract

    from orchestrator.results import RunSummary
    from orchestrator.spec import parse_spec

    # tests/test_netns.py runs 2-worker DDP trials with one rank on each of two worker nodes (it asserts the
    # placement), and test_run.py checks the results contract of DDP trials
    _skip_where_netns_runs("DDP trials across nodes")
    data = spec_dict(
        name="two-nodes",
        storage=str(tmp_path),
        search={"num_samples": 1, "max_concurrent": 1},
        train={"max_epochs": 2, "workers": 2, "cpus_per_worker": 1},
    )
    out, _ = _in_a_cluster(SCRIPT, data)
    assert out["nodes"] == 3
    summary = RunSummary(**out["summary"])
    rows, trials = check_contract(summary, parse_spec(data))
    assert rows.num_rows == 2 and trials["status"].to_pylist() == ["completed"]


KILL_SCRIPT = r"""
import json, os, sys, threading, time
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors
from orchestrator.api import run
from orchestrator.spec import parse_spec

# A test-sized verdict on a dead node (Ray 2.60's defaults, 3 s x 5 after 5 s, are for real networks).
for name, value in {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
                    "RAY_health_check_initial_delay_ms": "1000"}.items():
    os.environ[name] = value
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True,
                                                         "dashboard_port": int(sys.argv[2])})
workers = [cluster.add_node(num_cpus=2, resources={"w": 1}) for _ in range(3)]  # 2 for the ranks, 1 spare
cluster.wait_for_nodes()
ray.init(address=cluster.address)
second_epoch, facts = threading.Event(), {}

def progress(line):
    print(line, file=sys.stderr, flush=True)
    if " epoch   2/" in line:
        second_epoch.set()

def kill_a_rank_node():
    second_epoch.wait(300)
    actors = list_actors(address=cluster.address, filters=[("state", "=", "ALIVE")], limit=10_000)
    ranks = {a.node_id for a in actors if a.class_name == "RayTrainWorker"}
    # the driver's side of the trial must survive: the pool, the group's host and controller, the Tune trial
    keep = {"_PoolCoordinatorActor", "GroupHost", "TrainController", "ImplicitFunc"}
    ours = {a.node_id for a in actors if a.class_name in keep}
    victims = [n for n in workers if n.node_id in ranks - ours]
    if not victims:
        print("no rank node to kill: " + repr([(a.class_name, a.node_id[:8]) for a in actors]), file=sys.stderr)
        return
    victim = victims[0]
    facts["killed"], facts["killed_at"] = victim.node_id, time.monotonic()
    cluster.remove_node(victim, allow_graceful=False)   # SIGKILL: the raylet and every process of the node
    print(f"killed node {victim.node_id[:12]}", file=sys.stderr, flush=True)

threading.Thread(target=kill_a_rank_node, daemon=True).start()
began = time.monotonic()
summary = run(parse_spec(json.loads(sys.argv[1])), address=cluster.address, progress=progress)
facts["recovered_s"] = time.monotonic() - facts.get("killed_at", began)
print(json.dumps({"summary": summary.to_json(), **facts}))
ray.shutdown()
cluster.shutdown()
"""


def test_a_ddp_trial_whose_node_is_sigkilled_continues_from_its_checkpoint_without_spending_a_retry(tmp_path):
    """Three worker nodes offer one "w" each, and each rank needs one (so no rank runs on the head, and one node is
    spare, as an autoscaler would bring one). At the trial's second epoch the node of one rank is SIGKILLed: the
    group is lost, the pool sees the node is dead (it runs no task, then the GCS says so), and the trial continues
    from its checkpoint on the survivor and the spare with train.max_retries 0: a lost node is not a failure."""
    from orchestrator.results import load_results, load_trials

    # the same fault, the same assertions, over a real network (and a cut cable besides)
    _skip_where_netns_runs("this fault")
    data = paced_spec(
        "node-killed",
        tmp_path,
        samples=1,
        concurrency=1,
        train={
            "max_epochs": 6,
            "workers": 2,
            "cpus_per_worker": 1,
            "resources_per_worker": {"w": 1},
            "max_retries": 0,
        },
    )
    out, proc = _in_a_cluster(KILL_SCRIPT, data)
    assert out.get("killed"), proc.stderr[-3000:]
    uri = out["summary"]["results_uri"]
    trials = load_trials(uri).to_pylist()
    assert [(t["status"], t["retries"], t["preemptions"]) for t in trials] == [("completed", 0, 1)], trials
    rows = load_results(uri).to_pylist()
    assert sorted(r["iteration"] for r in rows) == list(range(1, 7))  # every epoch once, none lost
    assert "lost its node (preemption 1; not counted as a retry)" in proc.stderr, proc.stderr[-3000:]
    print(
        f"node killed at epoch 2; the trial completed {out['recovered_s']:.1f} s later, 0 retries, 1 preemption"
    )
