"""A disk that fills mid-run, with the run's folder and its spool on it: the run ends with exit 3 and one line naming
the disk, run.json says `disk_full`, no partial file is left, and `hpo resume` after freeing space ends with every
row once. The disk is a real small tmpfs (mounting one needs root, as CI runs)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import run_hpo, spec_dict, spec_file
from contract import check_contract

from orchestrator.results import RunSummary, load_results
from orchestrator.spec import load_spec
from orchestrator.storage import open_store

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def _partial_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.name.endswith(".tmp")]


def test_a_full_disk_ends_the_run_with_exit_3_and_resume_after_freeing_space_keeps_every_row_once(
    small_disk, tmp_path
):
    # `hpo` in processes of their own: their Ray's trial workers then spool where the driver does (the session's
    # Ray started with another HPO_SPOOL_DIR)
    env = {"HPO_SPOOL_DIR": str(small_disk / "spool"), "HPO_DISK_RESERVE_BYTES": str(256 * 1024)}
    # Ballast: leave the run its reserves (two: its folder's and its spool's, on the same disk) and ~250 KB,
    # about five of its checkpoints; it needs three trials x four epochs of them.
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (_free_bytes(small_disk) - 2 * 256 * 1024 - 250 * 1024))
    data = spec_dict(
        name="full",
        storage=str(small_disk / "runs"),
        search={"num_samples": 3, "max_concurrent": 1, "space": {"lr": {"loguniform": [1e-3, 1e-1]}}},
        train={"max_epochs": 4},
    )
    data["search"]["fixed"] = {"batch_size": 128, "hidden": 32}
    spec_path = spec_file(tmp_path / "job.yaml", data)
    done = run_hpo("run", str(spec_path), "--output", "json", cwd=tmp_path, env=env)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("hpo: the job stopped"))
    assert f"no space left on the disk mounted at {small_disk}" in line and "hpo resume" in line
    uri = done.stdout.splitlines()[0].removeprefix("results_uri: ")
    assert json.loads(open_store(uri).read_bytes("run.json"))["status"] == "disk_full"
    assert not _partial_files(small_disk), _partial_files(small_disk)

    ballast.unlink()  # space again: the run continues where it stopped
    done = run_hpo("resume", uri, "--output", "json", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = RunSummary(**json.loads(done.stdout.strip().splitlines()[-1]))
    rows, _ = check_contract(summary, load_spec(spec_path))  # every (trial, epoch) exactly once
    assert rows.num_rows == 12 == load_results(uri).num_rows
    assert json.loads(open_store(uri).read_bytes("run.json"))["status"] == "finished"
    assert not _partial_files(small_disk)
