"""Building blocks of the job spec: the strict section base class and the search-space distributions.

Every section refuses unknown keys with "did you mean"; every distribution checks its own range.
"""

from __future__ import annotations

import difflib
import math
from typing import Annotated, Any, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    model_validator,
)

Float = Annotated[float, Strict()]  # accepts ints, refuses strings and booleans
Scalar = StrictBool | StrictInt | Float | StrictStr


class SpecError(ValueError):
    """A job spec that cannot run. `str()` is one line: where, what, and what is allowed."""


def _unknown_key(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {key!r} ({hint}allowed: {', '.join(allowed)})"


class _Section(BaseModel):
    """A spec section: no unknown keys (with "did you mean"), frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _only_known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = list(cls.model_fields)
            for key in data:
                if key not in allowed:
                    raise ValueError(_unknown_key(key, allowed))
        return data


def _pair(name: str, low: float, high: float, *, positive: bool = False) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} bounds must be finite numbers, got [{low}, {high}]")
    if positive and low <= 0:
        raise ValueError(f"{name} needs 0 < low < high, got [{low}, {high}]")
    if low >= high:
        raise ValueError(f"{name} needs low < high, got [{low}, {high}]")


class Uniform(_Section):
    uniform: Annotated[list[Float], Field(min_length=2, max_length=2, description="[low, high], floats")]

    @model_validator(mode="after")
    def _check(self):
        _pair("uniform", *self.uniform)
        return self


class LogUniform(_Section):
    loguniform: Annotated[list[Float], Field(min_length=2, max_length=2, description="[low, high], 0 < low")]

    @model_validator(mode="after")
    def _check(self):
        _pair("loguniform", *self.loguniform, positive=True)
        return self


class RandInt(_Section):
    randint: Annotated[
        list[StrictInt], Field(min_length=2, max_length=2, description="[low, high], inclusive")
    ]

    @model_validator(mode="after")
    def _check(self):
        low, high = self.randint
        if low > high:
            raise ValueError(f"randint needs low <= high (both inclusive), got [{low}, {high}]")
        return self


class Choice(_Section):
    choice: Annotated[list[Scalar], Field(min_length=1, max_length=10_000, description="the values to try")]

    @model_validator(mode="after")
    def _check(self):
        if len({(type(v), v) for v in self.choice}) != len(self.choice):
            raise ValueError(f"choice lists a value twice: {self.choice}")
        return self


DISTRIBUTIONS = {"uniform": Uniform, "loguniform": LogUniform, "randint": RandInt, "choice": Choice}


def _distribution_tag(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return next(iter(type(value).model_fields))
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        return key if key in DISTRIBUTIONS else None
    return None


Distribution = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for name, cls in DISTRIBUTIONS.items())],  # type: ignore[misc]  # noqa: UP007
    Discriminator(_distribution_tag),
]


def _check_distribution_shape(value: Any) -> Any:
    names = list(DISTRIBUTIONS)
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(
            f"must be one distribution such as {{loguniform: [1.0e-4, 1.0e-1]}}, got {value!r}"
            f" (distributions: {', '.join(names)})"
        )
    key = next(iter(value))
    if key not in DISTRIBUTIONS:
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown distribution {key!r} ({hint}distributions: {', '.join(names)})")
    return value
