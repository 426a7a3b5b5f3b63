"""The one first-difference walker (execution/differences.py) that `hpo resume --spec` and `hpo reproduce` use."""

from __future__ import annotations

import torch

from orchestrator.execution.differences import first_difference, value_at
from orchestrator.execution.reproduce import _same_leaf


def test_specs_differ_at_the_first_key_of_the_stored_order_and_a_missing_key_is_none():
    stored = {"train": {"max_epochs": 6, "workers": 1}, "search": {"space": {"lr": [1, 2]}}}
    given = {"train": {"max_epochs": 7, "workers": 1}, "search": {"space": {"lr": [1, 3]}}}
    assert first_difference(given, stored) == (("train", "max_epochs"), "value")
    assert value_at(given, ("train", "max_epochs")) == 7 and value_at(stored, ("train", "max_epochs")) == 6
    assert first_difference({**given, "train": stored["train"]}, stored) == (
        ("search", "space", "lr", 1),
        "value",
    )
    assert first_difference({"a": 1, "extra": 2}, {"a": 1}) == (("extra",), "value")
    assert value_at({"a": 1}, ("extra",)) is None
    assert first_difference(stored, stored) is None


def test_checkpoints_differ_by_keys_length_or_a_tensor_bit():
    a = {"model": {"w": torch.zeros(3), "b": torch.ones(2)}, "steps": [1, 2]}
    assert first_difference(a, a, same=_same_leaf, exact_keys=True) is None
    b = {"model": {"w": torch.zeros(3), "b": torch.ones(2) + 1e-7}, "steps": [1, 2]}
    assert first_difference(a, b, same=_same_leaf, exact_keys=True) == (("model", "b"), "value")
    assert first_difference(
        a, {"model": {"w": torch.zeros(3)}, "steps": [1, 2]}, same=_same_leaf, exact_keys=True
    ) == (
        ("model",),
        "keys",
    )
    assert first_difference(a, {**a, "steps": [1]}, same=_same_leaf, exact_keys=True) == (
        ("steps",),
        "length",
    )
    assert first_difference(torch.zeros(2), torch.zeros(2, dtype=torch.float64), same=_same_leaf) == (
        (),
        "value",
    )
