"""Search-space distributions: one class per kind, each a value that knows itself.

A spec writes a distribution as a one-key mapping, `lr: {loguniform: [1.0e-4, 1.0e-1]}`; the key names the
class. Each class validates its own arguments and knows everything the rest of the system asks of it:

- `from_unit(u)`: the value at u in [0, 1), so that a uniform u gives the distribution (quasi-random search
  maps Sobol points through it);
- `finite_values()`: every value it can take, if there are few enough to enumerate (grid search), else None;
- `value_type`: the Python type of its values (the results column's type);
- the analysis scale: `log_scale`, `ordered`, `unit(value)` and `at_unit(position)`;
- its JSON Schema, from the field and the class docstring.

Adding a distribution is one class here (it registers itself in DISTRIBUTIONS), its entries in
tuning/forms.py's tables (its Ray Tune domain and HyperOpt expression: where it runs is not this package's
business), plus its tests.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, StrictStr, model_validator

Float = Annotated[float, Strict()]  # accepts ints, refuses strings and booleans
Scalar = StrictBool | StrictInt | Float | StrictStr
GRID_LIMIT = 10_000  # values per hyperparameter that grid search enumerates at most (as choice's own limit)

DISTRIBUTIONS: dict[str, type[Distribution]] = {}  # name -> class, in definition order; filled by subclasses


def finite_kinds() -> list[str]:
    """The distributions grid search can enumerate (those that may have finitely many values)."""
    return [
        name for name, cls in DISTRIBUTIONS.items() if cls.finite_values is not Distribution.finite_values
    ]


def scalar_type(values: list) -> type:
    """The one Python type a column of `values` takes: bool, int, float (ints and floats mixed), else str."""
    kinds = {type(v) for v in values}
    if kinds == {bool}:
        return bool
    if kinds <= {int}:
        return int
    if kinds <= {int, float}:
        return float
    return str


def as_type(value: Any, kind: type) -> Any:
    """`value` as a column of Python type `kind` holds it (None stays None)."""
    if value is None or kind is bool:
        return value
    return kind(value)


def _finite_pair(name: str, low: float, high: float) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} bounds must be finite numbers, got [{low}, {high}]")


class Distribution(BaseModel):
    """A searched hyperparameter's distribution. Subclasses have exactly one field, named by their key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassVar[str]
    example: ClassVar[str]  # the arguments of an example, as a spec writes them
    log_scale: ClassVar[bool] = False  # analysis (isolation plots, boundary warnings) in log space
    ordered: ClassVar[bool] = True  # values have an order (a boundary to be near); choice's do not
    # value_type: the Python type of every value (float, int; a choice's is its values' common type)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        fields = list(cls.model_fields)
        if len(fields) == 1:  # abstract bases have none
            cls.name = fields[0]
            DISTRIBUTIONS[cls.name] = cls

    @property
    def args(self) -> list:
        """What the spec wrote: `[low, high]`, `[low, high, q]` or the choices."""
        return list(getattr(self, self.name))

    def describe(self) -> str:
        return f"{self.name} {self.args}"

    # -- sampling -------------------------------------------------------------------------------------------
    def from_unit(self, u: float) -> Any:
        raise NotImplementedError

    def finite_values(self) -> list | None:
        """Every value, in order, for grid search; None where there are infinitely many."""
        return None

    def canonical(self, value: Any) -> Any:
        """The value as this distribution states it (a quantized float snapped to its grid)."""
        return value

    def from_column(self, stored: Any) -> Any:
        """The sampled value again, from what a results column stored."""
        return stored

    def contains(self, value: Any) -> bool:
        low, high = self.args[:2]
        return low <= value <= high

    def takes(self, value: Any) -> bool:
        """Whether a value written in a spec (a start config) is one this distribution can take: a number in
        range, an integer for an integer distribution (booleans and strings are not numbers here)."""
        if isinstance(value, bool | str) or (self.value_type is int and not isinstance(value, int)):
            return False
        return self.contains(value)

    def middle(self) -> Any:
        """A representative value: the middle of the range in the distribution's scale."""
        return self.canonical(self.at_unit(0.5))

    def extremes(self) -> list:
        """The values a range check must accept: the bounds (or every choice)."""
        return self.args[:2]

    # -- analysis scale -------------------------------------------------------------------------------------
    def unit(self, value: float) -> float:
        """Where `value` sits in [0, 1] across the range, in the analysis scale."""
        low, high = (self._scale(float(v)) for v in self.args[:2])
        return 0.0 if high == low else (self._scale(float(value)) - low) / (high - low)

    def at_unit(self, position: float) -> float:
        """The value at `position` in [0, 1] across the range, in the analysis scale (bin centres)."""
        low, high = (self._scale(float(v)) for v in self.args[:2])
        x = low + position * (high - low)
        return math.exp(x) if self.log_scale else x

    def _scale(self, value: float) -> float:
        return math.log(value) if self.log_scale else value


class Uniform(Distribution):
    """A float drawn uniformly from [low, high]."""

    example: ClassVar[str] = "[0.0, 0.5]"

    uniform: Annotated[list[Float], Field(min_length=2, max_length=2, description="[low, high], floats")]
    value_type: ClassVar[type] = float

    @model_validator(mode="after")
    def _check(self):
        low, high = self.uniform
        _finite_pair("uniform", low, high)
        if low >= high:
            raise ValueError(f"uniform needs low < high, got [{low}, {high}]")
        return self

    def from_unit(self, u: float) -> float:
        low, high = self.uniform
        return low + u * (high - low)

    def middle(self) -> float:
        return (self.uniform[0] + self.uniform[1]) / 2


class LogUniform(Distribution):
    """A positive float whose logarithm is uniform on [log low, log high]: for learning rates and other
    scales that span orders of magnitude."""

    example: ClassVar[str] = "[1.0e-4, 1.0e-1]"

    loguniform: Annotated[list[Float], Field(min_length=2, max_length=2, description="[low, high], 0 < low")]
    value_type: ClassVar[type] = float
    log_scale: ClassVar[bool] = True

    @model_validator(mode="after")
    def _check(self):
        low, high = self.loguniform
        _finite_pair("loguniform", low, high)
        if low <= 0 or low >= high:
            raise ValueError(f"loguniform needs 0 < low < high, got [{low}, {high}]")
        return self

    def from_unit(self, u: float) -> float:
        low, high = (math.log(v) for v in self.loguniform)
        return math.exp(low + u * (high - low))

    def middle(self) -> float:
        return math.sqrt(self.loguniform[0] * self.loguniform[1])


class QUniform(Distribution):
    """A multiple of q in [low, high], drawn as round(uniform(low, high) / q) * q (the ends are half as likely
    as the values between, as in Ray Tune and HyperOpt). low and high must be multiples of q."""

    example: ClassVar[str] = "[0.0, 0.5, 0.1]"

    quniform: Annotated[
        list[Float],
        Field(min_length=3, max_length=3, description="[low, high, q], q > 0; low and high multiples of q"),
    ]
    value_type: ClassVar[type] = float

    @model_validator(mode="after")
    def _check(self):
        low, high, q = self.quniform
        _finite_pair("quniform", low, high)
        if not (math.isfinite(q) and q > 0):
            raise ValueError(f"quniform needs a step q > 0, got q = {q}")
        if low >= high:
            raise ValueError(f"quniform needs low < high, got [{low}, {high}]")
        for bound in (low, high):
            if not math.isclose(bound / q, round(bound / q), rel_tol=1e-9, abs_tol=1e-9):
                raise ValueError(f"quniform bounds must be multiples of q: {bound} is not a multiple of {q}")
        return self

    @property
    def _steps(self) -> int:
        low, high, q = self.quniform
        return round((high - low) / q)

    def canonical(self, value: Any) -> float:
        low, _, q = self.quniform
        snapped = low + round((float(value) - low) / q) * q
        return float(f"{snapped:.12g}")  # 0.30000000000000004 -> 0.3: the number the spec means

    def from_unit(self, u: float) -> float:
        low, _, q = self.quniform
        return self.canonical(low + round(u * self._steps) * q)

    def middle(self) -> float:  # the upper of two middle values, as for a choice
        low, _, q = self.quniform
        return self.canonical(low + (self._steps + 1) // 2 * q)

    def finite_values(self) -> list[float] | None:
        if self._steps + 1 > GRID_LIMIT:
            return None
        low, _, q = self.quniform
        return [self.canonical(low + k * q) for k in range(self._steps + 1)]

    def contains(self, value: Any) -> bool:
        return super().contains(value) and self.canonical(value) == value


class RandInt(Distribution):
    """An integer drawn uniformly from low to high, both inclusive."""

    example: ClassVar[str] = "[1, 3]"

    randint: Annotated[
        list[StrictInt], Field(min_length=2, max_length=2, description="[low, high], inclusive")
    ]
    value_type: ClassVar[type] = int

    @model_validator(mode="after")
    def _check(self):
        low, high = self.randint
        if low > high:
            raise ValueError(f"randint needs low <= high (both inclusive), got [{low}, {high}]")
        return self

    def from_unit(self, u: float) -> int:
        low, high = self.randint
        return min(high, low + int(u * (high - low + 1)))

    def middle(self) -> int:
        return (self.randint[0] + self.randint[1]) // 2

    def finite_values(self) -> list[int] | None:
        low, high = self.randint
        return list(range(low, high + 1)) if high - low < GRID_LIMIT else None

    def canonical(self, value: Any) -> int:
        return int(round(value))


class LogRandInt(Distribution):
    """An integer from low to high, both inclusive, whose logarithm is (close to) uniform: for widths, batch
    sizes and other counts that span orders of magnitude. 1 <= low."""

    example: ClassVar[str] = "[16, 512]"

    lograndint: Annotated[
        list[StrictInt], Field(min_length=2, max_length=2, description="[low, high], inclusive, 1 <= low")
    ]
    value_type: ClassVar[type] = int
    log_scale: ClassVar[bool] = True

    @model_validator(mode="after")
    def _check(self):
        low, high = self.lograndint
        if low < 1 or low > high:
            raise ValueError(f"lograndint needs 1 <= low <= high (both inclusive), got [{low}, {high}]")
        return self

    def from_unit(self, u: float) -> int:
        # As Ray Tune samples it: log-uniform on [low, high + 1), rounded down.
        low, high = self.lograndint
        return min(high, int(math.exp(math.log(low) + u * (math.log(high + 1) - math.log(low)))))

    def middle(self) -> int:
        return round(math.sqrt(self.lograndint[0] * self.lograndint[1]))

    def finite_values(self) -> list[int] | None:
        low, high = self.lograndint
        return list(range(low, high + 1)) if high - low < GRID_LIMIT else None

    def canonical(self, value: Any) -> int:
        return int(round(value))


class Choice(Distribution):
    """One of the listed values, each equally likely. Values are booleans, integers, floats or strings; they
    have no order (isolation plots show each value; no boundary warning applies)."""

    example: ClassVar[str] = "[32, 64, 128]"

    choice: Annotated[
        list[Scalar], Field(min_length=1, max_length=GRID_LIMIT, description="the values to try")
    ]
    ordered: ClassVar[bool] = False

    @model_validator(mode="after")
    def _check(self):
        if len({(type(v), v) for v in self.choice}) != len(self.choice):
            raise ValueError(f"choice lists a value twice: {self.choice}")
        return self

    @property
    def value_type(self) -> type:
        return scalar_type(self.choice)

    def from_unit(self, u: float) -> Any:
        return self.choice[min(len(self.choice) - 1, int(u * len(self.choice)))]

    def finite_values(self) -> list:
        return list(self.choice)

    def from_column(self, stored: Any) -> Any:
        # A choice of mixed types is stored as strings: give back the category itself.
        return next((v for v in self.choice if as_type(v, self.value_type) == stored), stored)

    def contains(self, value: Any) -> bool:
        return value in self.choice

    def takes(self, value: Any) -> bool:
        return any(type(v) is type(value) and v == value for v in self.choice)  # 1 is not True here

    def middle(self) -> Any:
        return self.choice[len(self.choice) // 2]

    def extremes(self) -> list:
        return list(self.choice)

    def unit(self, value: Any) -> float:
        raise TypeError("a choice has no scale")

    def at_unit(self, position: float) -> float:
        raise TypeError("a choice has no scale")
