"""What the dashboard shows, read from the stored tables (the one source of truth: nothing is copied into a second
store that could drift). A run is read incrementally: its results files are immutable and named by the manifest,
so a refresh reads the manifest and decodes only the files it names for the first time (a compaction's file once,
the part files it replaced dropped); trials.parquet and run.json are small and read whole.

Every view is a plain JSON-able dict built from pyarrow tables; app.py serves them. Nothing here imports Ray or
torch."""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.errors import ResultsNotFound, SpecError
from orchestrator.results.layout import RUN_FILE, SANITY_RUN_PREFIX, SPEC_FILE, TRIALS_FILE
from orchestrator.results.ops import list_runs
from orchestrator.results.reader import (
    TRIALS_COLUMNS,
    best_per_trial,
    best_row,
    constraints_of,
    decode_stored,
    objectives_of,
    parse_json,
    read_new_result_files,
    search_metric,
)
from orchestrator.results.schema import CONFIG_PREFIX, GPU_MEM_PEAK, GPU_UTIL, LINEAGE_COLUMNS, metric_columns
from orchestrator.search.objectives import hypervolume, point_of
from orchestrator.spec import parse_spec
from orchestrator.spec.yaml_load import load_yaml_text
from orchestrator.storage import Store, join_uri, open_store

REFRESH_S = 0.5  # a run's tables are read again at most this often, however many views ask
CURVES_SHOWN = 20  # learning curves drawn by default: the best trials so far, and the running ones
IMPORTANCE_TRIALS = 2000  # fANOVA fits a forest: on at most the latest this many finished trials
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a job's name or a run id (never a path)
_SECRET = re.compile(r"secret|access_?key|password|token|session|credential", re.I)


def redacted(value):
    """A spec (or any mapping) with every value under a key that names a secret replaced: a spec refuses
    credentials, but the page never shows one even if a stored spec were edited to hold one."""
    if isinstance(value, dict):
        return {k: "***" if _SECRET.search(str(k)) else redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


def _finite(value):
    """A float for JSON: None for null, NaN and inf (JSON has none of them)."""
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunTables:
    """One run's tables, kept up to date by refresh(): `rows` (every report, in the manifest's file order),
    `trials` (trials.parquet), `info` (run.json), `spec` (spec.yaml as a mapping); `version` changes whenever
    any of them did."""

    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()
        self._files: dict[str, pa.Table] = {}  # results file -> its decoded rows
        self._trials_digest = b""
        self._checked = 0.0
        self.rows: pa.Table | None = None
        self.trials: pa.Table | None = None
        self.info: dict = {}
        self.spec: dict = {}
        self.total: int | None = None  # the trials the search will run (the spec's)
        self.version = ""
        self.decoded = 0  # results files decoded so far (how incremental the reading is, for tests)

    def refresh(self, *, force: bool = False) -> RunTables:
        with self._lock:
            if force or time.monotonic() - self._checked >= REFRESH_S:
                self._read()
                self._checked = time.monotonic()
        return self

    def _read(self) -> None:
        try:
            self.info = parse_json(self.store, RUN_FILE, self.store.read_bytes(RUN_FILE))
        except FileNotFoundError:
            self.info = {}
        if not self.spec:  # written once, at the run's start
            try:
                self.spec = load_yaml_text(self.store.read_bytes(SPEC_FILE)) or {}
            except FileNotFoundError:
                self.spec = {}
            try:
                self.total = parse_spec(self.spec, check_workload=False).search.num_trials()
            except (SpecError, AttributeError, TypeError):
                self.total = None
        try:
            files, read = read_new_result_files(self.store, self._files)
        except ResultsNotFound:  # no results file yet: a run that has just started
            files, read = [], {}
        fresh = {
            f: self._files[f] if f in self._files else decode_stored(self.store, f, read[f]) for f in files
        }
        self.decoded += len(read)
        if list(fresh) != list(self._files) or (self.rows is None and fresh):
            self._files = fresh
            self.rows = pa.concat_tables(list(fresh.values())) if fresh else None
        try:
            data = self.store.read_bytes(TRIALS_FILE)
        except FileNotFoundError:
            data = b""
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest != self._trials_digest:
            self._trials_digest = digest
            self.trials = decode_stored(self.store, TRIALS_FILE, data, TRIALS_COLUMNS) if data else None
        state = [list(self._files), digest.hex(), self.info.get("status"), self.info.get("time")]
        self.version = hashlib.blake2b(json.dumps(state).encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class RunRef:
    name: str
    run_id: str

    @property
    def key(self) -> str:
        return f"{self.name}/{self.run_id}"


class Dashboard:
    """The runs under one storage root, and every view of one run, from their stored tables."""

    def __init__(self, root: str, *, options=None, endpoint_url: str | None = None):
        self.root = open_store(root, options)
        self.options = options
        self.endpoint_url = endpoint_url
        self._runs: dict[str, RunTables] = {}
        self._lock = threading.Lock()
        self._listed: tuple[float, list[RunRef]] = (0.0, [])
        self._views: dict[tuple[str, str, str], tuple[str, dict]] = {}  # (run, view) -> (version, view)

    # --- the runs under the root -------------------------------------------------------------------------------
    def run_refs(self) -> list[RunRef]:
        """Every run under the root (results.ops.list_runs', without `hpo sanity`'s), newest run id last."""
        listed_at, refs = self._listed
        if time.monotonic() - listed_at < 2 * REFRESH_S:
            return refs
        found = {
            RunRef(run.name, run.run_id)
            for run in list_runs(self.root.uri, options=self.options)
            if _NAME.match(run.name)
            and _NAME.match(run.run_id)
            and not run.run_id.startswith(SANITY_RUN_PREFIX)
        }
        refs = sorted(found, key=lambda r: (r.run_id, r.name))
        self._listed = (time.monotonic(), refs)
        return refs

    def tables(self, name: str, run_id: str) -> RunTables:
        """The run's tables, refreshed; KeyError if no such run is under the root."""
        ref = RunRef(name, run_id)
        if not (_NAME.match(name) and _NAME.match(run_id)):
            raise KeyError(ref.key)
        with self._lock:
            tables = self._runs.get(ref.key)
            if tables is None:
                if ref not in self.run_refs() and ref not in self._fresh_refs():
                    raise KeyError(ref.key)
                tables = self._runs[ref.key] = RunTables(
                    open_store(join_uri(self.root.uri, name, run_id), self.options)
                )
        return tables.refresh()

    def _fresh_refs(self) -> list[RunRef]:
        self._listed = (0.0, [])
        return self.run_refs()

    def runs(self) -> list[dict]:
        """The runs list: job, run id, status, trials, best value, age; newest first."""
        out = []
        for ref in reversed(self.run_refs()):
            try:
                t = self.tables(ref.name, ref.run_id)
            except KeyError:
                continue
            out.append({"name": ref.name, "run_id": ref.run_id, **_headline(t)})
        return out

    def newest(self) -> RunRef | None:
        refs = self.run_refs()
        return refs[-1] if refs else None

    # --- one run ------------------------------------------------------------------------------------------------
    def summary(self, name: str, run_id: str) -> dict:
        t = self.tables(name, run_id)
        uri = join_uri(self.root.uri, name, run_id)
        headline = _headline(t)
        running = 0
        if t.trials is not None:
            running = pc.sum(pc.equal(t.trials["status"], "running")).as_py() or 0
        objectives = [[o.metric, o.mode] for o in objectives_of(t.rows)] if t.rows is not None else []
        pull = f"hpo results pull {uri} --to ./{name}-{run_id}"
        if self.endpoint_url:
            pull += f" --endpoint-url {self.endpoint_url}"
        return {
            "name": name,
            "run_id": run_id,
            "uri": uri,
            **headline,
            "version": t.version,
            "running": running,
            "done": headline["trials"] - running,
            "total": t.total,
            "reports": t.rows.num_rows if t.rows is not None else 0,
            "objectives": objectives if len(objectives) > 1 else [],
            "pbt": bool(t.rows is not None and LINEAGE_COLUMNS[0] in t.rows.column_names),
            "pull": pull,
            "spec": redacted(t.spec),
        }

    def trial_table(self, name: str, run_id: str) -> dict:
        """One row per trial: status, config, best and last search metric, iterations, retries, preemptions,
        node type, cost, the error's first line. The rows are the truth for the best value and iterations (a
        running trial's record is rewritten at its events, not at each report)."""
        t = self.tables(name, run_id)
        if t.trials is None:
            return {"columns": [], "rows": [], "version": t.version}
        metric, _ = search_metric(t.trials)
        best = best_per_trial(t.rows) if t.rows is not None else {}
        config = [c for c in t.trials.column_names if c.startswith(CONFIG_PREFIX)]
        columns = ["trial_id", "status", f"best_{metric}", f"last_{metric}", "iterations", "retries"]
        columns += ["preemptions", "node_type", "cost", GPU_UTIL, GPU_MEM_PEAK, *config, "error"]
        columns = [c for c in columns if c in t.trials.column_names]
        # what the trials' GPUs did, where any trial measured it (a CPU run's would be empty columns)
        columns = [
            c for c in columns if c not in (GPU_UTIL, GPU_MEM_PEAK) or t.trials[c].null_count < len(t.trials)
        ]
        data = t.trials.select(columns).to_pydict()
        rows = []
        for i in range(t.trials.num_rows):
            row = [_finite(data[c][i]) for c in columns]
            trial = data["trial_id"][i]
            if trial in best:
                iterations, value, _ = best[trial]
                row[columns.index("iterations")] = iterations
                row[columns.index(f"best_{metric}")] = _finite(value)
            if "error" in columns and row[-1]:
                row[-1] = str(row[-1]).strip().splitlines()[-1][:300]
            rows.append(row)
        shown = [c.removeprefix(CONFIG_PREFIX) for c in columns]
        return {"columns": shown, "rows": rows, "metric": metric, "version": t.version}

    def curves(self, name: str, run_id: str, metric: str | None, trial_ids: list[str] | None) -> dict:
        """Learning curves of `metric` (default: the search metric) for `trial_ids` (default: the best
        CURVES_SHOWN trials so far and every running one), with where the scheduler stopped a trial early."""
        t = self.tables(name, run_id)
        if t.rows is None:
            return {"metric": metric, "curves": [], "version": t.version}
        search, mode = search_metric(t.rows)
        metric = metric if metric in metric_columns(t.rows.schema) else search
        trials = t.trials.to_pylist() if t.trials is not None else []
        status = {r["trial_id"]: r["status"] for r in trials}
        if not trial_ids:
            best = best_per_trial(t.rows)
            sign = 1 if mode == "min" else -1
            ranked = sorted(
                (v[1] * sign, k) for k, v in best.items() if v[1] is not None and math.isfinite(v[1])
            )
            trial_ids = [k for _, k in ranked[:CURVES_SHOWN]]
            trial_ids += sorted(k for k, s in status.items() if s == "running" and k not in trial_ids)
        wanted = t.rows.filter(pc.is_in(t.rows["trial_id"], pa.array(trial_ids, pa.string())))
        wanted = wanted.select(["trial_id", "iteration", metric]).sort_by(
            [("trial_id", "ascending"), ("iteration", "ascending")]
        )
        columns = wanted.to_pydict()
        curves: dict[str, dict] = {}
        for trial, iteration, value in zip(
            columns["trial_id"], columns["iteration"], columns[metric], strict=True
        ):
            curve = curves.setdefault(trial, {"trial_id": trial, "x": [], "y": []})
            curve["x"].append(iteration)
            curve["y"].append(_finite(value))
        for curve in curves.values():
            curve["status"] = status.get(curve["trial_id"], "running")
            curve["stopped_early"] = curve["status"] == "stopped_early"
        return {
            "metric": metric,
            "metrics": metric_columns(t.rows.schema),
            "curves": [curves[k] for k in trial_ids if k in curves],
            "version": t.version,
        }

    def parameters(self, name: str, run_id: str) -> dict:
        """Each trial's hyperparameters against its best search-metric value so far (parallel coordinates and a
        slice plot per hyperparameter)."""
        t = self.tables(name, run_id)
        if t.trials is None or t.rows is None:
            return {"params": [], "trials": [], "version": t.version}
        metric, mode = search_metric(t.trials)
        best = best_per_trial(t.rows)
        config = [c for c in t.trials.column_names if c.startswith(CONFIG_PREFIX)]
        varied = [c for c in config if pc.count_distinct(t.trials[c]).as_py() > 1]
        data = t.trials.select(["trial_id", *varied]).to_pydict()
        params = {}
        for c in varied:
            values = data[c]
            numeric = pa.types.is_integer(t.trials[c].type) or pa.types.is_floating(t.trials[c].type)
            params[c.removeprefix(CONFIG_PREFIX)] = {
                "numeric": numeric,
                "values": [_finite(v) for v in values],
                "categories": None if numeric else sorted({str(v) for v in values if v is not None}),
            }
        objective = [_finite(best.get(k, (0, None))[1]) for k in data["trial_id"]]
        return {
            "metric": metric,
            "mode": mode,
            "trials": data["trial_id"],
            "objective": objective,
            "params": params,
            "version": t.version,
        }

    def view(self, what: str, name: str, run_id: str) -> dict:
        """summary, trial_table, parameters, importance, pareto, lineage or ledger of a run, built once per
        version of its tables: the page asks for the summary every second, and most seconds nothing changed."""
        version = self.tables(name, run_id).version
        cached = self._views.get((name, run_id, what))
        if cached is None or cached[0] != version:
            cached = self._views[(name, run_id, what)] = (version, getattr(self, what)(name, run_id))
        return cached[1]

    def importance(self, name: str, run_id: str) -> dict:
        """Each varied hyperparameter's share of the search metric's variance (Optuna's fANOVA), over the latest
        IMPORTANCE_TRIALS trials that reported it."""
        view = self.parameters(name, run_id)
        names = list(view["params"])
        points = [(i, v) for i, v in enumerate(view["objective"]) if v is not None and math.isfinite(v)][
            -IMPORTANCE_TRIALS:
        ]
        if len(points) < 4 or not names:
            return {"importance": {}, "trials": len(points), "version": view["version"]}
        import optuna
        from optuna.distributions import CategoricalDistribution, FloatDistribution
        from optuna.importance import FanovaImportanceEvaluator, get_param_importances

        distributions = {}
        for param in names:
            spec = view["params"][param]
            values = [spec["values"][i] for i, _ in points]
            if any(v is None for v in values):
                continue  # a conditional branch's hyperparameter: not set in every trial
            if spec["numeric"]:
                low, high = min(values), max(values)
                if low < high:
                    distributions[param] = FloatDistribution(float(low), float(high))
            else:
                distributions[param] = CategoricalDistribution(spec["categories"])
        if not distributions:
            return {"importance": {}, "trials": len(points), "version": view["version"]}
        frozen = []
        for i, value in points:
            params = {}
            for param, dist in distributions.items():
                raw = view["params"][param]["values"][i]
                params[param] = float(raw) if isinstance(dist, FloatDistribution) else str(raw)
            frozen.append(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="minimize" if view["mode"] == "min" else "maximize")
        study.add_trials(frozen)
        shares = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
        return {
            "importance": {k: round(float(v), 4) for k, v in shares.items()},
            "trials": len(points),
            "version": view["version"],
        }

    def pareto(self, name: str, run_id: str) -> dict:
        """With several objectives: every finished trial's point, the front, and the hypervolume of the front
        as trials finished (reference: the worst value seen in each objective)."""
        t = self.tables(name, run_id)
        if t.trials is None or t.rows is None:
            return {"objectives": [], "version": t.version}
        objectives = objectives_of(t.trials)
        if len(objectives) < 2:
            return {"objectives": [], "version": t.version}
        last = _last_report_times(t.rows)
        trials = t.trials.to_pylist()
        points = []
        for row in trials:
            values = {o.metric: row.get(f"last_{o.metric}") for o in objectives}
            point = point_of(values, objectives)
            if point is None or row["status"] not in ("completed", "stopped_early"):
                continue
            if row.get("feasible") is False:
                continue
            points.append(
                (last.get(row["trial_id"], 0.0), row["trial_id"], point, values, row.get("on_front"))
            )
        points.sort()
        history = []
        if points:
            reference = [max(p[2][i] for p in points) + 1e-9 for i in range(len(objectives))]
            reference = [r + abs(r) * 0.1 + 1e-6 for r in reference]
            seen: list[tuple[float, ...]] = []
            for when, _, point, _, _ in points:
                seen.append(point)
                history.append({"t": when, "hypervolume": hypervolume(seen, reference)})
        return {
            "objectives": [[o.metric, o.mode] for o in objectives],
            "constraints": [str(c) for c in constraints_of(t.trials)],
            "points": [
                {"trial_id": tid, "values": {k: _finite(v) for k, v in vals.items()}, "on_front": bool(front)}
                for _, tid, _, vals, front in points
            ],
            "hypervolume": history,
            "version": t.version,
        }

    def lineage(self, name: str, run_id: str) -> dict:
        """PBT: which trial each trial's training continued from, and at what step (the edges), and each
        trial's hyperparameters step by step (its schedule)."""
        t = self.tables(name, run_id)
        if t.rows is None or LINEAGE_COLUMNS[0] not in t.rows.column_names:
            return {"edges": [], "schedules": {}, "version": t.version}
        parent, at = LINEAGE_COLUMNS
        config = [c for c in t.rows.column_names if c.startswith(CONFIG_PREFIX)]
        rows = t.rows.select(["trial_id", "iteration", parent, at, *config]).sort_by(
            [("trial_id", "ascending"), ("iteration", "ascending")]
        )
        edges, schedules, seen = [], {}, set()
        for row in rows.to_pylist():
            if row[parent] and (row["trial_id"], row[at]) not in seen:
                seen.add((row["trial_id"], row[at]))
                edges.append({"trial_id": row["trial_id"], "parent": row[parent], "step": row[at]})
            schedule = schedules.setdefault(
                row["trial_id"], {"x": [], **{c.removeprefix(CONFIG_PREFIX): [] for c in config}}
            )
            schedule["x"].append(row["iteration"])
            for c in config:
                schedule[c.removeprefix(CONFIG_PREFIX)].append(_finite(row[c]))
        return {"edges": edges, "schedules": schedules, "version": t.version}

    def ledger(self, name: str, run_id: str) -> dict:
        """Spend over time against the budget, by node type: each trial's CPU-, GPU-hours and cost (its ledger
        record) counted at its last report, from 0 at the first trial's start."""
        t = self.tables(name, run_id)
        budget = (t.spec.get("budget") or {}) if isinstance(t.spec, dict) else {}
        out = {
            "budget": {k: budget.get(k) for k in ("cost", "cpu_hours", "gpu_hours") if budget.get(k)},
            "series": {},
            "totals": {},
            "version": t.version,
        }
        if t.trials is None or t.rows is None:
            return out
        spans = _spans(t.rows)
        events: dict[str, list[tuple[float, dict]]] = {}
        totals: dict[str, dict] = {}
        for row in t.trials.to_pylist():
            if row["trial_id"] not in spans:
                continue
            end = spans[row["trial_id"]][1]
            node = row.get("node_type") or "local"
            spent = {
                "cpu_hours": (row.get("cpu_s") or 0.0) / 3600,
                "gpu_hours": (row.get("gpu_s") or 0.0) / 3600,
                "cost": row.get("cost") or 0.0,
            }
            events.setdefault(node, []).append((end, spent))
            total = totals.setdefault(node, {"trials": 0, "cpu_hours": 0.0, "gpu_hours": 0.0, "cost": 0.0})
            total["trials"] += 1
            for k, v in spent.items():
                total[k] += v
        origin = min(s for s, _ in spans.values()) if spans else 0.0
        for node, items in events.items():
            items.sort(key=lambda e: e[0])
            series = {"t": [0.0], "cpu_hours": [0.0], "gpu_hours": [0.0], "cost": [0.0]}
            running = {"cpu_hours": 0.0, "gpu_hours": 0.0, "cost": 0.0}
            for when, spent in items:
                for k in running:
                    running[k] += spent[k]
                series["t"].append(round(when - origin, 3))
                for k in running:
                    series[k].append(round(running[k], 6))
            out["series"][node] = series
        out["totals"] = {
            n: {k: round(v, 6) if isinstance(v, float) else v for k, v in d.items()}
            for n, d in totals.items()
        }
        return out

    def overlay(self, keys: list[str]) -> dict:
        """Best-so-far of several runs, against trials finished and against wall time since each run's first
        report."""
        out = []
        for key in keys:
            name, _, run_id = key.partition("/")
            try:
                t = self.tables(name, run_id)
            except KeyError:
                continue
            if t.rows is None:
                continue
            metric, mode = search_metric(t.rows)
            best = best_per_trial(t.rows)
            spans = _spans(t.rows)
            origin = min(s for s, _ in spans.values()) if spans else 0.0
            ended = sorted((spans[k][1], k) for k in best if k in spans)
            sign = 1 if mode == "min" else -1
            so_far, xs, walls, ys = None, [], [], []
            for n, (when, trial) in enumerate(ended, 1):
                value = best[trial][1]
                if value is not None and math.isfinite(value):
                    so_far = value if so_far is None or value * sign < so_far * sign else so_far
                xs.append(n)
                walls.append(round(when - origin, 3))
                ys.append(so_far)
            out.append(
                {"key": key, "metric": metric, "mode": mode, "trials": xs, "wall_s": walls, "best": ys}
            )
        return {"runs": out}


def _headline(t: RunTables) -> dict:
    """A run's status, trial count and best search-metric value so far (NaN, inf and reports that break a
    constraint never are the best): what the runs list and the page's header show."""
    out = {
        "status": t.info.get("status", "running" if t.trials is not None else "unknown"),
        "time": t.info.get("time", ""),
        "trials": t.trials.num_rows if t.trials is not None else 0,
        "metric": None,
        "mode": None,
        "best": None,
    }
    if t.rows is not None:
        out["metric"], out["mode"] = search_metric(t.rows)
        try:
            out["best"] = _finite(best_row(t.rows)[out["metric"]])
        except ResultsNotFound:
            pass
    return out


def _spans(rows: pa.Table) -> dict[str, tuple[float, float]]:
    """trial -> (wall-clock start, end) in seconds since the epoch: its first report's time less that epoch's
    duration, and its last report's time."""
    table = rows.select(["trial_id", "timestamp", "epoch_time_s"])
    seconds = pc.divide(pc.cast(pc.cast(table["timestamp"], pa.timestamp("ms")), pa.int64()), 1000.0)
    start = pc.subtract(seconds, pc.fill_null(table["epoch_time_s"], 0.0))
    grouped = (
        pa.table({"trial_id": table["trial_id"], "s": start, "e": seconds})
        .group_by("trial_id")
        .aggregate([("s", "min"), ("e", "max")])
        .to_pydict()
    )
    return dict(zip(grouped["trial_id"], zip(grouped["s_min"], grouped["e_max"], strict=True), strict=True))


def _last_report_times(rows: pa.Table) -> dict[str, float]:
    return {k: end for k, (_, end) in _spans(rows).items()}


def resolve(uri: str, options=None) -> tuple[str, RunRef | None]:
    """(storage root, the run to open first) for `hpo dashboard URI`: a run's results_uri opens on that run,
    under its storage root; a storage root opens on its newest run."""
    store = open_store(uri, options)
    if store.exists(RUN_FILE) or store.exists(SPEC_FILE):
        parts = store.uri.rstrip("/").rsplit("/", 2)
        if len(parts) == 3:
            return parts[0], RunRef(parts[1], parts[2])
    return store.uri, None


__all__ = ["Dashboard", "RunTables", "RunRef", "resolve", "redacted"]
