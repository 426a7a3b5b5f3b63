"""The drawing half of `hpo analyze`: one function per figure, each returns its path. Figures are drawn on
matplotlib's Figure directly, without pyplot, so no backend or global state of the process is touched."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from orchestrator.results import CONFIG_PREFIX
from orchestrator.results.schema import FINISHED

STYLE = {
    "completed": ("tab:blue", "-"),
    "stopped_early": ("tab:gray", "--"),
    "error": ("tab:red", ":"),
    "running": ("tab:orange", "-"),
}


def plot_learning_curves(rows: list[dict], trials: list[dict], spec, path: Path) -> str:
    metric = spec.search.primary.metric
    status = {t["trial_id"]: t["status"] for t in trials}
    curves: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r.get(metric) is not None:
            curves.setdefault(r["trial_id"], []).append((r["iteration"], r[metric]))
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    seen = set()
    for trial_id, points in sorted(curves.items()):
        points.sort()
        state = status.get(trial_id, "completed")
        color, line = STYLE.get(state, STYLE["completed"])
        label = state.replace("_", " ") if state not in seen else None
        seen.add(state)
        ax.plot([p[0] for p in points], [p[1] for p in points], line, color=color, alpha=0.7, label=label)
        if state == "stopped_early":
            ax.plot(points[-1][0], points[-1][1], "x", color=color)
    ax.set(xlabel="epoch", ylabel=metric, title=f"{spec.name}: {metric} per epoch, {len(curves)} trials")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return str(path)


def plot_isolation(trials: list[dict], spec, name: str, series: dict[tuple, dict], path: Path) -> str:
    metric = f"best_{spec.search.primary.metric}"
    dist = spec.search.hyperparameters.distribution(name)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    points = [
        (t[CONFIG_PREFIX + name], t[metric])
        for t in trials
        if t[metric] is not None and t[CONFIG_PREFIX + name] is not None  # none: a branch not taken
    ]
    categorical = not dist.ordered and not all(isinstance(v, (int, float)) for v, _ in points)
    position = {v: i for i, v in enumerate(sorted({v for v, _ in points}, key=str))} if categorical else None
    x = (lambda v: position[v]) if categorical else (lambda v: v)
    ax.scatter(
        [x(v) for v, _ in points],
        [m for _, m in points],
        s=14,
        color="tab:gray",
        alpha=0.5,
        label="every trial",
    )
    for key, line in series.items():
        buckets = sorted(line, key=str if categorical else float)
        label = "best at each value" + (f" ({key})" if key else "")
        ax.plot([x(b) for b in buckets], [line[b] for b in buckets], "o-", label=label)
    if categorical:
        ax.set_xticks(list(position.values()), [str(v) for v in position])
    if dist.log_scale:
        ax.set_xscale("log")
    ax.set(
        xlabel=f"{name} ({spec.search.role(name)})",
        ylabel=metric,
        title=f"isolation: {name}, best over nuisance hyperparameters",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return str(path)


def plot_front(trials: list[dict], objectives, path: Path) -> str:
    """The finished trials' points on the first two objectives, the Pareto front joined up and infeasible
    trials marked."""
    a, b = objectives[0], objectives[1]
    done = [
        t
        for t in trials
        if t["status"] in FINISHED and t[f"last_{a.metric}"] is not None and t[f"last_{b.metric}"] is not None
    ]
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    groups = {
        "dominated": [t for t in done if t.get("feasible") is not False and not t.get("on_front")],
        "infeasible": [t for t in done if t.get("feasible") is False],
        "Pareto front": sorted((t for t in done if t.get("on_front")), key=lambda t: t[f"last_{a.metric}"]),
    }
    looks = {
        "dominated": ("o", "tab:gray"),
        "infeasible": ("x", "tab:red"),
        "Pareto front": ("o", "tab:blue"),
    }
    for label, members in groups.items():
        if members:
            marker, color = looks[label]
            xs, ys = [t[f"last_{a.metric}"] for t in members], [t[f"last_{b.metric}"] for t in members]
            ax.scatter(xs, ys, marker=marker, color=color, label=f"{label} ({len(members)})", zorder=3)
            if label == "Pareto front":
                ax.plot(xs, ys, "-", color=color, alpha=0.5)
    ax.set(
        xlabel=f"{a.metric} ({a.mode}) at the last report",
        ylabel=f"{b.metric} ({b.mode}) at the last report",
        title=f"Pareto front: {len(groups['Pareto front'])} of {len(done)} finished trials",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return str(path)


def plot_hypervolume(volumes: list[float], objectives, path: Path) -> str:
    """The hypervolume of the front of the first k finished trials, for each k: how the search's answer grew."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(range(1, len(volumes) + 1), volumes, "-o", markersize=3)
    ax.set(
        xlabel="finished, feasible trials (in trial order)",
        ylabel="hypervolume",
        title="hypervolume over trials: " + " vs ".join(o.metric for o in objectives),
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return str(path)


def plot_importance(found: dict[str, dict[str, float]], fitted: dict[str, int], path: Path) -> str:
    """One bar chart per objective (and per branch of a conditional space): the share of its variance each
    hyperparameter explains (fANOVA); `fitted`: the trials each was fit to."""
    fig = Figure(figsize=(6 * len(found), 4))
    axes = fig.subplots(1, len(found), squeeze=False)[0]
    for ax, (metric, weights) in zip(axes, found.items(), strict=True):
        names = list(weights)[::-1]  # the most important on top
        ax.barh(names, [weights[n] for n in names], color="tab:blue")
        ax.set(
            xlabel="importance (share of variance)",
            title=f"{metric}: fANOVA over {fitted[metric]} trials",
            xlim=(0, 1),
        )
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return str(path)


def plot_pbt_schedules(
    schedules: dict[str, dict[str, list]], names: list[str], best: str | None, learned: list[dict], path: Path
) -> str:
    """PBT's schedules: one panel per searched hyperparameter, its value in force at each epoch of every trial
    (`schedules`: trial -> name -> value per epoch; thin, grey), and bold the schedule that trained the best
    trial's weights (`learned`: its lineage's rows, through each exploit to the donor's earlier epochs)."""
    fig = Figure(figsize=(8, 3.2 * len(names)))
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names, strict=True):
        values = [v for s in schedules.values() for v in s[name] if v is not None]
        for _, trial in sorted(schedules.items()):
            ax.stairs(*_steps(trial[name]), color="tab:gray", alpha=0.45, linewidth=1.0, baseline=None)
        if learned:
            ax.stairs(
                *_steps([r[CONFIG_PREFIX + name] for r in learned]),
                color="tab:red",
                linewidth=2.2,
                baseline=None,
                label=f"what trained the best trial ({best})",
            )
            ax.legend()
        if values and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values):
            ax.set_yscale("log")
        ax.set(xlabel="epoch", ylabel=name, title=f"{name} in force at each epoch (PBT)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return str(path)


def _steps(values: list) -> tuple[list, list]:
    """(values, edges) for Axes.stairs: epoch e spans [e - 1, e]; an epoch without a value is a gap."""
    return [v if v is not None else float("nan") for v in values], list(range(len(values) + 1))
