"""Printing for the commands that show tables."""

from __future__ import annotations

import json

from orchestrator.results import CONFIG_PREFIX
from orchestrator.results.layout import ENSEMBLE_FILE


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_table(columns: list[str], rows: list[dict]) -> None:
    """Columns padded to their widest cell; `config/` prefixes dropped from headers."""
    headers = [c.removeprefix(CONFIG_PREFIX) for c in columns]
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def print_ensemble(result, output: str) -> None:
    if output == "json":
        print(json.dumps(result.to_json()))
        return
    rows = [
        {"": "ensemble", **result.ensemble},
        {"": f"best single ({result.best_single['trial_id']})", **result.best_single},
    ]
    rows += [{"": f"member {m['trial_id']} x{m['weight']:.2f}", **m} for m in result.members]
    print_table(["", *result.ensemble], rows)
    print(f"wrote {result.results_uri}/{ENSEMBLE_FILE}")


def gpu_idle_note(total: dict) -> str:
    """` (0.31 idle: the GPUs 12% busy)`: how much of the GPU time held went unused, where the trials measured
    their GPU (train/gpu_meter.py); `(idle share not measured: no NVML)` where GPUs were held and none did."""
    if not total["gpu_hours"]:
        return ""
    idle, measured = total.get("gpu_idle_hours"), total.get("gpu_hours_measured") or 0.0
    if idle is None:
        return " (idle share not measured: no NVML where the trials ran)"
    busy = 1.0 - idle / measured if measured else 0.0
    part = "" if measured >= total["gpu_hours"] else f" of the {measured:.4g} measured"
    return f" ({idle:.4g}{part} idle: the GPUs {busy:.0%} busy)"
