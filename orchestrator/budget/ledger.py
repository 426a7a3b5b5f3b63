"""What each trial held, for how long, and what it cost; and the budget that stops a search.

A trial holds its resources (its workers' CPUs and GPUs; a DDP trial's relaying Tune process holds none) from
the moment Tune starts it to the moment it ends, across every attempt: wall_s is the sum of its attempts'
walls, cpu_s and gpu_s that times what it held. Its cost is its share of its node's price for that time: the
price per node-hour of its node type (budget.prices), times the fraction of the node it held (its GPUs of the
node's GPUs, or for a CPU trial its CPUs of the node's CPUs; a DDP trial across two whole nodes holds 2). A
multi-worker trial is charged at its rank 0's node type (the workers of one trial run on one node type in
every cluster we know).

What the trial's GPU did (train/gpu_meter.py, in the trial's reports) is kept beside it: gpu_util, NVML's
utilization of its device averaged over its attempts by their walls (null where no attempt could read NVML),
and gpu_mem_peak_gb, the highest of its attempts' peaks. The GPU-hours held but idle are then each trial's
gpu_s x (1 - gpu_util / 100) (results/summary.py's ledger_totals).

The totals include what running trials have held so far, so a budget is checked against what is spent, not
what has ended. Once any limit is reached the budget is exhausted: the search starts no new trial, the running
ones finish (or stop at their next report with budget.stop_running), and the run's status is budget_exhausted.
What a resumed run's records say was spent counts too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from orchestrator.ray_support.ray_compat import LOCAL_NODE_TYPE, live_nodes
from orchestrator.results.schema import GPU_MEM_PEAK, GPU_UTIL
from orchestrator.results.summary import ledger_totals

LEDGER_COLUMNS = ("node_type", "wall_s", "cpu_s", "gpu_s", GPU_UTIL, GPU_MEM_PEAK, "cost")
_HOUR = 3600.0


class Ledger:
    def __init__(
        self,
        *,
        cpus: float,
        gpus: float,
        limits: Mapping[str, float] | None = None,
        prices: Mapping[str, float] | None = None,
        nodes: Callable[[], list[dict]] = live_nodes,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cpus, self.gpus = cpus, gpus  # what one trial holds
        self.limits, self.prices = dict(limits or {}), dict(prices or {})
        self._nodes, self._clock = nodes, clock
        self._known: dict[str, dict] = {}  # node id -> {"type", "resources"}
        self.held: dict[str, float] = {}  # trial -> seconds held by its ended attempts
        self.since: dict[str, float] = {}  # running trial -> when its attempt started
        self.node: dict[str, str] = {}  # trial -> node id (rank 0's)
        self.exhausted: str | None = None  # the limit reached, once it is
        self.unpriced: set[str] = set()  # node types without a price (counted as 0), to say so once
        self._closed: dict[str, dict] = {}  # trial not running -> its entry (totals add these up once)
        self._sums: dict[str, float] = {"wall_s": 0.0, "cpu_s": 0.0, "gpu_s": 0.0}
        self._costs: dict[str, float] = {}  # node type -> cost of the closed entries
        self.gpu_now: dict[str, tuple] = {}  # running trial -> (util, peak) its attempt last reported
        self.gpu_past: dict[str, tuple] = {}  # trial -> (util x wall, wall measured, peak) of ended attempts

    # -- events ----------------------------------------------------------------------------------------------
    def preload(self, records: list[dict]) -> None:
        """`hpo resume`: what the killed run's trials held counts (their records say)."""
        for record in records:
            name = record["trial_id"]
            self.held[name] = float(record.get("wall_s") or 0.0)
            entry = {k: record.get(k) for k in LEDGER_COLUMNS}
            for key in self._sums:
                entry[key] = float(entry[key] or 0.0)
            util, peak = entry[GPU_UTIL], entry[GPU_MEM_PEAK]
            measured = self.held[name] if util is not None else 0.0
            self.gpu_past[name] = ((util or 0.0) * measured, measured, peak)
            self._close(name, entry)

    def started(self, name: str) -> None:
        self.since[name] = self._clock()
        old = self._closed.pop(name, None)  # a retry: its running entry covers the earlier attempts too
        if old is not None:
            _accumulate(self._sums, self._costs, old, -1)

    def ended(self, name: str) -> None:
        if name in self.since:
            attempt = self._clock() - self.since[name]
            self._fold_gpu(name, attempt)
            self.held[name] = self.held.get(name, 0.0) + attempt
            del self.since[name]
            self._close(name, self.entry(name))

    def gpu_measured(self, name: str, util: float | None, peak: float | None) -> None:
        """What the running attempt of `name` reported of its GPU so far (its latest report's figures)."""
        self.gpu_now[name] = (util, peak)

    def _fold_gpu(self, name: str, attempt_s: float) -> None:
        util, peak = self.gpu_now.pop(name, (None, None))
        weighted, measured, top = self.gpu_past.get(name, (0.0, 0.0, None))
        if util is not None:
            weighted, measured = weighted + util * attempt_s, measured + attempt_s
        self.gpu_past[name] = (weighted, measured, _highest(top, peak))

    def gpu_entry(self, name: str) -> dict:
        """gpu_util (wall-weighted over the attempts that measured it) and gpu_mem_peak_gb, as they stand."""
        weighted, measured, peak = self.gpu_past.get(name, (0.0, 0.0, None))
        if name in self.since and name in self.gpu_now:
            util, now_peak = self.gpu_now[name]
            peak = _highest(peak, now_peak)
            if util is not None:  # weighs at least a little: a first report may come at the attempt's start
                running = max(self._clock() - self.since[name], 1e-9)
                weighted, measured = weighted + util * running, measured + running
        util = round(weighted / measured, 2) if measured > 0 else None
        return {GPU_UTIL: util, GPU_MEM_PEAK: peak}

    def _close(self, name: str, entry: dict) -> None:
        old = self._closed.pop(name, None)
        if old is not None:
            _accumulate(self._sums, self._costs, old, -1)
        _accumulate(self._sums, self._costs, entry, 1)
        self._closed[name] = entry

    def ran_on(self, name: str, node_id: str) -> None:
        self.node[name] = node_id

    # -- what was spent ----------------------------------------------------------------------------------------
    def node_info(self, node_id: str | None) -> dict:
        if not node_id:
            return {"type": LOCAL_NODE_TYPE, "resources": {}}
        if node_id not in self._known:
            try:
                for node in self._nodes():
                    self._known[node["id"]] = {"type": node["type"], "resources": node["resources"]}
            except Exception:  # the ledger must not fail a run: an unknown node is charged as local
                pass
            self._known.setdefault(node_id, {"type": LOCAL_NODE_TYPE, "resources": {}})
        return self._known[node_id]

    def wall_s(self, name: str) -> float:
        running = self._clock() - self.since[name] if name in self.since else 0.0
        return self.held.get(name, 0.0) + running

    def entry(self, name: str) -> dict:
        """The trial's ledger columns as they stand now."""
        wall = self.wall_s(name)
        info = self.node_info(self.node.get(name))
        return {
            "node_type": info["type"] if name in self.node else None,
            "wall_s": round(wall, 3),
            "cpu_s": round(wall * self.cpus, 3),
            "gpu_s": round(wall * self.gpus, 3),
            **self.gpu_entry(name),
            "cost": self._cost(wall, info) if self.prices else None,
        }

    def _cost(self, wall: float, info: dict) -> float:
        price = self.prices.get(info["type"])
        if price is None:
            self.unpriced.add(info["type"])
            return 0.0
        have = info["resources"]
        if self.gpus and have.get("GPU"):
            share = self.gpus / have["GPU"]
        elif have.get("CPU"):
            share = self.cpus / have["CPU"]
        else:
            share = 1.0
        return round(wall / _HOUR * price * share, 6)

    def totals(self) -> dict:
        """The run's totals so far (running trials included): trial, CPU and GPU hours, the cost, and the cost
        by node type (None and {} without prices)."""
        sums, costs = dict(self._sums), dict(self._costs)
        for name in self.since:
            _accumulate(sums, costs, self.entry(name), 1)
        return {
            "trial_hours": round(sums["wall_s"] / _HOUR, 6),
            "cpu_hours": round(sums["cpu_s"] / _HOUR, 6),
            "gpu_hours": round(sums["gpu_s"] / _HOUR, 6),
            "cost": round(sum(costs.values()), 6) if self.prices else None,
            "cost_by_node_type": {k: round(v, 6) for k, v in sorted(costs.items())} if self.prices else {},
        }

    def final_totals(self) -> dict:
        """The totals once the run has ended, from each trial's entry in trial order (results/summary.py's
        ledger_totals): exactly what `hpo results show` adds up from trials.parquet. `totals()` keeps running
        sums for the budget checks during the run, which float drift can move by a last digit."""
        entries = {**self._closed, **{name: self.entry(name) for name in self.since}}
        return ledger_totals((entries[name] for name in sorted(entries)), priced=bool(self.prices))

    def check(self) -> str | None:
        """The limit newly reached, if one is (once); None otherwise."""
        if self.exhausted or not self.limits:
            return None
        totals = self.totals()
        for limit, allowed in self.limits.items():
            if (totals[limit] or 0.0) >= allowed:
                self.exhausted = f"{limit} {totals[limit]:.4g} of {allowed:g}"
                return self.exhausted
        return None


def _highest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _accumulate(sums: dict[str, float], costs: dict[str, float], entry: dict, sign: int) -> None:
    """Add (sign 1) or take away (-1) one trial's entry from running totals: seconds held, cost by node type."""
    for key in sums:
        sums[key] += sign * entry[key]
    if entry["cost"] is not None:
        kind = entry["node_type"] or LOCAL_NODE_TYPE
        costs[kind] = costs.get(kind, 0.0) + sign * entry["cost"]
