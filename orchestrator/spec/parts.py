"""Building blocks of the job spec: the strict section base class, and the field type of a searched
hyperparameter (search/space.py's: any registered distribution, chosen by its one key, or a choice of branches).

Every section refuses unknown keys with "did you mean"; every distribution checks its own arguments.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from orchestrator.errors import did_you_mean
from orchestrator.search.space import SearchedHyperparameter


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


# A searched hyperparameter: one of the registered distributions, picked by the key the spec wrote, or a choice of
# branches (search/space.py).
__all__ = ["SearchedHyperparameter", "Section", "unknown_key"]
