"""Population based training as a Tune scheduler: synchronous, seeded, and run through our own store.

Every `perturbation_interval` epochs each trial stops at its report (Tune pauses it, freeing its slot) until the
whole population has reached that epoch; then search/pbt.py decides, from the reports' scores and a generator
seeded by (job seed, step), which trials of the bottom quantile continue from which of the top, and with what
hyperparameters. Nothing depends on which trial reported first, so a rerun takes the same decisions.

A trial that continues does so in a new process (Tune starts it again with its config, changed or not). Where it
continues from is not Tune's business: `on_step` (the driver's, execution/runner.py) records for each trial
the checkpoint it continues from, its own latest or its donor's, and the trial reads it through the run's store
at its start (train/trial.py). Tune's own checkpoints are never used.

At most `max_concurrent` trials run at once: every trial of the population is created up front (the searcher's
limit is the population) and this scheduler starts the next one only when fewer run. A paused trial frees its
slot, so a population larger than max_concurrent trains in turns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from orchestrator.ray_support.ray_compat import hold_trial, trial_name
from orchestrator.results import config_of
from orchestrator.search.objectives import Objective
from orchestrator.search.pbt import exploits, explore, step_rng
from orchestrator.search.space import Space


@dataclass(frozen=True)
class Step:
    """One synchronous step: at `epoch`, the trials that reached it (`participants`) and `moves` (recipient ->
    (donor, its new config)); every other participant continues from its own latest checkpoint."""

    number: int
    epoch: int
    participants: tuple[str, ...]
    moves: dict[str, tuple[str, dict]] = field(default_factory=dict)


class SyncPbt(FIFOScheduler):
    def __init__(
        self,
        *,
        objective: Objective,
        space: Space,
        seed: int,
        population: int,
        max_concurrent: int,
        max_epochs: int,
        time_attr: str,
        settings: Mapping[str, Any],
    ):
        super().__init__()
        self.objective, self.space, self.seed = objective, space, seed
        self.population, self.max_concurrent, self.time_attr = population, max_concurrent, time_attr
        self.max_epochs = max_epochs
        self.interval = int(settings["perturbation_interval"])
        self.quantile = float(settings["quantile"])
        self.resample_probability = float(settings["resample_probability"])
        self.scores: dict[str, float | None] = {}  # at the current boundary, by trial name
        self.ended: set[str] = set()  # trials that left the population (finished, failed for good)
        self.steps = 0
        self.next_epoch = self.interval  # the boundary every trial trains to next
        # the driver's (execution/pbt.py): it carries out a step and returns the moves that happen
        self.on_step: Callable[[Step], dict[str, tuple[str, dict]]] | None = None
        self.on_pause: Callable[[str], None] | None = None  # the driver's: a trial waits for the step
        self.on_arrival: Callable[[Trial, dict], None] | None = None  # the driver's: records the report
        self.resumed_configs: dict[str, dict] = {}  # hpo resume: trial -> config for its next epoch
        # hpo resume: trial -> (donor, epoch) of its last exploit
        self.lineage: dict[str, tuple[str, int]] = {}
        self.step_due = False

    # -- results ----------------------------------------------------------------------------------------
    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        if tune_controller is None:  # hpo resume passing over a finished trial (restore() took its steps)
            return TrialScheduler.CONTINUE
        epoch = result.get(self.time_attr)
        if epoch is None or epoch < self.next_epoch or epoch >= self.max_epochs:  # the last epoch just ends
            return TrialScheduler.CONTINUE
        self.scores[trial_name(trial)] = self._score(result)
        if self.on_arrival is not None:  # Tune tells its scheduler before its callbacks: the row first
            self.on_arrival(trial, result)
        self._maybe_step(tune_controller)
        tune_controller.pause_trial(trial, should_checkpoint=False)  # our store holds the checkpoint
        if self.on_pause is not None:
            self.on_pause(trial_name(trial))
        return TrialScheduler.NOOP

    def _maybe_step(self, tune_controller) -> None:
        """Take the step once every trial still in the population has reached the boundary."""
        if not self.scores or len(self.scores) + len(self.ended) < self.population:
            return
        rng = step_rng(self.seed, self.steps)
        trials = {trial_name(t): t for t in tune_controller.get_trials()}
        moves = {}
        for recipient, donor in exploits(self.scores, self.quantile, rng).items():
            donor_config = {k: v for k, v in trials[donor].config.items() if k in self.space.names}
            new = explore(donor_config, self.space, rng, self.resample_probability)
            moves[recipient] = (donor, new)
        step = Step(self.steps, self.next_epoch, tuple(sorted(self.scores)), moves)
        if self.on_step is not None:
            moves = self.on_step(step)
        for recipient, (_, new) in moves.items():
            trial = trials[recipient]
            trial.set_config({**trial.config, **new})
        self.steps += 1
        self.next_epoch += self.interval
        self.scores = {}

    def _left(self, tune_controller, trial: Trial) -> None:
        name = trial_name(trial)
        self.ended.add(name)
        self.scores.pop(name, None)
        if tune_controller is not None:  # (None: hpo resume passing over a finished trial)
            self._maybe_step(tune_controller)

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._left(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self._left(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        if trial_name(trial) not in self.ended:
            self._left(tune_controller, trial)

    # -- hpo resume -----------------------------------------------------------------------------------------
    def restore(self, rows: Mapping[str, list[dict]], ended: set[str]) -> dict[str, tuple[int, str]]:
        """Take the state a killed run had reached, from its stored rows (trial -> rows in epoch order; `ended`:
        the trials that finished or failed for good): every step whose epoch some trial trained past is taken
        again from the rows' scores (the same decisions: search/pbt.py is seeded), each trial gets the config
        in force for its next epoch, and the trials that reached the current boundary wait for its step.
        Returns the exploits a trial has not carried out yet (it stopped at the step's epoch): trial -> (epoch,
        donor). Raises ValueError where a step taken now differs from what the rows say the run did."""
        epochs = {t: {r["iteration"]: r for r in trial_rows} for t, trial_rows in rows.items() if trial_rows}
        last = {t: max(e) for t, e in epochs.items()}
        self.ended = set(ended)
        configs = {t: self._config(e[min(e)]) for t, e in epochs.items()}
        pending: dict[str, tuple[int, str]] = {}
        lineage: dict[str, tuple[str, int]] = {}
        while self.next_epoch < self.max_epochs:
            b = self.next_epoch
            at_b = {t: e[b] for t, e in epochs.items() if b in e and t not in self.ended}
            self.scores = {t: self._score(row) for t, row in at_b.items()}
            if not any(n > b for n in last.values()):  # nobody trained past b: its step is still to come
                break
            rng = step_rng(self.seed, self.steps)
            for recipient, donor in exploits(self.scores, self.quantile, rng).items():
                new = explore(self._config(at_b[donor]), self.space, rng, self.resample_probability)
                after = epochs[recipient].get(b + 1)
                if after is not None and (self._config(after), after.get("parent_trial")) != (new, donor):
                    raise ValueError(
                        f"step {self.steps + 1} at epoch {b}: {recipient} continued from {after.get('parent_trial')} "
                        f"with {self._config(after)}; taken again, it continues from {donor} with {new}"
                    )
                configs[recipient], lineage[recipient] = new, (donor, b)
                if last[recipient] == b:
                    pending[recipient] = (b, donor)
            self.steps += 1
            self.next_epoch += self.interval
            self.scores = {}
        self.resumed_configs, self.lineage = configs, lineage
        self.step_due = bool(self.scores) and len(self.scores) + len(self.ended) >= self.population
        return pending

    def _config(self, row: dict) -> dict:
        return self.space.from_row(config_of(row))

    def _score(self, report: dict) -> float | None:
        """A report's (or a stored row's) score, minimized; None without the metric."""
        value = report.get(self.objective.metric)
        return None if value is None else self.objective.as_minimized(value)

    # -- which trial runs next ---------------------------------------------------------------------------
    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        hold_trial(trial)  # it starts when chosen below, not whenever a CPU is free
        config = self.resumed_configs.get(trial_name(trial))
        if config is not None:  # a resumed run's: the config in force for its next epoch
            trial.set_config(
                {**{k: v for k, v in trial.config.items() if k not in self.space.names}, **config}
            )

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        """A trial that has not reached the boundary yet, in creation order, while fewer than max_concurrent
        run or are starting (a paused trial at the boundary waits for the step)."""
        if self.step_due:  # a resumed run whose whole population had reached the boundary
            self.step_due = False
            self._maybe_step(tune_controller)
        trials = tune_controller.get_trials()
        if sum(1 for t in trials if t.status in (Trial.RUNNING, Trial.PENDING)) >= self.max_concurrent:
            return None
        for trial in trials:
            if trial.status in (Trial.PENDING, Trial.PAUSED) and trial_name(trial) not in self.scores:
                return trial
        return None

    def debug_string(self) -> str:
        return f"synchronous PBT: {self.steps} step(s), next at epoch {self.next_epoch}"
