"""What a trial's GPU did while the trial held it, measured in the trial's process and sent with each report
(results/schema.py's GPU_UTIL and GPU_MEM_PEAK): the ledger keeps them per trial (budget/ledger.py) and `hpo
results show` says how many of the GPU-hours held were idle.

- Utilization: NVML's "percent of the last sample period during which a kernel ran" on the trial's device,
  sampled every INTERVAL_S by a thread, averaged over the attempt. It is the whole device's: trials that share a
  GPU (train.gpus_per_worker < 1) each see the same figure, which is what makes "idle GPU-hours" add up (each
  trial's share of the GPU times the device's idle share). torch.cuda.utilization reads it through pynvml
  (nvidia-ml-py) and maps torch's device index to NVML's through CUDA_VISIBLE_DEVICES; without pynvml or NVML
  (a driver without it, a container that hides it) the utilization is unknown (None), never a guess.
- Peak memory: torch's caching allocator's high-water mark on the device since the attempt began
  (torch.cuda.max_memory_allocated), in GiB: what this trial's tensors needed, not what the process reserved.

A DDP trial's row is rank 0's report, so its figures are rank 0's GPU. On the CPU nothing is measured and
reports carry neither key.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Callable

import torch

from orchestrator.results.schema import GPU_MEM_PEAK, GPU_UTIL

_GIB = float(2**30)


class GpuMeter:
    INTERVAL_S = 0.5

    def __init__(
        self,
        device: str,
        *,
        utilization: Callable[[torch.device], float] | None = None,
        peak_memory: Callable[[torch.device], int] | None = None,
    ):
        """`utilization` and `peak_memory` default to torch.cuda's readers (tests on a machine without a GPU pass
        their own)."""
        self.device = torch.device(device)
        self.active = self.device.type == "cuda"
        self._utilization = utilization or torch.cuda.utilization
        self._peak_memory = peak_memory or torch.cuda.max_memory_allocated
        self.samples: list[float] = []
        self.unavailable: str | None = None  # why utilization is not measured, once known
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuMeter:
        if not self.active:
            return self
        if self._peak_memory is torch.cuda.max_memory_allocated:
            torch.cuda.reset_peak_memory_stats(self.device)  # this attempt's peak, not an earlier trial's
        if self._sample():  # NVML answers: sample on while the attempt trains
            self._thread = threading.Thread(target=self._run, name="hpo-gpu-meter", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _sample(self) -> bool:
        try:
            self.samples.append(float(self._utilization(self.device)))
        except Exception as error:  # no pynvml, no NVML, a device NVML cannot see: unknown, said once
            self.unavailable = f"{type(error).__name__}: {error}"
            return False
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL_S) and self._sample():
            pass

    def reading(self) -> dict[str, float | None]:
        """The keys a report carries: mean utilization (percent) so far, None if not measured; peak memory."""
        if not self.active:
            return {}
        try:
            peak = round(self._peak_memory(self.device) / _GIB, 4)
        except Exception:
            peak = None
        util = round(statistics.fmean(self.samples), 2) if self.samples else None
        return {GPU_UTIL: util, GPU_MEM_PEAK: peak}
