"""Small workloads the tests name as entry points ("tests.workloads_for_tests:NAME"); Ray workers import them
from the repository root, which is on their PYTHONPATH."""

from __future__ import annotations

import dataclasses

import torch

from orchestrator.workloads import Splits, Workload
from orchestrator.workloads.digits import digits_mlp, load_digits_splits


def _exploding_model(config):
    raise RuntimeError("model exploded on purpose")


def broken() -> Workload:
    return dataclasses.replace(digits_mlp(), name="broken", build_model=_exploding_model)


def _digit_value_splits(config) -> Splits:
    """Regression: predict the digit's value (0-9) as a float."""
    splits = load_digits_splits(config)
    return Splits(*((x, y.float()) for x, y in splits))


def _regressor(config):
    return torch.nn.Sequential(
        torch.nn.Linear(64, config["hidden"]), torch.nn.ReLU(), torch.nn.Linear(config["hidden"], 1)
    )


def digit_value() -> Workload:
    return Workload(
        name="digit-value",
        build_model=_regressor,
        load_data=_digit_value_splits,
        task="regression",
        hyperparameters={"hidden": 32},
    )


def _dies_once_model(config):
    """The digits MLP, whose process dies (os._exit: no exception, no cleanup, like a lost worker) on its
    `die_at_step`-th forward pass, once: the marker file says it already happened."""
    import os
    from pathlib import Path

    from orchestrator.workloads.digits import build_mlp

    model, marker, steps = build_mlp(config), Path(config["die_marker"]), [0]

    def hook(module, inputs):
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_rank() != 1:
            return  # under DDP only rank 1 dies: a worker lost while its peer waits in the all-reduce
        steps[0] += 1
        if steps[0] == config["die_at_step"] and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)

    if config["die_marker"]:
        model.register_forward_pre_hook(hook)
    return model


def dies_once() -> Workload:
    base = digits_mlp()
    return dataclasses.replace(
        base,
        name="dies-once",
        build_model=_dies_once_model,
        hyperparameters={**base.hyperparameters, "die_marker": "", "die_at_step": 25},
    )


# --- planted bugs for `hpo sanity`: each is the digits MLP with one classic mistake -------------------------
class _BatchMixer(torch.nn.Module):
    """Reshapes with a view where a transpose was meant: (B, F) -> (F, B) -> view (B, F) mixes examples."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.t().contiguous().view(x.shape[0], -1))


def batch_mixing() -> Workload:
    from orchestrator.workloads.digits import build_mlp

    return dataclasses.replace(
        digits_mlp(), name="batch-mixing", build_model=lambda c: _BatchMixer(build_mlp(c))
    )


def _shuffled_label_splits(config) -> Splits:
    """Labels permuted independently of the inputs (e.g. shuffling x and y with different generators)."""
    splits = load_digits_splits(config)
    gen = torch.Generator().manual_seed(0)
    return Splits(*((x, y[torch.randperm(len(y), generator=gen)]) for x, y in splits))


def shuffled_labels() -> Workload:
    return dataclasses.replace(digits_mlp(), name="shuffled-labels", load_data=_shuffled_label_splits)


class _IgnoresInput(torch.nn.Module):
    """Multiplies its input by zero on the way in (a mask or scale bug): the output depends on nothing."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x * 0)


def ignores_input() -> Workload:
    from orchestrator.workloads.digits import build_mlp

    return dataclasses.replace(
        digits_mlp(), name="ignores-input", build_model=lambda c: _IgnoresInput(build_mlp(c))
    )


class _UnseededNoise(torch.nn.Module):
    """Adds noise drawn from a generator seeded by the clock, not by the trial's seed."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        import time

        if self.training:
            gen = torch.Generator().manual_seed(time.perf_counter_ns())
            x = x + 0.1 * torch.randn(x.shape, generator=gen)
        return self.inner(x)


def unseeded_noise() -> Workload:
    from orchestrator.workloads.digits import build_mlp

    return dataclasses.replace(
        digits_mlp(), name="unseeded-noise", build_model=lambda c: _UnseededNoise(build_mlp(c))
    )


def _hangs_model(config):
    """The digits MLP, except that a model with `hidden: 16` hangs forever in its 30th forward pass (a stuck
    collective, a dead data loader): it stops reporting without failing."""
    import time

    from orchestrator.workloads.digits import build_mlp

    model, steps = build_mlp(config), [0]

    def hook(module, inputs):
        steps[0] += 1
        if steps[0] == 30 and int(config["hidden"]) == 16:
            time.sleep(10**6)

    model.register_forward_pre_hook(hook)
    return model


def hangs() -> Workload:
    return dataclasses.replace(digits_mlp(), name="hangs", build_model=_hangs_model)
