"""The local autoscaling config (Ray's fake multi-node provider) and the test-only fake-GPU setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray_internals
import yaml
from conftest import HPO, ROOT, paced_spec, run_hpo, spec_dict, wait_for
from rayhead import RayHead

from orchestrator.results import load_results, load_trials, summarize
from orchestrator.train.plan import FAKE_GPU_ENV


def test_shipped_fake_config_passes_rays_schema():

    config = yaml.safe_load((ROOT / "cluster" / "local-fake.yaml").read_text())
    ray_internals.validate_cluster_config(
        config, prepare=False
    )  # prepare needs an example.yaml the wheel lacks
    gpu = config["available_node_types"]["gpu-node"]
    assert gpu["min_workers"] == 0 and gpu["resources"]["GPU"] == 1
    assert not config["available_node_types"][config["head_node_type"]]["resources"].get("GPU")


def test_fake_gpu_setting_trains_on_cpu_only_when_set(monkeypatch):
    import torch
    from conftest import trial_plan

    from orchestrator.train.trial import device_for

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setenv(FAKE_GPU_ENV, "1")
    assert device_for(trial_plan(use_gpu=True), 0) == "cpu"
    monkeypatch.delenv(FAKE_GPU_ENV)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        device_for(trial_plan(use_gpu=True), 0)


def _nodes(head) -> list[dict]:
    return head.get("/api/v0/nodes?limit=100&detail=true")["data"]["result"]["result"]


def _alive_gpu_nodes(head) -> list[str]:
    return [
        n["node_id"]
        for n in _nodes(head)
        if n["state"] == "ALIVE" and n.get("resources_total", {}).get("GPU")
    ]


def _wait_for(predicate, timeout_s: float, what: str, head):
    return wait_for(predicate, f"{what} (see {head.root.parent})", timeout_s, every_s=1)


# The shipped config's types and two more for the budget test: "cheap-node" (which only a custom resource asks for,
# priced per second) and "gpu-x4" (too small for a worker that asks for 8 GPUs). One head serves the module.
EXTRA_NODE_TYPES = {
    "cheap-node": {
        "resources": {"CPU": 1, "cheap": 1},
        "node_config": {},
        "min_workers": 0,
        "max_workers": 2,
    },
    "gpu-x4": {"resources": {"CPU": 1, "GPU": 4}, "node_config": {}, "min_workers": 0, "max_workers": 1},
}


@pytest.fixture(scope="module")
def fake_cluster(tmp_path_factory):
    head = _fake_cluster(tmp_path_factory.mktemp("fake-cluster"), EXTRA_NODE_TYPES)
    yield head
    head.stop()


@pytest.mark.slow
def test_fake_cluster_adds_gpu_nodes_runs_trials_on_them_and_removes_them(fake_cluster, tmp_path, cli):
    """The shipped local-fake.yaml (with the budget test's node types beside its gpu-node) on a real head: GPU
    workers start from zero when GPU trials wait, the trials run on them, and the nodes go after the idle
    timeout."""
    head = fake_cluster
    assert _alive_gpu_nodes(head) == []  # min_workers: 0 -> no GPU node before the job
    spec_path = tmp_path / "gpu-job.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            spec_dict(
                name="fake-gpu",
                storage=str(tmp_path / "results"),
                train={"max_epochs": 2, "use_gpu": True},
                search={"num_samples": 3, "max_concurrent": 2},
            )
        )
    )
    proc = cli(
        "submit", str(spec_path), "--address", head.url, "--follow", env={"RAY_AUTH_TOKEN": head.token}
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "SUCCEEDED" in proc.stderr
    results_uri = proc.stdout.splitlines()[0].removeprefix("results_uri: ")
    summary = summarize(results_uri)
    assert summary.num_trials == 3 and summary.statuses == {"completed": 3}, summary
    trials = load_trials(results_uri).to_pandas()
    gpu_nodes = {n["node_id"] for n in _nodes(head) if n.get("resources_total", {}).get("GPU")}
    assert set(trials["node_id"]) <= gpu_nodes and gpu_nodes, (trials["node_id"].tolist(), gpu_nodes)
    print(f"GPU nodes used: {len(gpu_nodes)}; trial retries: {trials['retries'].tolist()}")
    assert _wait_for(lambda: _alive_gpu_nodes(head) == [], 180, "the idle GPU nodes to be removed", head)


def _fake_cluster(tmp_path, node_types: dict) -> RayHead:
    """A token-auth head with Ray's fake multi-node provider and `node_types` besides the head's."""
    config = yaml.safe_load((ROOT / "cluster" / "local-fake.yaml").read_text())
    config["available_node_types"].update(node_types)
    head = RayHead(
        tmp_path / "ray",
        num_cpus=config["available_node_types"]["ray.head.default"]["resources"]["CPU"],
        extra_env={
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            FAKE_GPU_ENV: "1",
            # the fake provider knows the head by this id (its workers are ...00001, ...)
            "RAY_OVERRIDE_NODE_ID_FOR_TESTING": ray_internals.fake_head_node_id(),
            "PYTHONPATH": str(ROOT),  # the fake nodes' workers import tests.workloads_for_tests
        },
    )
    config["provider"]["gcs_address"] = f"127.0.0.1:{head.gcs_port}"
    config_path = tmp_path / "autoscaling.yaml"
    config_path.write_text(yaml.safe_dump(config))
    head.extra_args.append(f"--autoscaling-config={config_path}")
    head.start()
    return head


@pytest.mark.slow
def test_custom_resources_a_cost_budget_and_infeasible_requests_on_the_fake_autoscaler(
    fake_cluster, tmp_path
):
    """A custom resource puts every trial on the node type that offers it (launched from zero); each trial's
    ledger names that type, and a cost budget worth about 3 of the 8 trials ends the search early with status
    budget_exhausted and exit 0. Before that, trials that no live node and no node type of the autoscaler can
    hold are refused in one line naming what the cluster offers, and nothing is written."""
    head = fake_cluster
    address, env = f"127.0.0.1:{head.gcs_port}", {"RAY_AUTH_TOKEN": head.token}
    prices = {"local": 0.0, "cheap-node": 3600.0, "gpu-node": 1.0, "gpu-x4": 8.0}  # cheap-node: 1 per second

    def job(name: str, **sections):
        path = tmp_path / f"{name}.yaml"
        data = paced_spec(name, tmp_path / name, samples=8, concurrency=2, train={"max_epochs": 2})
        for key, value in sections.items():
            data[key] = {**data.get(key, {}), **value}
        path.write_text(yaml.safe_dump(data))
        return path

    for name, sections, expected in [
        (
            "nobody",
            {"train": {"resources_per_worker": {"nobody": 1}}},
            ["resources_per_worker.nobody", "cheap-node"],
        ),
        (
            "eight-gpus",
            {"train": {"use_gpu": True, "gpus_per_worker": 8}},
            ["gpu-x4, has 4"],
        ),
        (
            "no-price",
            {"budget": {"cost": 1, "prices": {"local": 0}}},
            ["no price for node type(s) cheap-node"],
        ),
    ]:
        began = time.monotonic()
        proc = run_hpo("run", str(job(name, **sections)), "--address", address, env=env, timeout=300)
        assert proc.returncode == 2, (name, proc.stderr[-3000:])
        assert all(text in proc.stderr for text in expected) and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / name).exists(), name
        print(f"{name}: refused in {time.monotonic() - began:.1f} s: {proc.stderr.strip().splitlines()[-1]}")

    spec = job("budget", train={"resources_per_worker": {"cheap": 1}}, budget={"cost": 7.0, "prices": prices})
    proc = run_hpo("run", str(spec), "--address", address, "--output", "json", env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "budget_exhausted" and summary["budget_exhausted"].startswith("cost"), summary
    assert "budget exhausted (cost" in proc.stderr
    trials = load_trials(summary["results_uri"]).to_pylist()
    ran = [t for t in trials if t["status"] != "cancelled"]
    assert 1 <= sum(t["status"] == "completed" for t in trials) and len(ran) < 8, [
        t["status"] for t in trials
    ]
    assert {t["node_type"] for t in ran} == {"cheap-node"}, [(t["trial_id"], t["node_type"]) for t in ran]
    cheap = {n["node_id"] for n in _nodes(head) if n.get("resources_total", {}).get("cheap")}
    assert {t["node_id"] for t in ran} <= cheap, ([t["node_id"] for t in ran], cheap)
    spent = sum(t["cost"] for t in trials)
    assert spent >= 7.0 and summary["ledger"]["cost"] == pytest.approx(spent, rel=1e-3), (spent, summary)
    # the running trials finished: nothing beyond what max_concurrent trials of 2 paced epochs could add
    assert spent < 7.0 + 2 * max(t["wall_s"] for t in ran) + 1, spent
    run_file = json.loads((Path(summary["results_uri"]) / "run.json").read_text())
    assert run_file["status"] == "budget_exhausted" and run_file["ledger"]["cost_by_node_type"]["cheap-node"]
    rows = load_results(summary["results_uri"]).to_pylist()
    assert (
        len({(r["trial_id"], r["iteration"]) for r in rows})
        == len(rows)
        == sum(t["iterations"] for t in trials)
    )
    shown = run_hpo("results", "show", summary["results_uri"])
    assert "ledger:" in shown.stdout and "cheap-node" in shown.stdout, shown.stdout
    print(
        f"budget: {len(ran)} of 8 trials ran ({[t['status'] for t in trials]}), spent {spent:.2f} of 7; "
        f"{shown.stdout.strip().splitlines()[-1]}"
    )

    # Preemption: a node running a trial is drained with Ray's drain API and a preemption reason (what an
    # autoscaler does for a spot reclaim). The trial leaves it at its next report and continues from its
    # checkpoint on another node, with train.max_retries 0: a lost node does not spend a retry. The trials stand
    # before their third epoch until the drain (`ray drain-node`, a CLI process that imports Ray) has landed: on
    # a saturated machine it once took longer than the rest of a paced trial (a CI run: both trials completed).
    epochs, gate = 8, tmp_path / "drained"
    spec = job(
        "drain",
        search={"num_samples": 2, "fixed": {"pace_s": 0.25, "gate_marker": str(gate), "gate_epoch": 2}},
        train={"resources_per_worker": {"cheap": 1}, "max_epochs": epochs, "max_retries": 0},
    )
    log_path = tmp_path / "drain.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen(
            [*HPO, "run", str(spec), "--address", address, "--output", "json"],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        _wait_for(lambda: f" epoch   2/{epochs}" in log_path.read_text(), 180, "a trial's second epoch", head)
        busy = [
            a["node_id"]
            for a in head.get("/api/v0/actors?limit=1000&detail=true")["data"]["result"]["result"]
            if a["state"] == "ALIVE" and a["node_id"] in _cheap_nodes(head)
        ]
        assert busy, "no trial actor on a cheap-node node"
        drained_at = time.monotonic()
        drain = subprocess.run(
            [
                str(Path(sys.executable).parent / "ray"),
                "drain-node",
                "--address",
                address,
                "--node-id",
                busy[0],
                "--reason",
                "DRAIN_NODE_REASON_PREEMPTION",
                "--reason-message",
                "spot reclaim (test)",
                "--deadline-remaining-seconds",
                "120",
            ],
            env={**os.environ, **env, "RAY_AUTH_MODE": "token"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert drain.returncode == 0, drain.stderr[-2000:]
        gate.touch()
        out, _ = driver.communicate(timeout=420)
    finally:
        if driver.poll() is None:
            driver.kill()
    err = log_path.read_text()
    assert driver.returncode == 0, err[-4000:]
    assert "lost its node (preemption 1; not counted as a retry)" in err, err[-4000:]
    moved = [line for line in err.splitlines() if "lost its node" in line]
    summary = json.loads(out.strip().splitlines()[-1])
    trials = load_trials(summary["results_uri"]).to_pylist()
    assert [t["status"] for t in trials] == ["completed", "completed"], trials
    assert sum(t["preemptions"] for t in trials) == 1 and sum(t["retries"] for t in trials) == 0, trials
    rows = load_results(summary["results_uri"]).to_pylist()
    assert sorted((r["trial_id"], r["iteration"]) for r in rows) == [
        (t, i) for t in ("trial_0000", "trial_0001") for i in range(1, epochs + 1)
    ]
    preempted = next(t for t in trials if t["preemptions"])
    assert preempted["node_id"] != busy[0]  # it finished elsewhere
    print(
        f"drain: {moved[0]}; the trial finished on another node {time.monotonic() - drained_at:.1f} s after "
        f"the drain; rows {len(rows)} = 2 trials x {epochs} epochs, each once"
    )


def _cheap_nodes(head) -> set[str]:
    return {
        n["node_id"]
        for n in _nodes(head)
        if n["state"] == "ALIVE" and n.get("resources_total", {}).get("cheap")
    }
