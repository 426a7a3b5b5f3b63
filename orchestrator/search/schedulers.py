"""When to stop a trial early: the schedulers a spec can name, each listed once with its options and defaults.

The spec's `scheduler:` section is built from this registry (spec/model.py): its `type`, every scheduler's
options with their bounds and defaults, and the rule that an option belongs to its scheduler. Its Ray Tune form
is tuning/forms.py's (TUNE_SCHEDULERS).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, StrictInt

from orchestrator.search.distributions import Float


@dataclass(frozen=True)
class Option:
    type: Any  # a pydantic type with its bounds, e.g. Annotated[StrictInt, Field(gt=0)]
    default: Any
    help: str


class Scheduler:
    name: str = ""
    help: str = ""
    options: Mapping[str, Option] = {}
    multi_objective: bool = True  # can schedule a search of several objectives
    adapts_configs: bool = False  # changes a trial's hyperparameters while it trains (PBT)

    def settings(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """This scheduler's options: those given, the defaults for the rest."""
        return {
            name: given.get(name) if given.get(name) is not None else option.default
            for name, option in self.options.items()
        }

    def check(self, settings: Mapping[str, Any], max_epochs: int) -> None:
        """Raise ValueError if these settings cannot work for trials of `max_epochs`."""


class Fifo(Scheduler):
    name = "fifo"
    help = "run every trial to train.max_epochs"


class Asha(Scheduler):
    name = "asha"
    help = (
        "asynchronous successive halving: at each rung, stop all but the best 1/reduction_factor (with several "
        "objectives, ranked by Pareto front and crowding, as MOASHA)"
    )
    options = {
        "grace_period": Option(Annotated[StrictInt, Field(gt=0)], 1, "epochs before a trial may be stopped"),
        "reduction_factor": Option(
            Annotated[Float, Field(gt=1, le=100)], 3.0, "keep the top 1/reduction_factor at each rung"
        ),
    }

    def check(self, settings: Mapping[str, Any], max_epochs: int) -> None:
        if settings["grace_period"] > max_epochs:
            raise ValueError(
                f"scheduler.grace_period {settings['grace_period']} is above train.max_epochs "
                f"{max_epochs}; ASHA could never stop a trial"
            )


class Pbt(Scheduler):
    name = "pbt"
    help = (
        "population based training, synchronous: every perturbation_interval epochs the bottom quantile of the "
        "trials continue from a top trial's latest checkpoint with its hyperparameters perturbed (x0.8 or x1.2, "
        "a choice's neighbour) or, with resample_probability, drawn again; one metric; seeded, so a rerun "
        "repeats it"
    )
    multi_objective = False
    adapts_configs = True  # changes a trial's hyperparameters while it trains
    options = {
        "perturbation_interval": Option(
            Annotated[StrictInt, Field(gt=0)], 2, "epochs between exploit/explore steps"
        ),
        "quantile": Option(
            Annotated[Float, Field(gt=0, le=0.5)],
            0.25,
            "the share of trials that copy a top trial (and the share they copy from)",
        ),
        "resample_probability": Option(
            Annotated[Float, Field(ge=0, le=1)],
            0.25,
            "chance that a hyperparameter is drawn again from its distribution instead of perturbed",
        ),
    }

    def check(self, settings: Mapping[str, Any], max_epochs: int) -> None:
        if settings["perturbation_interval"] >= max_epochs:
            raise ValueError(
                f"scheduler.perturbation_interval {settings['perturbation_interval']} is not below "
                f"train.max_epochs {max_epochs}; PBT would never exploit"
            )


SCHEDULERS: dict[str, Scheduler] = {s.name: s for s in (Fifo(), Asha(), Pbt())}
