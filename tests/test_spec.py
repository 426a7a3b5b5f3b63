"""Spec validation: every rejection the foundation issue lists, each with a message naming field, value, fix."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, hpo, run_hpo, spec_dict

from orchestrator.cli import HEAVY_LIBRARIES, end_process
from orchestrator.spec import SpecError, load_spec, parse_spec

# (description, spec mapping, words the one-line message must contain)
BAD_SPECS = [
    ("unknown top-level key", spec_dict(sead=1), ["unknown key 'sead'", "did you mean 'seed'"]),
    (
        "misspelt section key",
        spec_dict(search={"algoritm": "grid"}),
        ["search", "'algoritm'", "did you mean 'algorithm'"],
    ),
    (
        "unknown algorithm",
        spec_dict(search={"algorithm": "grdi"}),
        ["search.algorithm", "'grdi'", "did you mean 'grid'", "quasirandom"],
    ),
    (
        "unknown scheduler",
        spec_dict(scheduler={"type": "hyperband"}),
        ["scheduler.type", "'hyperband'", "fifo, asha"],
    ),
    (
        "unknown distribution",
        spec_dict(search={"space": {"lr": {"logunifrom": [0.1, 1]}}}),
        ["search.space.lr", "'logunifrom'", "did you mean 'loguniform'"],
    ),
    (
        "loguniform low 0",
        spec_dict(search={"space": {"lr": {"loguniform": [0, 1]}}}),
        ["search.space.lr.loguniform", "0 < low < high"],
    ),
    (
        "loguniform reversed",
        spec_dict(search={"space": {"lr": {"loguniform": [0.1, 0.01]}}}),
        ["loguniform", "low < high"],
    ),
    (
        "uniform reversed",
        spec_dict(search={"space": {"dropout": {"uniform": [0.5, 0.1]}}}),
        ["uniform", "low < high"],
    ),
    (
        "randint reversed",
        spec_dict(search={"space": {"depth": {"randint": [3, 1]}}}),
        ["randint", "low <= high"],
    ),
    (
        "empty choice",
        spec_dict(search={"space": {"hidden": {"choice": []}}}),
        ["search.space.hidden.choice", "at least 1"],
    ),
    ("wrong type: string seed", spec_dict(seed="1"), ["seed", "valid integer", "'1'"]),
    (
        "wrong type: float epochs",
        spec_dict(train={"max_epochs": 1.5}),
        ["train.max_epochs", "integer", "1.5"],
    ),
    ("wrong type: bool workers", spec_dict(train={"workers": True}), ["train.workers", "integer"]),
    ("negative seed", spec_dict(seed=-1), ["seed", "greater than or equal to 0", "-1"]),
    ("zero workers", spec_dict(train={"workers": 0}), ["train.workers", "greater than 0"]),
    ("zero epochs", spec_dict(train={"max_epochs": 0}), ["train.max_epochs", "greater than 0"]),
    ("zero samples", spec_dict(search={"num_samples": 0}), ["search.num_samples", "greater than 0"]),
    ("name with slash", spec_dict(name="a/b"), ["name", "'a/b'", "lowercase letters, digits and dashes"]),
    ("name with semicolon", spec_dict(name="a;rm -rf"), ["name", "'a;rm -rf'"]),
    ("name with space", spec_dict(name="my job"), ["name", "'my job'"]),
    ("name too long", spec_dict(name="a" * 64), ["name", "at most 63"]),
    ("missing name", {k: v for k, v in spec_dict().items() if k != "name"}, ["name", "is required"]),
    (
        "metric not reported",
        spec_dict(search={"metric": "val_acc"}),
        ["search.metric", "'val_acc'", "did you mean 'val_accuracy'"],
    ),
    (
        "unimportable workload",
        spec_dict(workload="no_such_pkg.mod:fn"),
        ["workload", "cannot import module 'no_such_pkg.mod'"],
    ),
    (
        "unknown built-in workload",
        spec_dict(workload="digits-mpl"),
        ["workload", "did you mean 'digits-mlp'"],
    ),
    ("malformed entry point", spec_dict(workload="os:system;x"), ["workload", "package.module:function"]),
    (
        "asha grace above epochs",
        spec_dict(scheduler={"type": "asha", "grace_period": 9}),
        ["grace_period 9", "max_epochs 3"],
    ),
    (
        "asha options on fifo",
        spec_dict(scheduler={"type": "fifo", "grace_period": 1}),
        ["scheduler", "only to type: asha"],
    ),
    (
        "grid over a range",
        spec_dict(search={"algorithm": "grid"}),
        ["grid search needs every hyperparameter to be a choice", "space.lr"],
    ),
    ("unsupported storage", spec_dict(storage="gs://bucket/x"), ["storage", "'gs://'", "local path"]),
    (
        "unknown hyperparameter",
        spec_dict(search={"fixed": {"batchsize": 3}}),
        ["search.fixed.batchsize", "did you mean 'batch_size'"],
    ),
    ("searched and fixed", spec_dict(search={"fixed": {"lr": 0.1}}), ["'lr' is both searched", "fixed"]),
    ("empty space", spec_dict(search={"space": {}}), ["search.space", "is empty"]),
    (
        "bad optimizer",
        spec_dict(search={"fixed": {"optimizer": "rmsprop"}}),
        ["search.fixed.optimizer", "'rmsprop'", "adam, adamw, sgd"],
    ),
    (
        "bad lr schedule",
        spec_dict(search={"space": {"lr_schedule": {"choice": ["cosine", "step"]}}}),
        ["search.space.lr_schedule", "'step'", "constant, cosine, linear"],
    ),
    (
        "warmup fraction of 1",
        spec_dict(search={"fixed": {"warmup_frac": 1.0}}),
        ["search.fixed.warmup_frac", "out of range", ">= 0 and < 1"],
    ),
    (
        "negative grad clip",
        spec_dict(search={"fixed": {"grad_clip": -1.0}}),
        ["search.fixed.grad_clip", ">= 0"],
    ),
    ("bf16 on cpu", spec_dict(train={"precision": "bf16"}), ["precision: bf16 needs use_gpu: true"]),
    ("unknown precision", spec_dict(train={"precision": "fp8"}), ["train.precision", "fp8"]),
    (
        "standard-loop knob on a custom loop",
        spec_dict(
            workload="tests.workloads_for_tests:custom_loop",
            search={
                "metric": "val_f1",
                "mode": "max",
                "space": {"lr": {"loguniform": [1e-3, 1e-2]}},
                "fixed": {"optimizer": "sgd"},
            },
        ),
        ["search.fixed.optimizer", "workload digits-custom-loop has no such hyperparameter"],
    ),
    (
        "non-finite bound",
        spec_dict(search={"space": {"lr": {"uniform": [0, float("inf")]}}}),
        ["uniform", "finite"],
    ),
]


@pytest.mark.parametrize("what,data,words", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_is_rejected_with_a_clear_message(what, data, words):
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, f"{what}: {word!r} not in {message!r}"


BAD_FILES = [
    ("empty file", b"", "file is empty"),
    ("only a comment", b"# nothing\n", "file is empty"),
    ("not a mapping", b"- a\n- b\n", "must be a YAML mapping"),
    ("scalar", b"hello\n", "must be a YAML mapping"),
    ("not YAML", b"name: [unclosed\n", "not valid YAML: line"),
    ("binary garbage", bytes(range(256)) * 4, "binary"),
    ("not UTF-8", b"name: \xff\xfe\n", "not UTF-8"),
    (
        "alias bomb",
        b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
        "YAML aliases (*a) are not allowed",
    ),
    ("duplicate key", b"name: a\nname: b\n", "duplicate key 'name'"),
    ("deep nesting", b"a: " + b"[" * 40 + b"]" * 40 + b"\n", "nested deeper than"),
    ("several documents", b"name: a\n---\nname: b\n", "several YAML documents"),
    ("huge file", b"# " + b"x" * 300_000 + b"\n", "a job spec is at most"),
]


@pytest.mark.parametrize("what,content,words", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file_is_rejected(tmp_path, what, content, words):
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_yaml_12_floats_and_good_spec_load(tmp_path):
    path = tmp_path / "spec.yaml"
    data = spec_dict()
    text = yaml.safe_dump(data).replace("0.001", "1e-3")
    path.write_text(text)
    spec = load_spec(path)
    assert (spec.search.space["lr"].name, spec.search.space["lr"].args) == ("loguniform", [1e-3, 0.1])


def test_missing_file():
    with pytest.raises(SpecError, match="no such file"):
        load_spec("/nonexistent/spec.yaml")


def _write(tmp_path, data) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_cli_validate_exit_codes(tmp_path, capsys):
    code, out, err = hpo(capsys, "validate", _write(tmp_path, spec_dict()))
    assert code == 0, err
    assert out.startswith("ok: t-job")
    code, out, err = hpo(capsys, "validate", _write(tmp_path, spec_dict(search={"algorithm": "grdi"})))
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "search.algorithm" in lines[0] and "did you mean 'grid'" in lines[0]


def test_cli_run_rejects_bad_spec_and_writes_nothing(tmp_path, capsys):
    storage = tmp_path / "store"
    storage.mkdir()
    bad = _write(tmp_path, spec_dict(search={"space": {"lr": {"loguniform": [0, 1]}}}, storage=str(storage)))
    code, out, err = hpo(capsys, "run", bad)
    assert code == 2
    assert "Traceback" not in err and "0 < low < high" in err
    assert list(storage.iterdir()) == []


def test_cli_bad_arguments_exit_2(capsys):
    for args in (["run"], ["frobnicate"]):
        code, out, err = hpo(capsys, *args)
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_schema_accepts_shipped_jobs_and_rejects_unknown_keys(capsys):
    import jsonschema

    code, out, _ = hpo(capsys, "schema")
    assert code == 0
    schema = json.loads(out)
    validator = jsonschema.Draft202012Validator(schema)
    jobs = sorted((ROOT / "jobs").glob("*.yaml"))
    assert jobs
    for job in jobs:
        data = yaml.safe_load(job.read_text())
        errors = list(validator.iter_errors(data))
        assert not errors, f"{job.name}: {errors[0].message}"
    for bad in (
        spec_dict(extra=1),
        spec_dict(search={"algoritm": "grid"}),
        spec_dict(search={"space": {"lr": {"loguniform": [0.1, 1], "x": 1}}}),
        spec_dict(search={"space": {"lr": {"gauss": [0, 1]}}}),
    ):
        assert list(validator.iter_errors(bad)), bad


@pytest.mark.slow
def test_the_real_entry_point_validates_without_importing_heavy_libraries(tmp_path):
    """`hpo` as installed (the console script), and `python -m orchestrator`: validate, --help and a bad spec.
    Validating a spec imports none of the heavy libraries (orchestrator.cli.HEAVY_LIBRARIES: Ray, torch, numpy, ...)."""
    hpo_script = Path(sys.executable).parent / "hpo"
    good = subprocess.run(
        [str(hpo_script), "validate", str(ROOT / "jobs" / "digits-asha.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert good.returncode == 0 and good.stdout.startswith("ok: digits-asha"), good.stderr
    helped = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert helped.returncode == 0 and "validate" in helped.stdout and "submit" in helped.stdout
    bad = run_hpo("validate", _write(tmp_path, spec_dict(search={"algorithm": "grdi"})))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "did you mean 'grid'" in bad.stderr
    probe = (
        "import sys; from orchestrator.cli import main; code = main(['validate', sys.argv[1]]); "
        f"print([m for m in {HEAVY_LIBRARIES!r} if m in sys.modules]); sys.exit(code)"
    )
    light = subprocess.run(
        [sys.executable, "-c", probe, str(ROOT / "jobs" / "digits-asha.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert light.returncode == 0 and light.stdout.strip().endswith("[]"), light.stdout + light.stderr


class _Ended(Exception):
    pass


def _ending(calls: list):
    def exit_now(code):
        calls.append(("exit", code))
        raise _Ended

    return exit_now


def test_the_executable_ends_after_the_exit_handlers_and_flushed_output(monkeypatch):
    """`hpo` skips Python's teardown (~0.65 s after an `hpo run`), not what the teardown would have run."""
    calls: list = []

    class Recorded(io.StringIO):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def flush(self):
            calls.append(("flush", self.name, self.getvalue()))

    monkeypatch.setattr(sys, "stdout", Recorded("stdout"))
    monkeypatch.setattr(sys, "stderr", Recorded("stderr"))
    print("the summary", end="")
    with pytest.raises(_Ended):
        end_process(3, exit_now=_ending(calls), run_exit_handlers=lambda: calls.append(("atexit",)))
    assert calls == [("atexit",), ("flush", "stdout", "the summary"), ("flush", "stderr", ""), ("exit", 3)]


def test_a_live_non_daemon_thread_gets_pythons_own_exit():
    """Python's exit waits for a non-daemon thread; os._exit would cut it off, so it is not used then."""
    calls: list = []
    release = threading.Event()
    worker = threading.Thread(target=release.wait, daemon=False)
    worker.start()
    try:
        with pytest.raises(SystemExit) as ended:
            end_process(4, exit_now=_ending(calls), run_exit_handlers=lambda: calls.append(("atexit",)))
        assert ended.value.code == 4 and calls == []
    finally:
        release.set()
        worker.join(timeout=10)


@pytest.mark.parametrize(("code", "expected"), [(0, 120), (2, 2)])
def test_output_that_cannot_be_flushed_fails_a_successful_exit_as_python_does(monkeypatch, code, expected):
    class ClosedPipe(io.StringIO):
        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    calls: list = []
    with pytest.raises(_Ended):
        end_process(code, exit_now=_ending(calls), run_exit_handlers=lambda: None)
    assert calls == [("exit", expected)]


@pytest.mark.slow
def test_the_real_exit_runs_atexit_handlers_and_delivers_all_output(tmp_path):
    marker = tmp_path / "handler-ran"
    probe = (
        "import atexit, pathlib, sys; "
        f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes'); "
        "from orchestrator.cli import end_process; sys.stdout.write('x' * 200000); end_process(5)"
    )
    ended = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert ended.returncode == 5, ended.stderr
    assert len(ended.stdout) == 200000 and ended.stderr == ""
    assert marker.read_text() == "yes"
