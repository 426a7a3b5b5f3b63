"""Building blocks of the job spec: the strict section base class and the field type of a searched
hyperparameter (any registered distribution, chosen by its one key).

Every section refuses unknown keys with "did you mean"; every distribution checks its own arguments.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Tag, model_validator

from orchestrator.errors import did_you_mean
from orchestrator.search.distributions import DISTRIBUTIONS


def unknown_key(key: str, allowed: list[str]) -> str:
    return f"unknown key {key!r} ({did_you_mean(key, allowed)}allowed: {', '.join(allowed)})"


class Section(BaseModel):
    """A spec section: no unknown keys (with "did you mean"), frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _only_known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = list(cls.model_fields)
            for key in data:
                if key not in allowed:
                    raise ValueError(cls._unknown_key_message(key, allowed))
        return data

    @classmethod
    def _unknown_key_message(cls, key: str, allowed: list[str]) -> str:
        return unknown_key(key, allowed)


def _distribution_tag(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return type(value).name
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        return key if key in DISTRIBUTIONS else None
    return None


def _check_distribution_shape(value: Any) -> Any:
    names = list(DISTRIBUTIONS)
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(
            f"must be one distribution such as {{loguniform: [1.0e-4, 1.0e-1]}}, got {value!r}"
            f" (distributions: {', '.join(names)})"
        )
    key = next(iter(value))
    if key not in DISTRIBUTIONS:
        raise ValueError(
            f"unknown distribution {key!r} ({did_you_mean(key, names)}distributions: {', '.join(names)})"
        )
    return value


# A searched hyperparameter: one of the registered distributions, picked by the key the spec wrote.
SearchedHyperparameter = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for name, cls in DISTRIBUTIONS.items())],  # type: ignore[misc]  # noqa: UP007
    Discriminator(_distribution_tag),
    BeforeValidator(_check_distribution_shape),
]
