"""The typed job spec, validated once at the edge.

`load_spec(path)` reads a YAML file and returns a frozen `JobSpec`, or raises `SpecError` whose message is one
line naming the field, the bad value and what is allowed. Past this module nothing handles raw dicts.
`JobSpec.resolved()` fills in the workload's and the scheduler's defaults; that is what a run records as
`spec.yaml`. The names a spec may use (algorithms, schedulers and their options, distributions, storage
schemes, workloads) come from their registries in search/, storage/ and workloads/; this module lists none.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)

from orchestrator.errors import SpecError, did_you_mean, not_allowed
from orchestrator.search import ALGORITHMS, SCHEDULERS
from orchestrator.search.algorithms import Algorithm
from orchestrator.search.distributions import Float, Scalar
from orchestrator.search.objectives import MODES, Constraint, Objective
from orchestrator.search.schedulers import Scheduler as SchedulerKind
from orchestrator.search.space import BRANCHES_TAG, Space, SpaceError
from orchestrator.spec.ensembles import DEFAULT_ENSEMBLE_METHOD, ENSEMBLE_METHODS
from orchestrator.spec.parts import SearchedHyperparameter, Section
from orchestrator.spec.workload_ref import check_against_workload
from orchestrator.spec.yaml_load import MAX_BYTES, YamlError, load_yaml_text
from orchestrator.storage import S3Options, check_storage_uri

__all__ = [
    "JobSpec",
    "EnsembleSpec",
    "SpecError",
    "load_spec",
    "parse_spec",
    "json_schema",
    "ENSEMBLE_METHODS",
    "DEFAULT_ENSEMBLE_METHOD",
]

NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def _described(registry: dict) -> str:
    return "; ".join(f"{name}: {entry.help}" for name, entry in registry.items())


class Search(Section):
    algorithm: Literal[tuple(ALGORITHMS)] = Field("quasirandom", description=_described(ALGORITHMS))  # type: ignore[valid-type]
    num_samples: Annotated[StrictInt, Field(gt=0, le=1_000_000)] = Field(
        16, description="number of trials (grid: passes over the full grid)"
    )
    max_concurrent: Annotated[StrictInt, Field(gt=0, le=10_000)] = Field(
        1, description="trials running at once"
    )
    metric: StrictStr | list[StrictStr] = Field(
        "val_loss",
        description="a metric the workload reports, or a list of them: several objectives, whose answer is a "
        "Pareto front",
    )
    mode: Literal[MODES] | list[Literal[MODES]] = Field(  # type: ignore[valid-type]
        "min", description="min or max: one for every metric, or one per metric"
    )
    constraints: list[StrictStr] = Field(
        default_factory=list,
        description="bounds on reported metrics, e.g. 'latency_ms <= 5.0': a report that breaks one is never "
        "the best, and a trial whose last report breaks one is infeasible (never on the front)",
    )
    space: dict[StrictStr, SearchedHyperparameter] = Field(
        description="searched hyperparameters, one distribution each; a choice may map each of its values to "
        "hyperparameters of their own (a conditional space: only the branch taken is searched)"
    )
    fixed: dict[StrictStr, Scalar] = Field(default_factory=dict, description="hyperparameters held fixed")
    warm_start: list[StrictStr] = Field(
        default_factory=list,
        description="earlier runs (results URIs, local or s3://) whose finished trials are the searcher's "
        "history, not rerun; same space; for Optuna's samplers",
    )
    start_with: list[dict[StrictStr, Scalar]] = Field(
        default_factory=list,
        description="configs the search evaluates first, exactly as given (each gives every searched "
        "hyperparameter a value its distribution can take); they count toward num_samples",
    )
    roles: dict[StrictStr, Literal["scientific", "nuisance", "fixed"]] = Field(
        default_factory=dict,
        description="Tuning Playbook roles for `hpo analyze`: scientific (compared), "
        "nuisance (optimized over), fixed; searched hyperparameters default to nuisance",
    )

    @field_validator("space", mode="before")
    @classmethod
    def _space_shape(cls, value: Any) -> Any:
        if isinstance(value, dict) and not value:
            raise ValueError("is empty; search at least one hyperparameter")
        return value

    @field_validator("metric")
    @classmethod
    def _metrics(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("is an empty list; name at least one metric")
            repeated = sorted({m for m in value if value.count(m) > 1})
            if repeated:
                raise ValueError(f"{repeated[0]!r} is listed twice; each objective once")
        return value

    @field_validator("warm_start")
    @classmethod
    def _warm_start(cls, value: list[str]) -> list[str]:
        for uri in value:
            check_storage_uri(uri)
        return value

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, value: list[str]) -> list[str]:
        for text in value:
            Constraint.parse(text)
        return value

    @model_validator(mode="after")
    def _check(self):
        if isinstance(self.mode, list) and len(self.mode) != len(self.metrics):
            raise ValueError(
                f"mode: {len(self.mode)} mode(s) for {len(self.metrics)} metric(s); give one per metric "
                f"(e.g. [{', '.join(['min'] * len(self.metrics))}]) or one for all"
            )
        if len(self.metrics) > 1 and not self.search_algorithm.multi_objective:
            several = ", ".join(name for name, a in ALGORITHMS.items() if a.multi_objective)
            raise ValueError(
                f"algorithm: {self.algorithm} optimizes one metric, and metric lists {len(self.metrics)}; use "
                f"one of {several}, or one metric"
            )
        try:
            space = self.hyperparameters
        except SpaceError as error:
            raise ValueError(f"space: {error}") from None
        both = sorted(set(space.names) & set(self.fixed))
        if both:
            raise ValueError(f"{both[0]!r} is both searched (space) and fixed; keep it in one")
        for name, role in self.roles.items():
            if name not in space.names and name not in self.fixed:
                raise ValueError(
                    f"roles.{name}: not a searched or fixed hyperparameter ({did_you_mean(name, [*space.names, *self.fixed])}"
                    f"searched: {', '.join(space.names)})"
                )
            if (role == "fixed") != (name in self.fixed):
                where = "fixed" if name in self.fixed else "space"
                raise ValueError(
                    f"roles.{name}: {role!r} does not match where it is ({where}); searched "
                    f"hyperparameters are scientific or nuisance, those in fixed are fixed"
                )
        self.search_algorithm.check(space)
        if self.warm_start and not self.search_algorithm.learns_from_history:
            learners = ", ".join(name for name, a in ALGORITHMS.items() if a.learns_from_history)
            raise ValueError(
                f"warm_start: algorithm {self.algorithm} does not take earlier results as history; use one of "
                f"{learners}"
            )
        self._check_start_with()
        return self

    def _check_start_with(self) -> None:
        if not self.start_with:
            return
        if self.search_algorithm.enumerates:
            others = ", ".join(name for name, a in ALGORITHMS.items() if not a.enumerates)
            raise ValueError(
                f"start_with: algorithm {self.algorithm} runs every combination already; give the configs as "
                f"choices, or use one of {others}"
            )
        if len(self.start_with) > self.num_samples:
            raise ValueError(
                f"start_with: {len(self.start_with)} configs, and num_samples is {self.num_samples}; raise "
                "num_samples or give fewer"
            )
        space = self.hyperparameters
        for i, config in enumerate(self.start_with):
            for name in config:
                if name not in space.names:
                    where = "is fixed (search.fixed)" if name in self.fixed else "is not searched"
                    raise ValueError(
                        f"start_with[{i}].{name}: {where}; a start config gives the searched hyperparameters "
                        f"({did_you_mean(name, list(space.names))}searched: {', '.join(space.names)})"
                    )
            problem = space.check_config(config)
            if problem is not None:
                sep = "." if not problem.startswith("gives") else ": "
                raise ValueError(f"start_with[{i}]{sep}{problem}")

    def start_points(self, fill: bool = False) -> list[dict[str, Any]]:
        """The start_with configs as searcher proposals (keyed: search/space.py), each value as its distribution
        states it (1 for a float range is 1.0); with `fill`, inactive keys at their middles."""
        space = self.hyperparameters
        return [space.keyed(space.canonical(c), fill=fill) for c in self.start_with]

    @functools.cached_property
    def hyperparameters(self) -> Space:
        """The searched space as searchers read it (flat or conditional)."""
        return Space(self.space)

    @property
    def search_algorithm(self) -> Algorithm:
        return ALGORITHMS[self.algorithm]

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(self.metric) if isinstance(self.metric, list) else (self.metric,)

    @property
    def objectives(self) -> tuple[Objective, ...]:
        """Each metric with its direction; the first is the primary one (what "best" and ensembles rank by)."""
        modes = self.mode if isinstance(self.mode, list) else [self.mode] * len(self.metrics)
        return tuple(Objective(m, d) for m, d in zip(self.metrics, modes, strict=True))

    @property
    def primary(self) -> Objective:
        return self.objectives[0]

    @property
    def bounds(self) -> tuple[Constraint, ...]:
        """The constraints, parsed."""
        return tuple(Constraint.parse(text) for text in self.constraints)

    def role(self, name: str) -> str:
        return self.roles.get(name, "fixed" if name in self.fixed else "nuisance")

    def num_trials(self) -> int:
        return self.search_algorithm.num_trials(self.hyperparameters, self.num_samples)


class _SchedulerSection(Section):
    """`scheduler:`: a `type` from the scheduler registry and the options of that type (see search/schedulers.py)."""

    type: str

    @model_validator(mode="after")
    def _options_of_its_type(self):
        given = [
            name for name in type(self).model_fields if name != "type" and getattr(self, name) is not None
        ]
        foreign = [name for name in given if name not in self.kind.options]
        if foreign:
            owners = sorted({s.name for s in SCHEDULERS.values() for name in foreign if name in s.options})
            verb = "apply" if len(foreign) > 1 else "applies"
            raise ValueError(f"{' and '.join(foreign)} {verb} only to type: {', '.join(owners)}")
        return self

    @model_serializer(mode="wrap")
    def _own_options_only(self, handler):
        """Dumped (spec.yaml), only its type and that type's options: another type's unset options say nothing."""
        data = handler(self)
        return {k: v for k, v in data.items() if k == "type" or k in self.kind.options or v is not None}

    @property
    def kind(self) -> SchedulerKind:
        return SCHEDULERS[self.type]

    def settings(self) -> dict[str, Any]:
        """This type's options, defaults filled in."""
        return self.kind.settings({name: getattr(self, name) for name in self.kind.options})


Scheduler = create_model(
    "Scheduler",
    __base__=_SchedulerSection,
    type=(Literal[tuple(SCHEDULERS)], Field("fifo", description=_described(SCHEDULERS))),  # type: ignore[valid-type]
    **{
        name: (
            option.type | None,
            Field(None, description=f"{kind.name}: {option.help} (default {option.default:g})"),
        )
        for kind in SCHEDULERS.values()
        for name, option in kind.options.items()
    },
)


PRECISIONS = ("fp32", "bf16")


class Train(Section):
    max_epochs: Annotated[StrictInt, Field(gt=0, le=100_000)] = Field(10, description="epochs per trial")
    workers: Annotated[StrictInt, Field(gt=0, le=1024)] = Field(
        1, description="Ray Train workers per trial; more than 1 runs DDP"
    )
    use_gpu: StrictBool = Field(False, description="train on GPUs (one per worker unless gpus_per_worker)")
    cpus_per_worker: Annotated[Float, Field(gt=0, le=1024)] = Field(
        1.0, description="logical CPUs per worker"
    )
    gpus_per_worker: Annotated[Float, Field(gt=0, le=1024)] | None = Field(
        None,
        description="GPUs each worker holds, with use_gpu (default 1): a fraction in (0, 1] packs several "
        "1-worker trials on one GPU (0.25: four at once, each counted a quarter); DDP workers take whole GPUs",
    )
    checkpoints_to_keep: Annotated[StrictInt, Field(gt=0, le=1000)] = Field(
        2, description="per trial: the best by the search metric and the latest are kept"
    )
    max_retries: Annotated[StrictInt, Field(ge=0, le=100)] = Field(
        2, description="times a failed trial is run again, continuing from its last checkpoint"
    )
    trial_timeout_s: Annotated[Float, Field(gt=0, le=7 * 24 * 3600)] = Field(
        1800.0,
        description="a trial that reports nothing for this long (e.g. a worker group that never "
        "starts) is stopped and counts as failed",
    )
    fail_fast: StrictBool = Field(False, description="stop the whole job at the first failed trial (exit 1)")
    resources_per_worker: dict[StrictStr, Annotated[Float, Field(gt=0, le=1e6)]] = Field(
        default_factory=dict,
        description="Ray resources each worker needs besides its CPUs, e.g. {node-a10g: 1} to place trials on "
        "nodes that offer that custom resource (GPUs: gpus_per_worker)",
    )
    accelerator_type: StrictStr | None = Field(
        None,
        description="the GPU type every worker must run on (Ray's accelerator_type), e.g. A100; needs use_gpu",
    )
    precision: Literal[PRECISIONS] = Field(  # type: ignore[valid-type]
        "fp32",
        description="bf16: the standard loop (and ctx.autocast() in your own) computes in bfloat16 on GPUs; "
        "fp32 everywhere else",
    )

    @model_validator(mode="after")
    def _check_precision(self):
        if self.precision != "fp32" and not self.use_gpu:
            raise ValueError(f"precision: {self.precision} needs use_gpu: true (on CPU hpo trains in fp32)")
        if self.accelerator_type is not None and not self.use_gpu:
            raise ValueError(f"accelerator_type: {self.accelerator_type} needs use_gpu: true")
        if (gpus := self.gpus_per_worker) is not None:
            if not self.use_gpu:
                raise ValueError(f"gpus_per_worker: {gpus:g} needs use_gpu: true")
            if gpus > 1 and gpus != int(gpus):
                raise ValueError(
                    f"gpus_per_worker: {gpus:g}: give a whole number of GPUs, or a fraction of one (at most 1)"
                )
            if self.workers > 1 and gpus != int(gpus):
                raise ValueError(
                    f"gpus_per_worker: {gpus:g} with workers: {self.workers}: DDP workers each take whole GPUs "
                    "(each rank needs a device of its own); a fraction is for 1-worker trials"
                )
        return self

    def gpus(self) -> float:
        """The GPUs each worker holds: 0 without use_gpu."""
        return (self.gpus_per_worker or 1.0) if self.use_gpu else 0.0

    @field_validator("resources_per_worker")
    @classmethod
    def _custom_resources(cls, value: dict) -> dict:
        for name in value:
            if name in ("CPU", "GPU", "memory", "object_store_memory"):
                hint = {"CPU": "train.cpus_per_worker", "GPU": "train.gpus_per_worker"}.get(
                    name, "Ray's defaults"
                )
                raise ValueError(f"{name!r}: give it with {hint}, not as a custom resource")
            if not RESOURCE_RE.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a Ray resource name (letters, digits, '_', '-', '.', ':', '/')"
                )
        return value

    @field_validator("accelerator_type")
    @classmethod
    def _accelerator(cls, value: str | None) -> str | None:
        if value is not None and not RESOURCE_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not an accelerator type name (e.g. A100, H100, L4)")
        return value


class Budget(Section):
    """What the search may spend. When the spent total reaches any limit, no new trial starts; the running ones
    finish (or stop at their next report with stop_running), and the run ends with status budget_exhausted."""

    gpu_hours: Annotated[Float, Field(gt=0, le=1e7)] | None = Field(
        None, description="GPU-hours of all trials"
    )
    cpu_hours: Annotated[Float, Field(gt=0, le=1e7)] | None = Field(
        None, description="CPU-hours (logical CPUs held x hours) of all trials"
    )
    cost: Annotated[Float, Field(gt=0, le=1e9)] | None = Field(
        None,
        description="money, in the unit of prices: each trial pays its share of its node's price per hour",
    )
    prices: dict[StrictStr, Annotated[Float, Field(ge=0, le=1e6)]] = Field(
        default_factory=dict,
        description="price per node-hour by node type (the autoscaler's node type; an embedded or unlabelled "
        "node is type local)",
    )
    stop_running: StrictBool = Field(
        False, description="when the budget is spent, stop running trials at their next report too"
    )

    @model_validator(mode="after")
    def _check(self):
        if self.cost is not None and not self.prices:
            raise ValueError(
                "cost needs prices: give budget.prices, a price per node-hour for each node type (e.g. "
                "{local: 0.5})"
            )
        if self.stop_running and self.limits() == {}:
            raise ValueError("stop_running needs a limit: set gpu_hours, cpu_hours or cost")
        return self

    def limits(self) -> dict[str, float]:
        """The limits set: {"gpu_hours": 12, ...}."""
        return {k: v for k in ("gpu_hours", "cpu_hours", "cost") if (v := getattr(self, k)) is not None}


_SECRET_WORDS = ("secret", "access_key", "accesskey", "password", "token", "session", "credential")
RESOURCE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}")
URL_RE = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~\-/]*)?")


class StorageOptions(Section):
    """Non-secret settings for s3:// storage. Credentials never belong in a spec."""

    endpoint_url: StrictStr | None = Field(
        None,
        description="S3-compatible endpoint, e.g. http://127.0.0.1:8333 "
        "(default: AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL, then AWS)",
    )
    region: StrictStr | None = Field(None, description="default: AWS_REGION, AWS_DEFAULT_REGION, us-east-1")
    addressing_style: Literal["path", "virtual", "auto"] | None = Field(
        None, description="default: path with an endpoint_url, else auto"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if any(word in str(key).lower() for word in _SECRET_WORDS):
                    raise ValueError(
                        f"{key!r} looks like a credential, and credentials never go in a spec: set "
                        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment, use "
                        "~/.aws/credentials (AWS_PROFILE) or an instance role"
                    )
        return data

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            parsed = urlparse(value)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ValueError(f"{value!r} is not an http(s):// URL")
            if "@" in parsed.netloc:
                raise ValueError("must not carry credentials; set them in the environment or ~/.aws")
            if not URL_RE.fullmatch(value):
                raise ValueError(
                    f"{value!r} is not a plain http(s)://host[:port][/path] URL (no spaces, quotes, "
                    "query strings or shell characters)"
                )
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", value):
            raise ValueError(
                f"{value!r} is not a region name (lowercase letters, digits, dashes, e.g. us-east-1)"
            )
        return value

    def s3(self) -> S3Options:
        return S3Options(self.endpoint_url, self.region, self.addressing_style)


def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not allowed: use lowercase letters, digits and dashes, starting and "
            "ending with a letter or digit, at most 63 characters (it becomes a path)"
        )
    return value


class JobSpec(Section):
    kind: Literal["tune"] = Field(
        "tune", description="tune (a search; the default) | ensemble (see EnsembleSpec)"
    )
    name: StrictStr = Field(description="lowercase letters, digits, dashes; at most 63 characters")
    workload: StrictStr = Field(description="a built-in workload or 'package.module:function'")
    seed: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] = Field(0, description="job seed")
    description: StrictStr = ""
    search: Search
    scheduler: Scheduler = Field(default_factory=Scheduler)  # type: ignore[valid-type]
    train: Train = Field(default_factory=Train)
    budget: Budget = Field(default_factory=Budget, description="limits on what the search spends")
    storage: StrictStr = Field("./results", description="a local folder, file://... or s3://bucket/prefix")
    storage_options: StorageOptions = Field(default_factory=StorageOptions, description="for s3:// storage")
    sanity: StrictBool = Field(
        False, description="run `hpo sanity`'s checks first; do not search if one fails"
    )

    _name = field_validator("name")(_check_name)
    _storage = field_validator("storage")(check_storage_uri)

    @model_validator(mode="after")
    def _check(self):
        self.scheduler.kind.check(self.scheduler.settings(), self.train.max_epochs)
        if self.scheduler.kind.adapts_configs:
            self._check_population()
        if len(self.search.metrics) > 1 and not self.scheduler.kind.multi_objective:
            several = ", ".join(name for name, kind in SCHEDULERS.items() if kind.multi_objective)
            raise ValueError(
                f"scheduler.type: {self.scheduler.type} ranks trials by one metric, and search.metric lists "
                f"{len(self.search.metrics)}; use {several}"
            )
        return self

    def _check_population(self) -> None:
        """What PBT (a scheduler that changes a trial's hyperparameters while it trains) needs of the search."""
        kind, search = self.scheduler.type, self.search
        if search.search_algorithm.adaptive:
            plain = ", ".join(name for name, a in ALGORITHMS.items() if not a.adaptive)
            raise ValueError(
                f"scheduler.type: {kind} draws each trial's next hyperparameters itself, and algorithm "
                f"{search.algorithm} proposes from results; use {plain} for its first population"
            )
        population = search.num_trials()
        if population < 2:
            raise ValueError(
                f"scheduler.type: {kind} needs a population of at least 2 trials (num_samples is {search.num_samples})"
            )
        if search.max_concurrent > population:
            raise ValueError(
                f"search.max_concurrent {search.max_concurrent} is above the population of {population} trials; "
                f"{kind} runs at most its population at once: lower max_concurrent or raise num_samples"
            )

    def resolved(self, workload) -> JobSpec:
        """This spec with the workload's defaults written into `search.fixed` for everything not searched, and
        the scheduler's defaults into `scheduler`."""
        searched = self.search.hyperparameters.names
        fixed = {k: v for k, v in workload.defaults().items() if k not in searched}
        fixed.update(self.search.fixed)
        return self.model_copy(
            update={
                "search": self.search.model_copy(update={"fixed": fixed}),
                "scheduler": self.scheduler.model_copy(update=self.scheduler.settings()),
            }
        )

    def middle_config(self, workload) -> dict[str, Any]:
        """A config to try things with: fixed values and defaults, plus the middle of each searched
        distribution."""
        config = dict(self.resolved(workload).search.fixed)
        config.update(self.search.hyperparameters.middle())
        return config

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=False), sort_keys=False)


class EnsembleSpec(Section):
    """`kind: ensemble`: ensemble the best trials of a finished tuning run (what `hpo ensemble` does), as a job
    that `hpo run` runs and `hpo submit` sends to a cluster."""

    kind: Literal["ensemble"]
    name: StrictStr = Field(description="lowercase letters, digits, dashes; at most 63 characters")
    description: StrictStr = ""
    run: StrictStr = Field(description="the tuning run's results_uri (printed by hpo run)")
    top_k: Annotated[StrictInt, Field(ge=1, le=1000)] = Field(
        3, description="members, or greedy selection steps"
    )
    method: Literal[tuple(ENSEMBLE_METHODS)] = Field(
        DEFAULT_ENSEMBLE_METHOD,
        description=" | ".join(  # type: ignore[valid-type]
            f"{name} ({help})" for name, help in ENSEMBLE_METHODS.items()
        ),
    )
    metric: StrictStr | None = Field(
        None,
        description="rank by this objective of a run of several (its value at each trial's last report); default: "
        "the first objective's best report",
    )
    storage_options: StorageOptions = Field(default_factory=StorageOptions, description="for s3:// runs")

    _name = field_validator("name")(_check_name)
    _run = field_validator("run")(check_storage_uri)


KINDS = {"tune": JobSpec, "ensemble": EnsembleSpec}


def _format_error(err: dict) -> str:
    # Tags from the tagged union ("loguniform") repeat the key the user wrote; drop the duplicate.
    # a key that is not a plain name (a newline, a space, a dot) is shown quoted: the message stays one line
    # a choice of branches is tagged "branches" in the union; the spec wrote "choice"
    parts = [
        "choice" if p == BRANCHES_TAG else str(p) if re.fullmatch(r"[\w-]+", str(p)) else repr(str(p))
        for p in err["loc"]
    ]
    dedup = [p for i, p in enumerate(parts) if not (i and parts[i - 1] == p)]
    loc = ".".join(dedup)
    msg = err["msg"].removeprefix("Value error, ").replace(" after validation", "")
    error_type = err["type"]
    if error_type == "literal_error":
        expected = re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", ""))
        msg = not_allowed(err["input"], expected)
    elif error_type == "missing":
        msg = "is required"
    elif error_type not in ("value_error", "assertion_error"):
        shown = repr(err.get("input"))
        msg = f"{msg}, got {shown if len(shown) <= 60 else shown[:57] + '...'}"
    return f"{loc}: {msg}" if loc else msg


def parse_spec(data: Any, *, check_workload: bool = True) -> JobSpec | EnsembleSpec:
    """Validate an already-parsed mapping (a JobSpec, or an EnsembleSpec for `kind: ensemble`). Raises SpecError."""
    if data is None:
        raise SpecError("file is empty; a job spec is a YAML mapping with at least name, workload and search")
    if not isinstance(data, dict):
        raise SpecError(f"must be a YAML mapping (key: value), got a {type(data).__name__}")
    kind = data.get("kind", "tune")
    if not isinstance(kind, str) or kind not in KINDS:
        raise SpecError(not_allowed(kind, KINDS, "kind: "))
    try:
        spec = KINDS[kind].model_validate(data)
    except ValidationError as exc:
        raise SpecError(_format_error(exc.errors()[0])) from None
    if check_workload and isinstance(spec, JobSpec):
        check_against_workload(spec)
    return spec


def _not_a_file(path: Path, mode: int) -> SpecError:
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return SpecError(f"{path} is {kind}, not a regular file; a job spec is a file")


def _read_spec_file(path: Path) -> bytes:
    """The bytes of a spec file, never more than MAX_BYTES + 1 of them read. A device or a FIFO is refused by its
    stat, before it is opened (opening a FIFO waits for a writer); opened without waiting, and checked again on
    what was opened, in case the path changed in between."""
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if not stat.S_ISREG(mode):
        raise _not_a_file(path, mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise _not_a_file(path, opened.st_mode)
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise SpecError(
            f"{path} is {max(opened.st_size, len(data))} bytes; a job spec is at most {MAX_BYTES} bytes"
        )
    return data


def load_spec(path: str | Path, *, check_workload: bool = True) -> JobSpec | EnsembleSpec:
    """Read and validate a job spec file. Raises SpecError with a one-line reason."""
    path = Path(path)
    try:
        raw = _read_spec_file(path)
    except FileNotFoundError:
        raise SpecError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise SpecError(f"{path} is a directory, not a spec file") from None
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = load_yaml_text(raw)
    except YamlError as exc:
        raise SpecError(str(exc)) from None
    return parse_spec(data, check_workload=check_workload)


def json_schema() -> str:
    """The spec's JSON Schema (draft 2020-12), for editors and CI."""
    schema = JobSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "HPO job spec"
    return json.dumps(schema, indent=2)
