"""Several trials per GPU (train.gpus_per_worker), tested without a GPU: an embedded Ray told it has one
(Ray accepts declared GPU resources on any machine; HPO_FAKE_GPU makes the trials train on CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, spec_dict

from orchestrator.errors import SpecError
from orchestrator.spec import parse_spec


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ({"gpus_per_worker": 0.5}, "train: gpus_per_worker: 0.5 needs use_gpu: true"),
        ({"use_gpu": True, "gpus_per_worker": 1.5}, "a whole number of GPUs, or a fraction of one"),
        ({"use_gpu": True, "workers": 2, "gpus_per_worker": 0.5}, "DDP workers each take whole GPUs"),
        ({"use_gpu": True, "resources_per_worker": {"GPU": 2}}, "give it with train.gpus_per_worker"),
        ({"use_gpu": True, "gpus_per_worker": 0}, "gpus_per_worker"),
    ],
)
def test_gpus_per_worker_is_refused_in_one_line_where_it_cannot_hold(train, expected):
    with pytest.raises(SpecError, match=expected) as refused:
        parse_spec(spec_dict(train=train))
    assert "\n" not in str(refused.value)


def test_a_fraction_of_a_gpu_is_what_a_trial_asks_ray_for_and_what_its_ledger_counts():
    from orchestrator.launch.launcher import launcher_for

    quarter = launcher_for(parse_spec(spec_dict(train={"use_gpu": True, "gpus_per_worker": 0.25})).train)
    assert quarter.trial_resources() == {"CPU": 1.0, "GPU": 0.25} and quarter.trial_gpus() == 0.25
    ddp = launcher_for(
        parse_spec(spec_dict(train={"use_gpu": True, "workers": 2, "gpus_per_worker": 2})).train
    )
    assert ddp.worker_bundle()["GPU"] == 2 and ddp.trial_gpus() == 4
    assert launcher_for(parse_spec(spec_dict(train={"use_gpu": True})).train).worker_bundle()["GPU"] == 1.0


@pytest.mark.slow
def test_four_trials_share_one_declared_gpu_at_once_and_each_counts_a_quarter_of_its_wall(tmp_path):
    """On an embedded Ray told it has 1 GPU: 4 trials of gpus_per_worker 0.25 run at once (each waits until all
    4 have started before it reports), each sees the same CUDA_VISIBLE_DEVICES, and trials.parquet's gpu_s of
    each is its wall_s x 0.25."""
    out = tmp_path / "seen"
    out.mkdir()
    spec = spec_dict(
        name="gpu-share",
        workload="tests.workloads_for_tests:gpu_share",
        storage=str(tmp_path / "results"),
        search={
            "metric": "loss",
            "mode": "min",
            "space": {"x": {"uniform": [0.0, 1.0]}},
            "num_samples": 4,
            "max_concurrent": 4,
            "fixed": {"out_dir": str(out), "together": 4},
        },
        scheduler={"type": "fifo"},
        train={"max_epochs": 2, "use_gpu": True, "gpus_per_worker": 0.25, "cpus_per_worker": 0.5},
    )
    code = (
        "import json, os, sys\n"
        "os.environ['HPO_FAKE_GPU'] = '1'\n"
        "import orchestrator; from orchestrator.ray_support.driver import DriverSession\n"
        "with DriverSession() as session:\n"
        "    session.start_ray(num_cpus=2, num_gpus=1, dashboard=False)  # an embedded Ray, as a run starts it\n"
        "    lines = []\n"
        "    summary = orchestrator.run(orchestrator.parse_spec(json.loads(sys.argv[1])), progress=lines.append)\n"
        "print(json.dumps({'statuses': summary.statuses, 'uri': summary.results_uri, 'lines': lines}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["statuses"] == {"completed": 4}, result
    seen = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert len(seen) == 4 and {s["cuda"] for s in seen} == {"0"}, seen

    import pyarrow.parquet as pq

    trials = pq.read_table(f"{result['uri']}/trials.parquet").to_pylist()
    assert [t["last_loss"] for t in trials] == [0.0] * 4  # each reported only once all 4 ran at once
    for trial in trials:
        assert trial["gpu_s"] == pytest.approx(trial["wall_s"] * 0.25, abs=0.002), trial


@pytest.mark.slow
def test_make_gpu_check_says_there_is_no_gpu_here_and_rehearses_its_measurements_on_the_cpu(tmp_path):
    """`make gpu-check` (bench/gpu_check.py) on this machine: no CUDA, one line, exit 0. Its --cpu rehearsal runs
    every measurement that needs no CUDA: reruns of the standard and a custom loop are bit-identical, trials per
    hour are measured at 0.25 and 1 GPU per trial on a declared GPU, and the JSON holds each figure."""
    out = tmp_path / "none.json"
    script = str(ROOT / "bench" / "gpu_check.py")
    none = subprocess.run(
        [sys.executable, script, "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert none.returncode == 0 and none.stdout.startswith("gpu-check: no CUDA GPU here"), (
        none.stdout + none.stderr
    )
    assert json.loads(out.read_text())["card"] is None
    out = tmp_path / "cpu.json"
    rehearsal = subprocess.run(
        [sys.executable, script, "--cpu", "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert rehearsal.returncode == 0, rehearsal.stdout + rehearsal.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["rerun_standard_loop"]["identical"] and figures["rerun_custom_loop"]["identical"], figures
    assert figures["trials_per_hour"]["gpus_per_worker 0.25"] > 0 and figures["trials_per_hour"]["ratio"] > 0
    assert figures["trial_start_after_first_s"] is not None and figures["trial_start_after_first_s"] >= 0
    assert figures["deterministic_mode_cost"]["deterministic_over_default"] > 0
    assert "needs CUDA" in figures["bf16_vs_fp32"] and "needs NVML" in figures["gpu_busy_share"]
    # the rehearsal's trials train on the CPU: the ledger holds their GPU share, and no utilization
    ledger = figures["ledger_of_the_asha_search"]
    assert ledger["trials"] == 4 and ledger["gpu_hours"] > 0 and ledger["gpu_util_mean"] is None, ledger
