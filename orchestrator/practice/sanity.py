"""Sanity checks before a search (Karpathy, "A Recipe for Training Neural Networks"): `hpo sanity SPEC`, or
`sanity: true` in a tuning spec, which runs them first and refuses to search if one fails.

They run in this process on the workload's own model, data and loss, with a representative config: the
spec's fixed values and the workload's defaults, and the middle of every searched distribution (geometric
middle for loguniform). Each check states what it expects; the tolerances are constants below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import torch

from orchestrator.errors import RunError, SanityFailed, WorkloadCodeFailed
from orchestrator.ray_support.driver import DriverSession
from orchestrator.results.layout import SANITY_FILE, SANITY_RUN_PREFIX, new_run_id, results_uri_for
from orchestrator.results.writer import parquet_bytes
from orchestrator.storage import Store, open_store
from orchestrator.train.determinism import configure_determinism, epoch_permutation, seed_everything
from orchestrator.train.loop import evaluate, make_optimizer, task_loss
from orchestrator.workloads import TRAINING_HYPERPARAMETERS, resolve_workload

INIT_TOLERANCE = 0.25  # loss at init within 25% of -log(1/C) (classification) or of mean(y^2) (regression)
OVERFIT_EXAMPLES, OVERFIT_STEPS, OVERFIT_LR = 8, 500, 1e-2
OVERFIT_TARGET = 0.02  # final loss on the batch: below this (classification), or this x its initial loss
BASELINE_STEPS = 150  # training steps for the with-data and zeroed-input runs
BASELINE_MARGIN = 0.10  # with data, validation loss must be at least 10% below the zeroed-input run's
# A zeroed-input baseline whose val loss is above this multiple of chance level (uniform guessing, or
# predicting the mean) is degenerate (e.g. batch norm over all-zero batches): nothing can be judged from it.
BASELINE_DEGENERATE = 3.0
DETERMINISM_STEPS = 20


@dataclass
class Check:
    name: str
    passed: bool
    measured: float | str
    expected: str
    detail: str = ""
    judged: bool = True  # False: the check ran but could not tell (never counted as passed)

    @property
    def status(self) -> str:
        return "pass" if self.passed else "FAIL" if self.judged else "not judged"


@dataclass
class SanityReport:
    results_uri: str
    config: dict
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No check found a problem (a check that could not judge found none, and is not a pass either)."""
        return all(c.passed for c in self.checks if c.judged)

    def failures(self) -> str:
        return "; ".join(
            f"{c.name} (measured {c.measured}, expected {c.expected})"
            for c in self.checks
            if c.judged and not c.passed
        )

    def to_json(self) -> dict:
        return {
            "passed": self.passed,
            "results_uri": self.results_uri,
            "config": self.config,
            "checks": [{**asdict(c), "status": c.status} for c in self.checks],
        }


def _train(workload, config, x, y, steps: int, seed: int) -> tuple[torch.nn.Module, list[float]]:
    """`steps` optimizer steps over (x, y) in seeded shuffled minibatches; returns the model and the losses."""
    seed_everything(seed)
    model = workload.build_model(config)
    # the standard loop's optimizer settings, for a workload with its own loop too (its config has none)
    optimizer = make_optimizer({**TRAINING_HYPERPARAMETERS, **config}, model.parameters())
    batch, losses, epoch = min(int(config["batch_size"]), len(x)), [], 0
    while len(losses) < steps:
        epoch += 1
        order = epoch_permutation(seed, epoch, len(x))
        for start in range(0, len(x) - batch + 1, batch):
            model.train()
            idx = order[start : start + batch]
            optimizer.zero_grad(set_to_none=True)
            loss = task_loss(workload.task, model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if len(losses) == steps:
                break
    return model, losses


def _loss_on(model, task, x, y) -> float:
    return evaluate(model, task, x, y, "cpu")["loss"]


def check_loss_at_init(workload, config, splits, seed) -> Check:
    seed_everything(seed)
    model = workload.build_model(config)
    (x, y) = splits.train
    measured = _loss_on(model, workload.task, x, y)
    if workload.task == "classification":
        classes = int(model.eval()(x[:1]).shape[-1])
        expected, how = math.log(classes), f"-log(1/{classes}) = {math.log(classes):.4f}"
    else:
        expected, how = float((y.double() ** 2).mean()), f"mean(y^2) = {float((y.double() ** 2).mean()):.4f}"
    ok = abs(measured - expected) <= INIT_TOLERANCE * expected
    return Check(
        "loss_at_init",
        ok,
        round(measured, 6),
        f"{how} +/- {INIT_TOLERANCE:.0%}",
        "" if ok else "the output layer's initial scale or bias is off, or the loss is wrong",
    )


def check_overfit_one_batch(workload, config, splits, seed) -> Check:
    x, y = splits.train[0][:OVERFIT_EXAMPLES], splits.train[1][:OVERFIT_EXAMPLES]
    fast = {**config, "lr": OVERFIT_LR, "optimizer": "adam", "weight_decay": 0.0, "batch_size": len(x)}
    _, losses = _train(workload, fast, x, y, OVERFIT_STEPS, seed)
    target = OVERFIT_TARGET if workload.task == "classification" else OVERFIT_TARGET * losses[0]
    ok = min(losses) <= target
    return Check(
        "overfit_one_batch",
        ok,
        round(min(losses), 6),
        f"<= {target:.4g} within {OVERFIT_STEPS} Adam steps (lr {OVERFIT_LR}) on {len(x)} examples",
        ""
        if ok
        else "the model cannot memorize a handful of examples: it may ignore its input, or "
        "the loss or optimizer is wired wrong",
    )


def check_input_independent(workload, config, splits, seed) -> Check:
    (x, y), (xv, yv) = splits.train, splits.val
    model, _ = _train(workload, config, x, y, BASELINE_STEPS, seed)
    with_data = _loss_on(model, workload.task, xv, yv)
    zeroed, _ = _train(workload, config, torch.zeros_like(x), y, BASELINE_STEPS, seed)
    without = _loss_on(zeroed, workload.task, torch.zeros_like(xv), yv)
    if workload.task == "classification":
        chance = math.log(int(model.eval()(xv[:1]).shape[-1]))
    else:
        chance = float(yv.double().var(unbiased=False))
    if without > BASELINE_DEGENERATE * chance:
        return Check(
            "input_independent",
            False,
            round(with_data, 6),
            f"a zeroed-input baseline near chance (val loss {chance:.4f})",
            f"the zeroed-input baseline's val loss {without:.4f} is over {BASELINE_DEGENERATE:g}x chance: "
            "the model is degenerate on all-zero input (batch norm?), so this check cannot tell",
            judged=False,
        )
    ok = with_data <= (1 - BASELINE_MARGIN) * without
    return Check(
        "input_independent",
        ok,
        round(with_data, 6),
        f"<= {(1 - BASELINE_MARGIN) * without:.4f} ({1 - BASELINE_MARGIN:.0%} of the zeroed-input "
        f"baseline's val loss {without:.4f}, {BASELINE_STEPS} steps each)",
        ""
        if ok
        else "training on the data is no better than on zeros: labels may not match inputs, "
        "or the model ignores its input",
    )


def check_gradient_dependency(workload, config, splits, seed) -> Check:
    seed_everything(seed)
    model = workload.build_model(config).eval()  # eval: dropout off, batch norm uses running statistics
    x = splits.val[0][:4].clone()
    if not torch.is_floating_point(x):
        return Check(
            "gradient_dependency", True, "skipped", "float inputs", "integer inputs have no gradient"
        )
    x.requires_grad_(True)
    target = 1
    model(x)[target].sum().backward()
    grad = x.grad.reshape(len(x), -1).abs().sum(dim=1)
    leaked = [i for i in range(len(x)) if i != target and grad[i] != 0]
    ok = not leaked and bool(grad[target] > 0)
    return Check(
        "gradient_dependency",
        ok,
        f"rows with gradient: {[i for i in range(len(x)) if grad[i] != 0]}",
        f"only row {target}",
        ""
        if ok
        else "examples of a batch are mixed (a view where a transpose "
        "was meant, a reduction over the wrong dimension)",
    )


def check_determinism(workload, config, splits, seed) -> Check:
    x, y = splits.train
    _, first = _train(workload, config, x, y, DETERMINISM_STEPS, seed)
    _, second = _train(workload, config, x, y, DETERMINISM_STEPS, seed)
    differ = next((i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b), None)
    ok = differ is None
    return Check(
        "determinism",
        ok,
        "bit-identical" if ok else f"step {differ + 1}: {first[differ]!r} vs {second[differ]!r}",
        f"{DETERMINISM_STEPS} steps bit-identical across two runs",
        "" if ok else "something is random without the trial's seed (or a non-deterministic op)",
    )


CHECKS: tuple[Callable, ...] = (
    check_loss_at_init,
    check_overfit_one_batch,
    check_input_independent,
    check_gradient_dependency,
    check_determinism,
)


def sanity_checks(spec, progress: Callable[[str], None] = lambda line: None) -> SanityReport:
    """Run every check on the spec's workload in this process (which keeps the seeds and torch settings they
    leave; run_sanity and sanity_gate put them back); nothing is written."""
    workload = resolve_workload(spec.workload)
    if (missing := workload.missing_for("sanity")) is not None:
        raise RunError(missing)
    config = spec.middle_config(workload)
    configure_determinism(use_gpu=False, threads=max(1, math.floor(spec.train.cpus_per_worker)))
    report = SanityReport("", config)
    try:
        splits = workload.load_data(config)
    except Exception as error:
        raise WorkloadCodeFailed.logged(f"sanity: load_data of {workload.name}", error) from None
    for check in CHECKS:
        try:
            result = check(workload, config, splits, spec.seed)
        except Exception as error:
            raise WorkloadCodeFailed.logged(
                f"sanity: {check.__name__.removeprefix('check_')}", error
            ) from None
        progress(f"sanity: {result.name}: {result.status} (measured {result.measured})")
        report.checks.append(result)
    return report


def write_report(report: SanityReport, store) -> None:
    rows = [
        {
            "check": c.name,
            "passed": c.passed,
            "status": c.status,
            "measured": str(c.measured),
            "expected": c.expected,
            "detail": c.detail,
        }
        for c in report.checks
    ]
    schema = pa.schema(
        [
            ("check", pa.string()),
            ("passed", pa.bool_()),
            ("status", pa.string()),  # pass | FAIL | not judged
            ("measured", pa.string()),
            ("expected", pa.string()),
            ("detail", pa.string()),
        ]
    )
    store.write_bytes(SANITY_FILE, parquet_bytes(pa.Table.from_pylist(rows, schema=schema)))


def sanity_gate(spec, store: Store, results_uri: str, progress: Callable[[str], None]) -> None:
    """`sanity: true`: the checks of `hpo sanity`, written beside the run's results; a failure stops the job.
    orchestrator/api.py hands this to the runner as its check before the search."""
    report = sanity_checks(spec, progress)
    report.results_uri = results_uri
    write_report(report, store)
    if not report.passed:
        raise SanityFailed(
            f"sanity checks failed, the search did not start: {report.failures()} "
            f"(see {results_uri}/{SANITY_FILE})"
        )


def run_sanity(
    spec, *, storage: str | None = None, progress: Callable[[str], None] = lambda line: None
) -> SanityReport:
    """`hpo sanity`: the checks, written to `<storage>/<name>/sanity-<id>/sanity.parquet`."""
    with DriverSession():  # the checks seed and configure torch in this process: put it back after
        report = sanity_checks(spec, progress)
    report.results_uri = results_uri_for(storage or spec.storage, spec.name, SANITY_RUN_PREFIX + new_run_id())
    write_report(report, open_store(report.results_uri, spec.storage_options.s3()))
    return report
