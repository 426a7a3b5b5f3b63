"""Hostile and malformed specs: each is refused with exit 2 and one line, no traceback, nothing written or run.

The corpus runs through the real CLI entry point in this process (`orchestrator.cli.main`), as `hpo validate`
and as `hpo run`; a hypothesis fuzzer then throws arbitrary YAML-ish text and structures at the loader."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml
from conftest import BASE_SPEC
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main
from orchestrator.spec import SpecError, load_spec, parse_spec

MARKER = Path("/tmp/hpo-hostile-marker")  # every injection below tries to create this file
INJECT = [
    f"$(touch {MARKER})",
    f"`touch {MARKER}`",
    f"; touch {MARKER}",
    f"| touch {MARKER} #",
    f"__import__('os').system('touch {MARKER}')",
    "../../../../etc/passwd",
    "\x00evil",
    "a\nb: c",
]


def _with(path: str, value):
    """BASE_SPEC with `value` at the dotted `path`."""
    data = copy.deepcopy(BASE_SPEC)
    node = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return yaml.safe_dump(data)


def _corpus() -> list[tuple[str, str | bytes]]:
    cases: list[tuple[str, str | bytes]] = []
    # injection attempts in every string field that is validated
    for field in (
        "name",
        "workload",
        "storage",
        "search.metric",
        "search.algorithm",
        "search.mode",
        "scheduler.type",
        "storage_options.endpoint_url",
        "storage_options.region",
        "storage_options.addressing_style",
        "search.fixed.optimizer",
        "kind",
    ):
        for i, payload in enumerate(
            INJECT[:3]
            if field != "storage"
            else [f"s3://bkt/{INJECT[3]}", f"s3://bkt/{INJECT[5]}", "gs://x/y"]
        ):
            cases.append((f"inject-{field}-{i}", _with(field, payload)))
    # hostile workload entry points: stdlib, builtins, hpo itself, traversal, non-identifiers, non-functions
    for workload in (
        "os:fork",
        "os:abort",
        "builtins:exit",
        "pdb:set_trace",
        "code:interact",
        "antigravity:x",
        "orchestrator.cli:main",
        "subprocess:getoutput",
        "../../etc:passwd",
        "tests/x:y",
        "a.b:c d",
        "tests.workloads_for_tests:Splits",
        "tests.workloads_for_tests:_dies_once_model",
    ):
        cases.append((f"workload-{workload}", _with("workload", workload)))
    # types, ranges, unknown keys, enormous values
    for path, value in (
        ("seed", -1),
        ("seed", 2**64),
        ("seed", "7"),
        ("search.num_samples", 10**30),
        ("search.num_samples", 0),
        ("search.max_concurrent", True),
        ("train.max_epochs", 1.5),
        ("train.workers", 10**9),
        ("train.cpus_per_worker", float("nan")),
        ("search.space.lr", {"loguniform": [0, 1]}),
        ("search.space.lr", {"loguniform": [1e-400, 1]}),
        ("search.space.lr", {"uniform": [1, float("inf")]}),
        ("search.space.lr", {"normal": [0, 1]}),
        ("search.space.hidden", {"choice": []}),
        ("search.space.hidden", {"randint": [5, 1]}),
        ("search.fixed.lr", -0.1),
        ("search.fixed.momentum", 1.5),
        ("search.fixed.batch_size", 0),
        ("search.spaec", {}),
        ("trian", {}),
        ("train.max_retries", -1),
        ("sanity", "yes"),
        ("name", "x" * 200_000),
        ("description", ["not", "a", "string"]),
    ):
        cases.append((f"value-{path}-{str(value)[:20]}", _with(path, value)))
    # YAML-level attacks and garbage
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    cases += [
        ("alias-bomb", bomb),
        ("binary", os.urandom(4096)),
        ("nul-bytes", b"name: a\x00b\n"),
        ("deep-nesting", "a:\n" + "".join("  " * i + " b:\n" for i in range(1, 40)) + "  " * 40 + " 1\n"),
        ("huge-file", "name: x\n" + "#" * 300_000),
        ("duplicate-keys", "name: a\nname: b\n"),
        ("not-a-mapping", "- a\n- b\n"),
        ("empty", ""),
        ("python-tag", "!!python/object/apply:os.system [ls]"),
        ("tab-indent", "name: a\n\tworkload: b\n"),
        ("utf16", "name: a".encode("utf-16")),
    ]
    return cases


CORPUS = _corpus()


def test_the_corpus_is_big_enough():
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("label, text", CORPUS, ids=[label for label, _ in CORPUS])
def test_hostile_spec_is_refused_in_one_line_and_nothing_happens(label, text, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    MARKER.unlink(missing_ok=True)
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "out"
    for argv in (["validate", str(spec)], ["run", str(spec), "--storage", str(out)]):
        code = main(argv)
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == 2, (argv, captured.err)
        assert len(lines) == 1 and lines[0].startswith("hpo: ") and "Traceback" not in captured.err, (
            captured.err
        )
        assert captured.out == ""
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
    assert not MARKER.exists()


# --- hostile storage URIs given on the command line -------------------------------------------------------
BAD_URIS = [
    "",
    "   ",
    "gs://bucket/run",
    "s3://",
    "s3://Bad_Bucket/x",
    "s3://b/../etc",
    "s3://b//x",
    "s3://key:secret@b/x",
    "s3://b/x; touch pwned",
    "/tmp/a\nb",
    "/tmp/a\x00b",
]
URI_COMMANDS = [
    ["resume", "{uri}"],
    ["reproduce", "{uri}", "trial_0000"],
    ["results", "show", "{uri}"],
    ["results", "pull", "{uri}", "--to", "{out}"],
    ["results", "ls", "{uri}"],
    ["results", "sync", "{uri}"],
    ["ensemble", "{uri}"],
    ["analyze", "{uri}", "--out", "{out}"],
]


@pytest.mark.parametrize("uri", BAD_URIS)
def test_a_hostile_storage_uri_is_refused_by_every_command_in_one_line(uri, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path / "out")
    for command in URI_COMMANDS:
        argv = [arg.format(uri=uri, out=out) for arg in command]
        code = main(argv)
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == 2, (argv, captured.err)
        assert len(lines) == 1 and lines[0].startswith("hpo: ") and "Traceback" not in captured.err, (
            captured.err
        )
        assert captured.out == ""
    assert list(tmp_path.iterdir()) == [] and not (tmp_path / "pwned").exists()


# --- fuzzing the loader: any input gives a spec or a SpecError, never another exception -----------------
_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
_keys = st.sampled_from(
    [
        "name",
        "workload",
        "seed",
        "search",
        "scheduler",
        "train",
        "storage",
        "kind",
        "run",
        "storage_options",
        "space",
        "fixed",
        "roles",
        "algorithm",
        "metric",
        "top_k",
        "lr",
    ]
)


def _mutations():
    """BASE_SPEC with one section or field replaced by arbitrary data, or arbitrary mappings outright."""

    def mutate(args):
        section, key, value = args
        data = copy.deepcopy(BASE_SPEC)
        target = data.get(section) if isinstance(data.get(section), dict) else data
        target[key] = value
        return data

    return st.one_of(
        st.tuples(st.sampled_from(["search", "train", "scheduler", "top"]), _keys, _values).map(mutate),
        st.dictionaries(_keys, _values, max_size=6),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_fuzzed_structures_give_a_spec_or_a_spec_error(data):
    try:
        parse_spec(data)
    except SpecError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=400), st.text(max_size=400)))
def test_fuzzed_files_give_a_spec_or_a_spec_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    try:
        load_spec(path)
    except SpecError as exc:
        assert "\n" not in str(exc)


def test_a_reader_that_closes_the_pipe_early_is_no_error(monkeypatch):
    """`hpo results show URI | head -3`: head closes the pipe; hpo stops quietly instead of a traceback."""
    import io

    from orchestrator.cli.common import run_command

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert run_command(lambda args: print("trial_0000 ...") or 0, None) == 0


class _RunsCode:
    """What a hostile writer adds to a stored checkpoint: unpickling it calls open(), creating a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_stored_checkpoint_that_would_run_code_is_refused_not_loaded(tmp_path):
    """Checkpoints load as data only (torch's weights_only, plus numpy's array rebuilders for RNG states): an
    object whose unpickling runs code is named and refused, and nothing of it runs."""
    import numpy as np
    import torch

    from orchestrator.storage import LocalStore
    from orchestrator.train.checkpoints import TrialCheckpoints
    from orchestrator.train.context import rng_state
    from orchestrator.train.exceptions import UnsafeCheckpoint

    marker = tmp_path / "ran"
    checkpoints = TrialCheckpoints(LocalStore(str(tmp_path / "run")), "trial_0000", keep=3, mode="min")
    honest = {
        "checkpoint": {"w": torch.arange(3.0), "np": np.arange(2)},
        "iteration": 1,
        "rng": [rng_state()],
    }
    checkpoints.save(1, honest, 0.5)
    state = checkpoints.load_latest()  # tensors, numpy values and RNG states load as before
    assert (
        torch.equal(state["checkpoint"]["w"], torch.arange(3.0)) and state["rng"][0]["numpy"][0] == "MT19937"
    )
    checkpoints.save(2, {**honest, "iteration": 2, "extra": _RunsCode(str(marker))}, 0.4)
    with pytest.raises(
        UnsafeCheckpoint,
        match=r"epoch-0002\.pt: holds an object of io\.open, which only running code could load",
    ):
        checkpoints.load_latest()
    assert not marker.exists()
