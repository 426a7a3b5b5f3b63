"""What runs inside a trial: its plan (plan.py), the standard training loop (loop.py), checkpoints
(checkpoints.py), seeding and deterministic execution (determinism.py), and the trial entry (trial.py).

For a user's own loop, Ray Train's module-level API: `from orchestrator import train`, then `train.report(metrics,
checkpoint=...)`, `train.get_checkpoint()` and `train.get_context()` inside the workload's train function, exactly
as the `ctx` it is given. Loaded on first use: the driver imports this package (plan.py) and never torch.
"""

_PUBLIC = ("report", "get_checkpoint", "get_context")


def __getattr__(name: str):
    if name in _PUBLIC:
        from orchestrator.train import context  # heavy: torch, which only a trial's process needs

        return getattr(context, name)
    raise AttributeError(f"module 'orchestrator.train' has no attribute {name!r}")
