"""The fork server's launcher (ray_support/forkserver_launcher.py), the part that decides, in the fast tier: which
of the raylet's worker commands it hands to the server, and what a runtime_env of variables and a working
directory becomes; which workers the server sends back to be started as Ray would. The server
itself, forking real workers of a real raylet, is tested live in tests/test_ray_compat.py."""

from __future__ import annotations

import json
import os
import shlex
import sys

from orchestrator.ray_support import forkserver, forkserver_launcher, forkserver_zygote

CONTEXT = forkserver_launcher.CONTEXT_FLAG


def _context(**fields) -> str:
    base = {"command_prefix": [], "env_vars": {}, "py_executable": sys.executable}
    base.update(override_worker_entrypoint=None, java_jars=[])
    return CONTEXT + json.dumps({**base, **fields})


def test_a_worker_without_a_runtime_env_is_forked_and_one_of_variables_gets_them_as_ray_would_set_them(
    monkeypatch,
):
    monkeypatch.setenv("HOME", "/home/someone")
    monkeypatch.delenv("HPO_TEST_X", raising=False)
    assert forkserver_launcher._only_variables_and_directory(
        ["setup_worker.py", "default_worker.py", "--language=PYTHON"]
    )
    variables = {"HPO_TEST_X": "${HOME}/x${HPO_NOT_SET_ANYWHERE}", "HPO_TEST_Y": "plain"}
    assert forkserver_launcher._only_variables_and_directory(
        ["setup_worker.py", _context(env_vars=variables)]
    )
    assert os.environ["HPO_TEST_X"] == "/home/someone/x" and os.environ["HPO_TEST_Y"] == "plain"
    monkeypatch.delenv("HPO_TEST_X")
    monkeypatch.delenv("HPO_TEST_Y")


def test_a_working_dir_is_entered_as_rays_command_prefix_would_and_its_variables_set(monkeypatch, tmp_path):
    place = tmp_path / "job's dir; $(x)"
    place.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPO_TEST_X", raising=False)
    context = _context(command_prefix=["cd", shlex.quote(str(place)), "&&"], env_vars={"HPO_TEST_X": "1"})
    assert forkserver_launcher._only_variables_and_directory(["setup_worker.py", context])
    assert os.getcwd() == str(place) and os.environ["HPO_TEST_X"] == "1"
    monkeypatch.delenv("HPO_TEST_X")


def test_any_other_runtime_env_is_left_to_rays_setup_worker(monkeypatch):
    monkeypatch.delenv("HPO_TEST_X", raising=False)
    for other in (
        {"command_prefix": ["cd", "/nonexistent-dir", "&&"], "env_vars": {"HPO_TEST_X": "1"}},
        {"command_prefix": ["conda", "activate", "x", "&&"]},
        {"py_executable": "/opt/other/python"},
        {"py_executable": f"{sys.executable} -X importtime"},
        {"override_worker_entrypoint": "/in/a/container/default_worker.py"},
        {"java_jars": ["/x.jar"]},
    ):
        assert not forkserver_launcher._only_variables_and_directory(
            ["setup_worker.py", _context(**other)]
        ), other
    assert "HPO_TEST_X" not in os.environ  # nothing set for a worker left to Ray's setup_worker.py


def test_a_worker_whose_pythonpath_holds_another_copy_of_a_preloaded_library_is_not_forked(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "repo" / "orchestrator").mkdir(parents=True)  # a job's working_dir: hpo's own repository
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "yaml.py").write_text("")
    assert forkserver_zygote._shadowed([str(tmp_path / "plain")]) is None
    assert forkserver_zygote._shadowed([str(tmp_path / "repo")]) == str(tmp_path / "repo" / "orchestrator")
    assert forkserver_zygote._shadowed([str(tmp_path / "plain"), str(tmp_path / "mods")]) == str(
        tmp_path / "mods" / "yaml"
    )


def test_the_launcher_and_the_server_agree_on_the_reply_that_sends_a_worker_back():
    """The launcher runs isolated (`-I -S`) and cannot import the server's module: each writes the reply."""
    assert forkserver_launcher.EXEC_REPLY == forkserver_zygote.EXEC_REPLY
    assert not forkserver_launcher.EXEC_REPLY.strip().isdigit()  # never mistaken for a forked worker's pid


def test_the_launcher_is_the_interpreter_isolated_and_without_site_running_this_file():
    command = forkserver.ForkServer.launcher_command()
    assert command[:3] == [sys.executable, "-I", "-S"] and command[3].endswith("forkserver_launcher.py")
    assert os.path.exists(command[3]) and os.path.exists(forkserver.ZYGOTE)


def test_hpo_node_hands_every_argument_to_rays_own_start(monkeypatch, capsys):
    """`hpo node ARGS` is `ray start ARGS` (argparse would refuse `--head`: cli.main passes them on whole). Its
    --help is Ray's, under hpo's name; nothing starts (HPO_FORKSERVER=0: no server either)."""
    from conftest import hpo

    monkeypatch.setenv(forkserver.SWITCH, "0")
    code, out, _ = hpo(capsys, "node", "--help")
    assert code == 0 and out.startswith("Usage: hpo node [OPTIONS]") and "--head" in out and "--block" in out
    code, _, err = hpo(capsys, "node", "--no-such-option")
    assert code == 2 and "No such option '--no-such-option'" in err and "Try 'hpo node --help'" in err
