"""The typed job spec, validated once at the edge.

`load_spec(path)` reads a YAML file and returns a frozen `JobSpec`, or raises `SpecError` whose message is one
line naming the field, the bad value and what is allowed. Past this module nothing handles raw dicts.
`JobSpec.resolved()` fills in the workload's defaults; that is what a run records as `spec.yaml`.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator._yaml import YamlError, load_yaml_text
from orchestrator.spec_parts import (
    DISTRIBUTIONS,
    Choice,
    Distribution,
    Float,
    Scalar,
    SpecError,
    _check_distribution_shape,
    _Section,
)

__all__ = ["JobSpec", "SpecError", "load_spec", "parse_spec", "json_schema", "DISTRIBUTIONS"]

NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class Search(_Section):
    algorithm: Literal["random", "grid", "quasirandom", "hyperopt"] = Field(
        "quasirandom", description="random | grid | quasirandom (scrambled Sobol) | hyperopt (TPE)"
    )
    num_samples: Annotated[StrictInt, Field(gt=0, le=1_000_000)] = Field(
        16, description="number of trials (grid: passes over the full grid)"
    )
    max_concurrent: Annotated[StrictInt, Field(gt=0, le=10_000)] = Field(
        1, description="trials running at once"
    )
    metric: StrictStr = Field("val_loss", description="a metric the workload reports")
    mode: Literal["min", "max"] = "min"
    space: dict[StrictStr, Annotated[Distribution, BeforeValidator(_check_distribution_shape)]] = Field(
        description="searched hyperparameters, one distribution each"
    )
    fixed: dict[StrictStr, Scalar] = Field(default_factory=dict, description="hyperparameters held fixed")
    roles: dict[StrictStr, Literal["scientific", "nuisance", "fixed"]] = Field(
        default_factory=dict,
        description="Tuning Playbook roles for `hpo analyze`: scientific (compared), "
        "nuisance (optimized over), fixed; searched hyperparameters default to nuisance",
    )

    @field_validator("space", mode="before")
    @classmethod
    def _space_shape(cls, value: Any) -> Any:
        if isinstance(value, dict):
            if not value:
                raise ValueError("is empty; search at least one hyperparameter")
        return value

    @model_validator(mode="after")
    def _check(self):
        both = sorted(set(self.space) & set(self.fixed))
        if both:
            raise ValueError(f"{both[0]!r} is both searched (space) and fixed; keep it in one")
        for name, role in self.roles.items():
            if name not in self.space and name not in self.fixed:
                close = difflib.get_close_matches(name, [*self.space, *self.fixed], n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(
                    f"roles.{name}: not a searched or fixed hyperparameter ({hint}searched: "
                    f"{', '.join(self.space)})"
                )
            if (role == "fixed") != (name in self.fixed):
                where = "fixed" if name in self.fixed else "space"
                raise ValueError(
                    f"roles.{name}: {role!r} does not match where it is ({where}); searched "
                    f"hyperparameters are scientific or nuisance, those in fixed are fixed"
                )
        if self.algorithm == "grid":
            for name, dist in self.space.items():
                if not isinstance(dist, Choice):
                    raise ValueError(
                        f"grid search needs every hyperparameter to be a choice; space.{name} is "
                        f"{next(iter(dist.model_dump()))} (use algorithm: random or quasirandom)"
                    )
        return self

    def role(self, name: str) -> str:
        return self.roles.get(name, "fixed" if name in self.fixed else "nuisance")

    def distribution(self, name: str) -> tuple[str, list]:
        """(kind, arguments) of a searched hyperparameter, e.g. ("loguniform", [1e-4, 0.1])."""
        kind, args = next(iter(self.space[name].model_dump().items()))
        return kind, args


class Scheduler(_Section):
    type: Literal["fifo", "asha"] = Field("fifo", description="fifo (run every trial to the end) | asha")
    grace_period: Annotated[StrictInt, Field(gt=0)] | None = Field(
        None, description="asha: epochs before a trial may be stopped (default 1)"
    )
    reduction_factor: Annotated[Float, Field(gt=1, le=100)] | None = Field(
        None, description="asha: keep the top 1/reduction_factor at each rung (default 3)"
    )

    @model_validator(mode="after")
    def _check(self):
        if self.type == "fifo" and (self.grace_period is not None or self.reduction_factor is not None):
            raise ValueError("grace_period and reduction_factor apply only to type: asha")
        return self


class Train(_Section):
    max_epochs: Annotated[StrictInt, Field(gt=0, le=100_000)] = Field(10, description="epochs per trial")
    workers: Annotated[StrictInt, Field(gt=0, le=1024)] = Field(
        1, description="Ray Train workers per trial; more than 1 runs DDP"
    )
    use_gpu: StrictBool = Field(False, description="one GPU per worker")
    cpus_per_worker: Annotated[Float, Field(gt=0, le=1024)] = Field(
        1.0, description="logical CPUs per worker"
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


_SECRET_WORDS = ("secret", "access_key", "accesskey", "password", "token", "session", "credential")


class StorageOptions(_Section):
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
            from urllib.parse import urlparse

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

    def s3(self):
        from orchestrator.storage import S3Options

        return S3Options(self.endpoint_url, self.region, self.addressing_style)


URL_RE = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~\-/]*)?")


class JobSpec(_Section):
    kind: Literal["tune"] = Field(
        "tune", description="tune (a search; the default) | ensemble (see EnsembleSpec)"
    )
    name: StrictStr = Field(description="lowercase letters, digits, dashes; at most 63 characters")
    workload: StrictStr = Field(description="a built-in workload or 'package.module:function'")
    seed: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] = Field(0, description="job seed")
    description: StrictStr = ""
    search: Search
    scheduler: Scheduler = Field(default_factory=Scheduler)
    train: Train = Field(default_factory=Train)
    storage: StrictStr = Field("./results", description="a local folder, file://... or s3://bucket/prefix")
    storage_options: StorageOptions = Field(default_factory=StorageOptions, description="for s3:// storage")
    sanity: StrictBool = Field(
        False, description="run `hpo sanity`'s checks first; do not search if one fails"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(
                f"{value!r} is not allowed: use lowercase letters, digits and dashes, starting and "
                "ending with a letter or digit, at most 63 characters (it becomes a path)"
            )
        return value

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        from orchestrator.storage import check_storage_uri

        return check_storage_uri(value)

    @model_validator(mode="after")
    def _check(self):
        asha = self.scheduler.type == "asha"
        if asha and (self.scheduler.grace_period or 1) > self.train.max_epochs:
            raise ValueError(
                f"scheduler.grace_period {self.scheduler.grace_period} is above train.max_epochs "
                f"{self.train.max_epochs}; ASHA could never stop a trial"
            )
        return self

    def resolved(self, workload) -> JobSpec:
        """This spec with the workload's defaults written into `search.fixed` for everything not searched."""
        fixed = {k: v for k, v in workload.defaults().items() if k not in self.search.space}
        fixed.update(self.search.fixed)
        scheduler = self.scheduler
        if scheduler.type == "asha":
            scheduler = scheduler.model_copy(
                update={
                    "grace_period": scheduler.grace_period or 1,
                    "reduction_factor": scheduler.reduction_factor or 3.0,
                }
            )
        return self.model_copy(
            update={"search": self.search.model_copy(update={"fixed": fixed}), "scheduler": scheduler}
        )

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=False), sort_keys=False)


def _format_error(err: dict) -> str:
    # Tags from the tagged union ("loguniform") repeat the key the user wrote; drop the duplicate.
    parts = [str(p) for p in err["loc"]]
    dedup = [p for i, p in enumerate(parts) if not (i and parts[i - 1] == p)]
    loc = ".".join(dedup)
    msg = err["msg"].removeprefix("Value error, ").replace(" after validation", "")
    kind = err["type"]
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", ""))
        close = difflib.get_close_matches(str(err["input"]), expected, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        msg = f"{err['input']!r} is not allowed ({hint}allowed: {', '.join(expected)})"
    elif kind == "missing":
        msg = "is required"
    elif kind not in ("value_error", "assertion_error"):
        shown = repr(err.get("input"))
        msg = f"{msg}, got {shown if len(shown) <= 60 else shown[:57] + '...'}"
    return f"{loc}: {msg}" if loc else msg


class EnsembleSpec(_Section):
    """`kind: ensemble`: ensemble the best trials of a finished tuning run (what `hpo ensemble` does), as a job
    that `hpo run` runs and `hpo submit` sends to a cluster."""

    kind: Literal["ensemble"]
    name: StrictStr = Field(description="lowercase letters, digits, dashes; at most 63 characters")
    description: StrictStr = ""
    run: StrictStr = Field(description="the tuning run's results_uri (printed by hpo run)")
    top_k: Annotated[StrictInt, Field(ge=1, le=1000)] = Field(
        3, description="members, or greedy selection steps"
    )
    method: Literal["topk", "greedy"] = Field("topk", description="topk | greedy (Caruana forward selection)")
    storage_options: StorageOptions = Field(default_factory=StorageOptions, description="for s3:// runs")

    _name = field_validator("name")(JobSpec._name.__func__)

    @field_validator("run")
    @classmethod
    def _run(cls, value: str) -> str:
        from orchestrator.storage import check_storage_uri

        return check_storage_uri(value)


KINDS = {"tune": JobSpec, "ensemble": EnsembleSpec}


def parse_spec(data: Any, *, check_workload: bool = True) -> JobSpec | EnsembleSpec:
    """Validate an already-parsed mapping (a JobSpec, or an EnsembleSpec for `kind: ensemble`). Raises SpecError."""
    if data is None:
        raise SpecError("file is empty; a job spec is a YAML mapping with at least name, workload and search")
    if not isinstance(data, dict):
        raise SpecError(f"must be a YAML mapping (key: value), got a {type(data).__name__}")
    kind = data.get("kind", "tune")
    if not isinstance(kind, str) or kind not in KINDS:
        close = difflib.get_close_matches(str(kind), list(KINDS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SpecError(f"kind: {kind!r} is not allowed ({hint}allowed: {', '.join(KINDS)})")
    try:
        spec = KINDS[kind].model_validate(data)
    except ValidationError as exc:
        raise SpecError(_format_error(exc.errors()[0])) from None
    if check_workload and isinstance(spec, JobSpec):
        check_against_workload(spec)
    return spec


def check_against_workload(spec: JobSpec):
    """Checks that need the workload (see spec_workload.py); returns the workload."""
    from orchestrator.spec_workload import check_against_workload as check

    return check(spec)


def load_spec(path: str | Path, *, check_workload: bool = True) -> JobSpec | EnsembleSpec:
    """Read and validate a job spec file. Raises SpecError with a one-line reason."""
    path = Path(path)
    try:
        raw = path.read_bytes()
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
