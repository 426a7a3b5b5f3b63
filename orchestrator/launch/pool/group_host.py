"""The pool's group hosts (an actor per slot): each calls TorchTrainer.fit() on the resident workers of its slot,
and reports how the group ended as a GroupFailure (launch/protocol.py)."""

from __future__ import annotations

import traceback

import ray

from orchestrator.launch.protocol import GroupFailure
from orchestrator.launch.torch_trainer import ddp_trainer
from orchestrator.ray_support.ray_compat import (
    contains_error,
    group_failure_line,
    lost_node_error,
    message_of,
    on_the_head,
    train_knows_its_cluster,
)
from orchestrator.train.exceptions import FinalTrialError
from orchestrator.train.plan import TrialPlan


class GroupHost:
    """Calls TorchTrainer.fit() for one slot's group (as a Tune trial calls it for a fresh group)."""

    def run(self, pool: str, slot_id: int, plan: TrialPlan, generation: int) -> GroupFailure | None:
        # late: the workers train (torch); the driver, which creates this actor, never imports it
        from orchestrator.launch.trial_process import resident_worker

        trainer = ddp_trainer(
            resident_worker,
            {"pool": pool, "slot": slot_id, "plan": plan},
            plan,
            run_name=f"{pool}-slot{slot_id}-{generation}",
        )
        try:
            with train_knows_its_cluster():
                trainer.fit()
            return None
        except Exception as error:
            final = contains_error(error, FinalTrialError)
            return GroupFailure(final, _describe(error, final), not final and lost_node_error(error))


GroupHostActor = ray.remote(num_cpus=0)(GroupHost)


def new_host():
    # on the head (ray_compat.head_resource); Ray Train puts the group's controller on its host's node
    return GroupHostActor.options(max_restarts=0, resources=on_the_head()).remote()


def _describe(error: BaseException, final: bool) -> str:
    """The failure as the Tune trial raises it. A final error: its message (it says where). Anything else: the
    whole text of Ray Train's error (each failed rank's traceback), then one line saying what happened, which
    the trial's record and progress line show."""
    if final and (message := message_of(error, FinalTrialError)) is not None:
        return message
    text = "".join(traceback.format_exception(error))[-20_000:]
    return f"{text}\n{group_failure_line(error)}"
