"""Where two nested values first differ: the one walker behind `hpo resume --spec` (the given spec against the
run's) and `hpo reproduce` (a rerun's checkpoint against the stored one)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any


def first_difference(
    a: Any,
    b: Any,
    *,
    same: Callable[[Any, Any], bool] = operator.eq,
    exact_keys: bool = False,
    _path: tuple = (),
) -> tuple[tuple, str] | None:
    """None if `a` and `b` are the same, else (the path of keys and indexes to the first difference, what
    differs there: "value", "keys" or "length"). Dicts are walked in `b`'s key order, then `a`'s own keys; a key
    one side lacks is None there, unless `exact_keys`, when differing key lists are the difference. Lists and
    tuples are walked item by item; `same(x, y)` decides everything else."""
    if isinstance(a, dict) and isinstance(b, dict):
        if exact_keys and list(a) != list(b):
            return _path, "keys"
        for key in [*b, *(k for k in a if k not in b)]:
            found = first_difference(
                a.get(key), b.get(key), same=same, exact_keys=exact_keys, _path=(*_path, key)
            )
            if found is not None:
                return found
        return None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return _path, "length"
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, same=same, exact_keys=exact_keys, _path=(*_path, index))
            if found is not None:
                return found
        return None
    return None if same(a, b) else (_path, "value")


def value_at(value: Any, path: tuple) -> Any:
    """What `value` holds at `path` (None where a key or index is missing)."""
    for step in path:
        if isinstance(value, dict):
            value = value.get(step)
        elif isinstance(value, list | tuple) and isinstance(step, int) and step < len(value):
            value = value[step]
        else:
            return None
    return value
