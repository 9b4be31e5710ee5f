"""Lazy public names for a method package: ``from trainers.<m> import f`` works, and importing
``trainers.<m>.spec`` (the registry does, to list methods) does not import torch through the package."""
from __future__ import annotations

import importlib
import pkgutil
import sys
import types
from typing import Callable


class _MethodPackage(types.ModuleType):
    """The import system binds each imported submodule as an attribute of its package. Where a public name is
    also a submodule's name (continual's ``similarity()`` in ``similarity.py``), the public name keeps the
    attribute, as an eager ``from .similarity import similarity`` in the package would."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and name in self.__dict__.get("_public_over_submodule", ()):
            return
        super().__setattr__(name, value)


def lazy_exports(package: str, names: dict[str, list[str]]) -> tuple[list[str], Callable, Callable]:
    """``names``: submodule -> the public names it defines. Returns ``__all__``, ``__getattr__`` and ``__dir__``
    for the package (PEP 562): a name is imported from its submodule on first use."""
    where = {n: sub for sub, ns in names.items() for n in ns}
    if len(where) != sum(len(ns) for ns in names.values()):
        raise ValueError(f"{package}: a public name is listed under two submodules")

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    clash = set(where) & {m.name for m in pkgutil.iter_modules(sys.modules[package].__path__)}
    if clash:
        mod = sys.modules[package]
        mod._public_over_submodule = frozenset(clash)
        mod.__class__ = _MethodPackage

    def __dir__() -> list[str]:
        return sorted(where)

    return list(where), __getattr__, __dir__
