"""`hpo analyze`: the plots and warnings the Deep Learning Tuning Playbook asks for after a search.

- learning_curves.png: the search metric of every trial per epoch; trials ASHA stopped end in an x.
- isolation_<hp>.png per searched hyperparameter: every trial's best metric against its value, and the best
  reached at each value (each choice, or each of 8 bins in the distribution's own scale), taking the best over
  the nuisance hyperparameters; other scientific hyperparameters get a line per value.
- report.txt: the best trial, the isolation tables, and warnings: the best trial near a search-space boundary
  (in the distribution's scale; with how many of the top 10% share that edge), and seed noise larger than
  the gap between the top configs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.practice.plots import (
    plot_front,
    plot_hypervolume,
    plot_importance,
    plot_isolation,
    plot_learning_curves,
    plot_pbt_schedules,
)
from orchestrator.results import CONFIG_PREFIX, config_of, load_results, load_trials
from orchestrator.results.ops import stored_spec
from orchestrator.results.schema import FINISHED, trial_point
from orchestrator.search.objectives import hypervolume, point_of

BINS = 8
EDGE = 0.10  # "near a boundary": within the outer 10% of the range, in the distribution's scale
TOP_FRACTION = 0.10  # the trials whose positions the boundary warning looks at


@dataclass
class AnalysisReport:
    lines: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _bucket(dist, value):
    """The value itself for an unordered or small distribution; else the centre of its bin (BINS bins across the
    range, in the distribution's analysis scale: a loguniform's are geometric)."""
    values = dist.finite_values()
    if not dist.ordered or (values is not None and len(values) <= BINS):
        return value
    position = min(BINS - 1, max(0, int(dist.unit(value) * BINS)))
    return dist.at_unit((position + 0.5) / BINS)


def _better(mode: str):
    return min if mode == "min" else max


def isolation(trials: list[dict], spec, name: str) -> dict[tuple, dict]:
    """{other scientific values: {bucket of `name`: best metric}}, the best taken over nuisance hyperparameters."""
    metric, pick = f"best_{spec.search.primary.metric}", _better(spec.search.primary.mode)
    space = spec.search.hyperparameters
    dist = space.distribution(name)
    others = [n for n in space.names if n != name and spec.search.role(n) == "scientific"]
    series: dict[tuple, dict] = {}
    for t in trials:
        if t[metric] is None or t[CONFIG_PREFIX + name] is None:  # no value: inactive (a branch not taken)
            continue
        key = tuple(t[CONFIG_PREFIX + o] for o in others)
        bucket = _bucket(dist, t[CONFIG_PREFIX + name])
        line = series.setdefault(key, {})
        line[bucket] = pick(line.get(bucket, t[metric]), t[metric])
    return series


def _boundary_warnings(trials: list[dict], spec) -> list[str]:
    metric, mode = f"best_{spec.search.primary.metric}", spec.search.primary.mode
    scored = sorted(
        (t for t in trials if t[metric] is not None), key=lambda t: t[metric], reverse=mode == "max"
    )
    top = scored[: max(1, math.ceil(TOP_FRACTION * len(scored)))]
    warnings = []
    space = spec.search.hyperparameters
    for name in space.names:
        dist = space.distribution(name)
        active = [t for t in top if t[CONFIG_PREFIX + name] is not None]  # a branch not taken has none
        if not dist.ordered or not active:
            continue
        positions = [dist.unit(t[CONFIG_PREFIX + name]) for t in active]  # active[0]: the best with a value
        for side, near in (("lower", lambda p: p <= EDGE), ("upper", lambda p: p >= 1 - EDGE)):
            if near(positions[0]):
                scale = " (log scale)" if dist.log_scale else ""
                who = "the best trial" if active[0] is top[0] else "the best trial that has it"
                warnings.append(
                    f"{name}: {who} ({active[0]['trial_id']}, {name}="
                    f"{active[0][CONFIG_PREFIX + name]:.4g}) and {sum(map(near, positions)) - 1} of the "
                    f"next {len(active) - 1} sit in the {side} {EDGE:.0%} of the range {dist.args[:2]}{scale}; the "
                    "optimum may lie outside it: widen the range"
                )
    return warnings


def _seed_warning(trials: list[dict], spec) -> list[str]:
    metric, mode = f"best_{spec.search.primary.metric}", spec.search.primary.mode
    groups: dict[tuple, list[float]] = {}
    for t in trials:
        if t[metric] is not None:
            groups.setdefault(
                tuple(t[CONFIG_PREFIX + n] for n in spec.search.hyperparameters.names), []
            ).append(t[metric])
    repeated = [v for v in groups.values() if len(v) > 1]
    if not repeated:
        return [
            "note: no config ran with more than one seed, so seed noise is unmeasured (grid search with "
            "num_samples > 1 repeats every config)"
        ]
    spread = max(max(v) - min(v) for v in repeated)
    bests = sorted((_better(mode)(v) for v in groups.values()), reverse=mode == "max")
    if len(bests) > 1 and spread > abs(bests[0] - bests[1]):
        return [
            f"seed noise: the same config's best {spec.search.primary.metric} varies by {spread:.4g} across seeds, "
            f"more than the gap {abs(bests[0] - bests[1]):.4g} between the two best configs; the ranking of "
            "the top configs is not trustworthy"
        ]
    return []


def hypervolume_over_trials(trials: list[dict], objectives) -> tuple[list[tuple], list[float], tuple]:
    """The finished, feasible trials' points (minimized, in trial order), the hypervolume of the front of the
    first k of them for each k, and the reference point: the worst value of each objective over all points,
    plus a tenth of its range (or 1 where there is no range), so every point counts."""
    points = [point for t in trials if (point := trial_point(t, objectives)) is not None]
    if not points:
        return [], [], ()
    reference = tuple(
        max(p[k] for p in points) + ((max(p[k] for p in points) - min(p[k] for p in points)) / 10 or 1.0)
        for k in range(len(objectives))
    )
    return points, [hypervolume(points[: k + 1], reference) for k in range(len(points))], reference


def importances(trials: list[dict], spec) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """Each objective's parameter importances (Optuna's fANOVA: a random forest fit to the finished, feasible
    trials, its variance split by hyperparameter), and the trials each was fit to, by the same label. One
    objective: each trial's best; several: each trial's point (its last report). A conditional space adds, for
    each branch of a top-level choice, the importances within it ("val_loss where optimizer=sgd"): over all
    trials, only the hyperparameters every trial has count. Empty when fewer than 3 trials or nothing varies."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import create_trial

    from orchestrator.tuning.forms import optuna_distribution

    objectives = spec.search.objectives
    several = len(objectives) > 1
    column = {o.metric: (f"last_{o.metric}" if several else f"best_{o.metric}") for o in objectives}
    space = spec.search.hyperparameters
    distributions = {name: optuna_distribution(space.distribution(name)) for name in space.names}
    eligible = []
    for t in trials:
        values = [t[column[o.metric]] for o in objectives]
        if (
            t["status"] in FINISHED
            and t.get("feasible") is not False
            and point_of(dict(zip(column, values, strict=True)), objectives) is not None
        ):
            eligible.append((space.from_row(config_of(t)), values))
    groups: list[tuple[str, list, list[str] | None]] = [("", eligible, None)]
    for leaf in space.roots:
        for branch in leaf.branches:
            within = [(c, v) for c, v in eligible if c[leaf.name] == branch]
            names = [n for n in space.names if n != leaf.name and all(n in c for c, _ in within)]
            groups.append((f" where {leaf.name}={branch}", within, names))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    found: dict[str, dict[str, float]] = {}
    fitted: dict[str, int] = {}
    for label, group, names in groups:
        if len(group) < 3 or names == []:
            continue
        study = optuna.create_study(
            directions=["minimize" if o.mode == "min" else "maximize" for o in objectives]
        )
        for params, values in group:
            study.add_trial(
                create_trial(
                    params=params, distributions={n: distributions[n] for n in params}, values=values
                )
            )
        for i, objective in enumerate(objectives):
            try:
                found[objective.metric + label] = get_param_importances(
                    study,
                    evaluator=FanovaImportanceEvaluator(seed=0),
                    params=names,
                    target=lambda t, i=i: t.values[i],
                )
            except (RuntimeError, ValueError):  # every trial had the same value: nothing to split
                continue
            fitted[objective.metric + label] = len(group)
    return found, fitted


def analyze_run(uri: str, out_dir: str | Path) -> AnalysisReport:
    """Write the plots and report.txt for the run at `uri` into `out_dir`; return what was written."""
    spec = stored_spec(uri)
    rows, trials = load_results(uri).to_pylist(), load_trials(uri).to_pylist()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = AnalysisReport()
    report.plots.append(plot_learning_curves(rows, trials, spec, out / "learning_curves.png"))
    metric = spec.search.primary.metric
    scored = [t for t in trials if t[f"best_{metric}"] is not None]
    if scored:
        best = _better(spec.search.primary.mode)(scored, key=lambda t: t[f"best_{metric}"])
        report.lines.append(
            f"{len(trials)} trials; best {best['trial_id']} {metric}={best[f'best_{metric}']:.4g}"
        )
    for name in spec.search.hyperparameters.names:
        series = isolation(trials, spec, name)
        report.plots.append(plot_isolation(trials, spec, name, series, out / f"isolation_{name}.png"))
        report.lines.append(
            f"isolation {name} ({spec.search.role(name)}): "
            + "; ".join(
                f"{_fmt(k)}: " + ", ".join(f"{_fmt(b)} -> {v:.4g}" for b, v in sorted(line.items()))
                for k, line in series.items()
            )
        )
    objectives = spec.search.objectives
    if len(objectives) > 1:
        points, volumes, reference = hypervolume_over_trials(trials, objectives)
        front = [t for t in trials if t.get("on_front")]
        report.plots.append(plot_front(trials, objectives, out / "pareto_front.png"))
        report.plots.append(plot_hypervolume(volumes, objectives, out / "hypervolume.png"))
        named = ", ".join(f"{o.metric} ({o.mode})" for o in objectives)
        report.lines.append(
            f"Pareto front on {named}: {len(front)} of {len(points)} finished, feasible trials: "
            + ", ".join(t["trial_id"] for t in front)
        )
        if volumes:
            shown = ", ".join(
                f"{-v if o.mode == 'max' else v:.4g}" for v, o in zip(reference, objectives, strict=True)
            )
            report.lines.append(
                f"hypervolume {volumes[-1]:.4g} (reference point {shown}), after half the trials "
                f"{volumes[len(volumes) // 2 - 1] if len(volumes) > 1 else volumes[0]:.4g}"
            )
    if spec.scheduler.kind.adapts_configs:
        report.lines += _pbt_report(rows, trials, spec, out, report)
    found, fitted = importances(trials, spec)
    if found:
        report.plots.append(plot_importance(found, fitted, out / "importance.png"))
        for metric, weights in found.items():
            report.lines.append(
                f"importance for {metric} (fANOVA over {fitted[metric]} trials): "
                + ", ".join(f"{name} {weight:.2f}" for name, weight in weights.items())
            )
    report.warnings = _boundary_warnings(trials, spec) + _seed_warning(trials, spec)
    report.lines += [f"warning: {w}" if not w.startswith("note:") else w for w in report.warnings]
    (out / "report.txt").write_text("\n".join(report.lines) + "\n")
    return report


def pbt_schedules(rows: list[dict], spec) -> dict[str, dict[str, list]]:
    """trial -> searched hyperparameter -> its value at each epoch (the rows' config in force), for a PBT run."""
    names = spec.search.hyperparameters.names
    schedules: dict[str, dict[str, list]] = {}
    for r in sorted(rows, key=lambda r: (r["trial_id"], r["iteration"])):
        trial = schedules.setdefault(r["trial_id"], {n: [] for n in names})
        for n in names:
            trial[n].append(r[CONFIG_PREFIX + n])
    return schedules


def lineage(by_trial: dict[str, list[dict]], trial: str, upto: int | None = None) -> list[dict]:
    """The rows that trained the weights `trial` ends with (up to epoch `upto`): its own since its last exploit,
    and before that, its donor's lineage up to the exploit's epoch. Their configs are the schedule PBT
    learned for that model."""
    rows = [r for r in by_trial[trial] if upto is None or r["iteration"] <= upto]
    exploits = [(r["exploited_at"], r["parent_trial"]) for r in rows if r.get("parent_trial")]
    if not exploits:
        return rows
    epoch, parent = max(exploits)
    return lineage(by_trial, parent, epoch) + [r for r in rows if r["iteration"] > epoch]


def _pbt_report(rows: list[dict], trials: list[dict], spec, out: Path, report: AnalysisReport) -> list[str]:
    """PBT's schedules: drawn (pbt_schedules.png), and the best trial's lineage in words."""
    space = spec.search.hyperparameters
    names = [n for n in space.names if space.distribution(n).ordered] or list(space.names)
    metric, pick = f"best_{spec.search.primary.metric}", _better(spec.search.primary.mode)
    scored = [t for t in trials if t[metric] is not None]
    best = pick(scored, key=lambda t: t[metric])["trial_id"] if scored else None
    by_trial: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["iteration"]):
        by_trial.setdefault(r["trial_id"], []).append(r)
    learned = lineage(by_trial, best) if best is not None else []
    report.plots.append(
        plot_pbt_schedules(pbt_schedules(rows, spec), names, best, learned, out / "pbt_schedules.png")
    )
    exploits = {(r["trial_id"], r["exploited_at"]) for r in rows if r.get("parent_trial")}
    lines = [f"PBT: {len(exploits)} exploit(s) across {len(by_trial)} trials"]
    segments: list[str] = []
    start = 1
    for i, r in enumerate(learned):  # a segment: the epochs one trial trained under one config
        nxt = learned[i + 1] if i + 1 < len(learned) else None
        if (
            nxt is None
            or nxt["trial_id"] != r["trial_id"]
            or any(nxt[CONFIG_PREFIX + n] != r[CONFIG_PREFIX + n] for n in names)
        ):
            config = ", ".join(f"{n}={_fmt(r[CONFIG_PREFIX + n])}" for n in names)
            segments.append(f"epochs {start}-{r['iteration']} ({r['trial_id']}): {config}")
            start = r["iteration"] + 1
    if best is not None:
        lines.append(f"PBT schedule learned by the best trial {best} (its lineage): " + "; ".join(segments))
    return lines


def _fmt(value) -> str:
    if isinstance(value, tuple):
        return ",".join(_fmt(v) for v in value) or "all"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
