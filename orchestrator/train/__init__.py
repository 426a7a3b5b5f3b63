"""What runs inside a trial: its plan (plan.py), the standard training loop (loop.py), checkpoints
(checkpoints.py), seeding and deterministic execution (determinism.py), and the trial entry (trial.py)."""
