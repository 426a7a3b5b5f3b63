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
from conftest import ROOT, spec_dict
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


def test_ddp_trial_spans_two_nodes(tmp_path):
    from contract import check_contract

    from orchestrator.results import RunSummary
    from orchestrator.spec import parse_spec

    data = spec_dict(
        name="two-nodes",
        storage=str(tmp_path),
        search={"num_samples": 1, "max_concurrent": 1},
        train={"max_epochs": 2, "workers": 2, "cpus_per_worker": 1},
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(data), str(free_port())],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["nodes"] == 3
    summary = RunSummary(**out["summary"])
    rows, trials = check_contract(summary, parse_spec(data))
    assert rows.num_rows == 2 and trials["status"].to_pylist() == ["completed"]
