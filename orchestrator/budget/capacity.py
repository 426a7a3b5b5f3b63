"""Can the cluster ever run one trial? Asked once, before the search, so a spec that asks for hardware nobody
offers fails in a second with the numbers, instead of a search whose trials wait forever (Ray Tune keeps an
infeasible trial PENDING, and an autoscaler keeps trying to launch for it).

What the cluster offers: its live nodes, and the node types its autoscaler may launch (each with its resources
and how many it may launch). A trial is `workers` bundles, each to be placed on one node whole (a Ray Train worker
cannot span nodes), plus the sliver of a CPU its Tune trial holds. The question is answered without Ray here
(`check_fit`), from an `Offer` that ray_compat reads off the cluster (cluster_offer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.errors import RunError
from orchestrator.ray_support.ray_compat import LOCAL_NODE_TYPE, autoscaler_node_types, live_nodes

_EPS = 1e-9


@dataclass(frozen=True)
class NodeShape:
    """A kind of node: its total resources, and how many of it there are (or may be)."""

    name: str  # "node 10.0.0.2" for a live node, the autoscaler's node type name for the others
    resources: Mapping[str, float]
    count: int = 1

    def holds(self, bundle: Mapping[str, float]) -> int:
        """How many `bundle`s one such node can hold at once."""
        fits = [
            math.floor((self.resources.get(name, 0.0) + _EPS) / amount)
            for name, amount in bundle.items()
            if amount > 0
        ]
        return min(fits, default=1_000_000)


@dataclass(frozen=True)
class Offer:
    live: tuple[NodeShape, ...]
    types: tuple[NodeShape, ...] = ()  # the autoscaler's node types (none: no autoscaler)
    autoscaler: bool = False
    unknown_types: bool = (
        False  # an autoscaler runs, but what it may launch could not be read: nothing is refused
    )
    embedded: bool = False  # this machine's Ray, started by hpo
    note: str = ""  # what the cluster is, for messages ("this machine's Ray (2 cores + 1 for Ray Train)")

    def shapes(self) -> tuple[NodeShape, ...]:
        return self.live + self.types


def cluster_offer(*, embedded: bool, note: str = "") -> Offer:
    """What the Ray this process is connected to offers (live nodes; the autoscaler's node types)."""
    live = tuple(NodeShape(f"node {n['name']}", n["resources"]) for n in live_nodes())
    types, autoscaler = ([], False) if embedded else autoscaler_node_types()
    shapes = tuple(NodeShape(t["name"], t["resources"], t["max"]) for t in types or ())
    return Offer(
        live, shapes, autoscaler=autoscaler, unknown_types=types is None, embedded=embedded, note=note
    )


def check_prices(budget, *, embedded: bool) -> None:
    """A cost budget needs a price for every node type a trial may run on: the live nodes' and the autoscaler's.
    Refuse one that lacks any, before the search, naming them (a trial on an unpriced node would cost nothing)."""
    if budget.cost is None:
        return
    kinds = {n["type"] for n in live_nodes()} if not embedded else {LOCAL_NODE_TYPE}
    if not embedded:
        types, _ = autoscaler_node_types()
        kinds |= {t["name"] for t in types or ()}
    missing = sorted(kinds - set(budget.prices))
    if missing:
        raise RunError(
            f"budget.prices has no price for node type(s) {', '.join(missing)} (this cluster's types: "
            f"{', '.join(sorted(kinds))}); add them (price per node-hour; 0 for free ones)"
        )


def _amount(value: float) -> str:
    return f"{value:g}"


def _offered(offer: Offer, resource: str) -> str:
    """What the cluster offers of `resource`, per node: 'the largest node has 4 (type gpu-a10g x0-8)'."""
    best = max(offer.shapes(), key=lambda s: s.resources.get(resource, 0.0), default=None)
    if best is None or best.resources.get(resource, 0.0) <= 0:
        where = "no live node" + (" and no autoscaler node type" if offer.autoscaler else "")
        return f"{where} offers {resource}"
    kind = "node type" if best in offer.types else "node"
    return f"the largest {kind} offering it, {best.name}, has {_amount(best.resources[resource])}"


def check_fit(bundle: Mapping[str, float], workers: int, driver_cpus: float, offer: Offer) -> int:
    """Raise RunError if one trial (`workers` x `bundle` on whole nodes, plus `driver_cpus` anywhere) can never be
    placed on what `offer` has or may launch; otherwise return how many such trials fit at once (0: unknown,
    the autoscaler's node types could not be read)."""
    if offer.unknown_types:
        return 0
    shapes = offer.shapes()
    for resource, amount in bundle.items():
        if amount <= 0:
            continue
        if not any(s.resources.get(resource, 0.0) + _EPS >= amount for s in shapes):
            raise RunError(_per_worker_message(resource, amount, bundle, offer))
    fits_per_node = [s for s in shapes if s.holds(bundle) > 0]
    if not fits_per_node:  # each resource fits somewhere, but no node has all of them together
        wanted = ", ".join(f"{k}: {_amount(v)}" for k, v in bundle.items() if v > 0)
        raise RunError(
            f"each worker needs {{{wanted}}} on one node, and no node{' or node type' if offer.autoscaler else ''} "
            f"has all of it together ({_shapes_line(offer)}); change train.resources_per_worker or the cluster"
        )
    capacity = sum(s.holds(bundle) * s.count for s in shapes)
    if capacity < workers:
        cpus = bundle.get("CPU", 0.0)
        if offer.embedded and set(bundle) <= {"CPU"}:
            raise RunError(
                f"one trial needs {_amount(workers * cpus)} CPUs (train.workers {workers} x train.cpus_per_worker "
                f"{_amount(cpus)}) but {offer.note or 'this Ray'} has {_amount(_total(offer, 'CPU'))}; lower "
                "train.cpus_per_worker or train.workers, or run on a cluster (--address)"
            )
        raise RunError(
            f"one trial needs {workers} workers of {_bundle_line(bundle)} on whole nodes, and "
            f"{'all nodes the cluster has or may launch' if offer.autoscaler else 'the live nodes'} hold "
            f"{capacity} ({_shapes_line(offer)}); lower train.workers or add nodes"
        )
    per_trial_cpus = workers * bundle.get("CPU", 0.0) + driver_cpus
    if _total(offer, "CPU") + _EPS < per_trial_cpus:
        raise RunError(
            f"one trial needs {_amount(per_trial_cpus)} CPUs in all (its workers and its Tune trial) but "
            f"{offer.note or 'the cluster'} has {_amount(_total(offer, 'CPU'))}; lower train.cpus_per_worker"
        )
    return capacity // workers


def _per_worker_message(resource: str, amount: float, bundle: Mapping[str, float], offer: Offer) -> str:
    if resource.startswith("accelerator_type:"):
        kind = resource.split(":", 1)[1]
        return (
            f"train.accelerator_type: {kind}: no node{' or node type' if offer.autoscaler else ''} has {kind} "
            f"GPUs ({_accelerators(offer)}); pick one of those or run where {kind} GPUs are"
        )
    if resource == "CPU" and offer.embedded:
        return (
            f"train.cpus_per_worker is {_amount(amount)} but {offer.note or 'this Ray'} has "
            f"{_amount(_total(offer, 'CPU'))} CPUs, and a worker runs on one node; lower it, or run on a cluster "
            "(--address)"
        )
    if resource == "GPU":
        return (
            f"train.use_gpu is true ({_amount(amount)} GPU(s) per worker: train.gpus_per_worker), but "
            f"{_offered(offer, 'GPU')} ({_shapes_line(offer)}); "
            f"set use_gpu: false or run {'on GPU nodes (--address)' if offer.embedded else 'where GPUs are'}"
        )
    field_name = "train.cpus_per_worker" if resource == "CPU" else f"train.resources_per_worker.{resource}"
    return (
        f"{field_name}: each worker needs {resource}: {_amount(amount)} on one node, and "
        f"{_offered(offer, resource)} ({_shapes_line(offer)}); lower it or run where the cluster offers it"
    )


def _accelerators(offer: Offer) -> str:
    kinds = sorted(
        {
            name.split(":", 1)[1]
            for s in offer.shapes()
            for name, value in s.resources.items()
            if name.startswith("accelerator_type:") and value > 0
        }
    )
    return "the cluster offers " + (", ".join(kinds) if kinds else "no accelerator type")


def _total(offer: Offer, resource: str) -> float:
    return sum(s.resources.get(resource, 0.0) * s.count for s in offer.shapes())


def _bundle_line(bundle: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {_amount(v)}" for k, v in bundle.items() if v > 0) + "}"


def _shapes_line(offer: Offer, limit: int = 4) -> str:
    """What the cluster offers, short: 'live: node 10.0.0.2 {CPU: 2}; may launch: gpu-a10g x0-4 {CPU: 8, GPU: 1}'."""

    def describe(shape: NodeShape) -> str:
        main = {
            k: v for k, v in shape.resources.items() if not k.startswith(("node:", "memory", "object_store"))
        }
        return f"{shape.name}{f' x{shape.count}' if shape.count != 1 else ''} {_bundle_line(main)}"

    parts = []
    if offer.live:
        shown = [describe(s) for s in offer.live[:limit]]
        more = f" and {len(offer.live) - limit} more" if len(offer.live) > limit else ""
        parts.append("live: " + ", ".join(shown) + more)
    if offer.types:
        parts.append("may launch: " + ", ".join(describe(s) for s in offer.types[:limit]))
    elif offer.autoscaler:
        parts.append("the autoscaler's node types could not be read")
    return "; ".join(parts) or "no nodes"


def check_resources(bundle: dict, workers: int, driver_cpus: float, *, embedded: bool, progress) -> int:
    """Refuse, before anything is written, a job whose trials no live node and no node type of the cluster's
    autoscaler can ever hold (Tune would keep them PENDING forever, an autoscaler would keep trying); returns
    how many trials fit at once (0: unknown)."""
    offer = cluster_offer(embedded=embedded, note="this machine's Ray" if embedded else "")
    if offer.unknown_types:
        progress(
            "resources: the cluster's autoscaler node types could not be read; not checked before the search"
        )
    return check_fit(bundle, workers, driver_cpus, offer)
