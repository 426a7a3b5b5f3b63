"""The warm pool of worker groups for multi-worker trials: one resident Ray Train TorchTrainer per concurrency
slot, whose workers run the job's trials one after another.

Ray Train starts a new worker group for every TorchTrainer.fit() (measured here: 20-30 s of a 2-worker trial's
start: actors, a process group, the torch import, the workload's data). A job's trials all ask for the same
workers, so a group can outlive its trial. The pieces:

- `PoolCoordinator` (coordinator.py, an async actor, one per run): a queue of trials waiting for a group, the slots, and the
  relay of every report from a group's rank 0 to the Tune trial that owns the config (and Tune's answer back).
  It starts its first group as it opens, so that group's cold start overlaps Tune's setup.
- `GroupHost` (group_host.py, an actor per slot): calls `TorchTrainer.fit()` on `resident_worker`, and reports
  how it ended (a `GroupFailure`, launch/protocol.py).
- `resident_worker` (trial_process.py, each Ray Train worker): asks the coordinator for its slot's next trial, trains it with
  `train_trial` (the same code as a fresh group), and asks again.
- `relay` (relay.py, called by the Tune function trainable of a multi-worker trial, launcher.py): submits its config, then turns
  each relayed report into `tune.report`; when that returns, Tune wants more, and the worker is told to go on.

A report waits for Tune's answer, as a Tune function trainable's does (synchronous reporting): a trial stopped
by the scheduler stops at that report, on every rank (rank 0 broadcasts the answer), by raising TrialStopped
through the training code, and the group takes the next trial. A trial that fails (a rank raises, a process or
node dies, the watchdog gives up on it) takes its group with it: Ray Train tears the workers down, the slot
starts a fresh group for the next trial, and no trial ever runs on a group that a failure may have left in a
bad state. Retries, resume and reproduce see exactly what a fresh group gives (the tests compare them).
"""

from orchestrator.launch.pool.coordinator import connect, start_pool
from orchestrator.launch.pool.relay import WorkerGroupFailed, relay

__all__ = ["WorkerGroupFailed", "connect", "relay", "start_pool"]
