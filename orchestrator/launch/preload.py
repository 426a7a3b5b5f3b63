"""What a warm trial process imports before its first trial (ray_env.WarmTrials: the workers an embedded Ray
or a warm session starts ahead): the trial side (trial_process: torch, Tune, train/), and what torch imports at
a trial's first step.

torch imports torch._dynamo and torch._inductor at a process's first `use_deterministic_algorithms` call (every
trial makes it: train/determinism.py) and at its first optimizer step: 1.2 s of CPU measured here, once per
process. In a process started ahead it is paid while no trial waits for it (a warm trial's first report came
1.1 s after its start without this, 0.05 s with it). The setting is put back as it was.
"""

from __future__ import annotations

import torch

from orchestrator.launch.trial_process import train_in_process  # noqa: F401  (what run_in_process calls)

if not torch.are_deterministic_algorithms_enabled():
    torch.use_deterministic_algorithms(True)
    torch.use_deterministic_algorithms(False)
