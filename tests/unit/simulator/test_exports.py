"""The package's ``__all__`` is its public API: sorted, importable, and listing every public name it imports."""

from __future__ import annotations

import types

import pytest

import simulator

pytestmark = pytest.mark.unit


def test_all_is_sorted_and_importable() -> None:
    names = simulator.__all__
    constants = [n for n in names if n.isupper()]
    assert names == constants + sorted(n for n in names if not n.isupper())  # ruff's order: constants first
    assert constants == sorted(constants)
    for name in names:
        assert hasattr(simulator, name), name


def test_every_public_name_of_the_package_is_exported() -> None:
    public = {
        name
        for name, value in vars(simulator).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(simulator.__all__)


def test_exported_members_say_where_they_live() -> None:
    for name in simulator.__all__:
        value = getattr(simulator, name)
        module = getattr(value, "__module__", None)
        if module is not None and not isinstance(value, tuple):
            assert module.startswith("simulator."), f"{name} comes from {module}"
