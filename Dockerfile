# One image for the Ray head, the workers and CI-like runs.
#   CPU (default):  docker build -t hpo-orchestrator .
#   GPU (CUDA 12.8): docker build -t hpo-orchestrator:gpu \
#                      --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# Versions match pyproject.toml (a test checks): change them together.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG RAY_VERSION=2.60.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/home/ray/.local/bin:$PATH

# Every Ray node of this image retries its local connects every 20 ms instead of every second (the same 10 s in
# all): orchestrator/ray_support/ray_compat/node_start.py, FAST_CONNECT, says why (a raylet that stalls 1 s at
# its start).
ENV RAY_raylet_client_connect_timeout_milliseconds=20 \
    RAY_raylet_client_num_connect_attempts=500

# Layers ordered from least to most often changed: OS user, torch, Ray and the other dependencies, our code.
RUN useradd --create-home --uid 1000 --shell /bin/bash ray
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
RUN pip install "ray[default,tune,train]==${RAY_VERSION}" "hyperopt>=0.2.7" "pyarrow>=15" "boto3>=1.34" \
        "scikit-learn>=1.3" "numpy>=1.26" "scipy>=1.11" "pydantic>=2.6" "PyYAML>=6" "matplotlib>=3.8" \
        "optuna>=4.4" "cmaes>=0.11"

WORKDIR /opt/hpo
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY jobs ./jobs
RUN pip install --no-deps . && hpo validate jobs/digits-asha.yaml

USER ray
WORKDIR /home/ray
CMD ["hpo", "--help"]
