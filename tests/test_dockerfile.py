"""The Dockerfile parsed, and its pins checked against pyproject.toml (make image-test builds and runs it on a
Docker engine: tests/test_image.py)."""

from __future__ import annotations

import re

import tomllib
from conftest import ROOT
from dockerfile_parse import DockerfileParser
from ray_internals import fast_connect_env


def _parsed():
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    return parser, parser.structure


def test_pins_match_pyproject_and_makefile():
    parser, _ = _parsed()
    args = parser.args
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_pin = next(d for d in deps if d.startswith("ray["))
    assert ray_pin.endswith(f"=={args['RAY_VERSION']}")
    torch_range = next(d for d in deps if d.startswith("torch"))
    minimum = re.search(r">=([\d.]+)", torch_range).group(1)
    assert tuple(map(int, args["TORCH_VERSION"].split("."))) >= tuple(map(int, minimum.split(".")))
    makefile = (ROOT / "Makefile").read_text()
    assert f"TORCH  ?= torch=={args['TORCH_VERSION']}" in makefile
    # Every other runtime dependency of pyproject is installed in the image with the same specifier.
    installed = " ".join(i["value"] for i in _parsed()[1] if i["instruction"] == "RUN")
    for dep in deps:
        if not dep.startswith(("ray[", "torch")):
            assert f'"{dep}"' in installed, dep


def test_image_shape_cpu_default_gpu_by_argument_non_root_cli_on_path():
    parser, structure = _parsed()
    assert parser.args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    users = [i["value"] for i in structure if i["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0")
    runs = [i["value"] for i in structure if i["instruction"] == "RUN"]
    assert any("pip install --no-deps --no-build-isolation ." in r and "hpo validate" in r for r in runs)
    order = [i["instruction"] for i in structure]
    assert order.index("COPY") > max(i for i, v in enumerate(structure) if "torch==" in v["value"])
    # the base is an argument whose default is Python's slim image (make image-test builds on Debian's python3)
    assert parser.baseimage == "python:${PYTHON_VERSION}-slim"
    assert "ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim" in parser.content
    # every pip step can trust a CA bundle handed in as a build secret, which no layer keeps
    pip_steps = [r for r in runs if "pip install" in r]
    assert all(
        "--mount=type=secret,id=pip_cert" in r and "PIP_CERT=/run/secrets/pip_cert" in r
        for r in pip_steps[:2]
    )


def test_the_image_has_the_embedded_heads_fast_connects():
    parser, _ = _parsed()
    expected = fast_connect_env()
    assert {k: v for k, v in parser.envs.items() if k in expected} == expected
