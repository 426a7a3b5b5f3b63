"""The fork server's launcher (ray_support/forkserver_launcher.py), the part that decides, in the fast tier: which
of the raylet's worker commands it hands to the server, and what a runtime_env of variables becomes. The server
itself, forking real workers of a real raylet, is tested live in tests/test_ray_compat.py."""

from __future__ import annotations

import json
import os
import sys

from orchestrator.ray_support import forkserver, forkserver_launcher

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
    assert forkserver_launcher._only_variables(["setup_worker.py", "default_worker.py", "--language=PYTHON"])
    variables = {"HPO_TEST_X": "${HOME}/x${HPO_NOT_SET_ANYWHERE}", "HPO_TEST_Y": "plain"}
    assert forkserver_launcher._only_variables(["setup_worker.py", _context(env_vars=variables)])
    assert os.environ["HPO_TEST_X"] == "/home/someone/x" and os.environ["HPO_TEST_Y"] == "plain"
    monkeypatch.delenv("HPO_TEST_X")
    monkeypatch.delenv("HPO_TEST_Y")


def test_any_other_runtime_env_is_left_to_rays_setup_worker():
    for other in (
        {"command_prefix": ["cd", "/somewhere", "&&"]},  # a working_dir
        {"py_executable": "/opt/other/python"},
        {"py_executable": f"{sys.executable} -X importtime"},
        {"override_worker_entrypoint": "/in/a/container/default_worker.py"},
        {"java_jars": ["/x.jar"]},
    ):
        assert not forkserver_launcher._only_variables(["setup_worker.py", _context(**other)]), other


def test_the_launcher_is_the_interpreter_isolated_and_without_site_running_this_file():
    command = forkserver.ForkServer.launcher_command()
    assert command[:3] == [sys.executable, "-I", "-S"] and command[3].endswith("forkserver_launcher.py")
    assert os.path.exists(command[3]) and os.path.exists(forkserver.ZYGOTE)
