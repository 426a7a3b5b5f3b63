# One image for the Ray head, the workers and CI-like runs (BuildKit: Docker 23+ by default, DOCKER_BUILDKIT=1
# on Docker 20.10). `make image-test` builds it and runs it: docs/cluster.md.
#   CPU (default):  docker build -t hpo-orchestrator .
#   GPU (CUDA 12.8): docker build -t hpo-orchestrator:gpu \
#                      --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   Another base, any image with Python 3.10+ and its venv module (e.g. one made from Debian's packages):
#                    --build-arg BASE_IMAGE=my-debian-bookworm
#   Behind a proxy with its own certificate authority, hand pip the CA bundle as a build secret (mounted for pip's
#   steps only, never stored in a layer):  --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt
# Versions match pyproject.toml (a test checks): change them together.
ARG PYTHON_VERSION=3.11
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG RAY_VERSION=2.60.0
# An index or mirror served over plain http (a local one, as make image-test serves torch from): pip ignores
# those unless told to trust its host. Unset by default.
ARG PIP_TRUSTED_HOST

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Every Ray node of this image retries its local connects every 20 ms instead of every second (the same 10 s in
# all): orchestrator/ray_support/ray_compat/node_start.py, FAST_CONNECT, says why (a raylet that stalls 1 s at
# its start).
ENV RAY_raylet_client_connect_timeout_milliseconds=20 \
    RAY_raylet_client_num_connect_attempts=500

# Layers ordered from least to most often changed: OS user and venv, torch, Ray and the other dependencies, our
# code. A venv, not the system's Python: Debian's python3 refuses pip installs outside one (PEP 668). Each pip step
# uses the CA secret when one is handed in (pip's own trust store otherwise).
RUN useradd --create-home --uid 1000 --shell /bin/bash ray && python3 -m venv /opt/venv
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    pip install "ray[default,tune,train]==${RAY_VERSION}" "hyperopt>=0.2.7" "pyarrow>=15" "boto3>=1.34" \
        "scikit-learn>=1.3" "numpy>=1.26" "scipy>=1.11" "pydantic>=2.6" "PyYAML>=6" "matplotlib>=3.8" \
        "optuna>=4.4" "cmaes>=0.11" "nvidia-ml-py>=12" "starlette>=0.40" "uvicorn>=0.30" "plotly>=5.20" "setuptools>=68" "wheel"

# Our code last: a change to orchestrator/ rebuilds only these layers (make image-test checks it). The package
# builds without fetching anything (no build isolation: setuptools is in the venv from the step above).
WORKDIR /opt/hpo
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY jobs ./jobs
RUN pip install --no-deps --no-build-isolation . && hpo validate jobs/digits-asha.yaml

USER ray
WORKDIR /home/ray
CMD ["hpo", "--help"]
