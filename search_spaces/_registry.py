"""The registry of search spaces, by name (``resnet``, ``densenet``...).

An entry holds what can be read without Keras (the description and the declarations) and loads the
space's class, which needs Keras, only when asked: the built-in classes are found by module name, so
listing the spaces imports no framework and no module here imports a space.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any
from typing import TypeVar

from search_spaces._declarations import DENSENET_DESCRIPTION
from search_spaces._declarations import RESNET_DESCRIPTION
from search_spaces._declarations import declare_densenet
from search_spaces._declarations import declare_resnet
from search_spaces._errors import SpaceError
from search_spaces._params import ParamSpec
from search_spaces._params import declared

if TYPE_CHECKING:
    from search_spaces._base import TunableSpace

SpaceT = TypeVar("SpaceT", bound="type[TunableSpace]")


@dataclass(frozen=True)
class SpaceEntry:
    """One registered space: its description, its ``declare(hp)``, and how to load its class."""

    description: str
    declare: Callable[[Any], dict[str, Any]]
    load: Callable[[], type[TunableSpace]]

    def hyperparameters(self) -> list[ParamSpec]:
        """The declared hyperparameters (kind, name, range, default), in declaration order."""
        return declared(self.declare)


def _by_name(module: str, name: str) -> Callable[[], type[TunableSpace]]:
    return lambda: getattr(importlib.import_module(module), name)


SPACES: dict[str, SpaceEntry] = {
    "resnet": SpaceEntry(RESNET_DESCRIPTION, declare_resnet, _by_name("search_spaces.resnet", "TunableResNet")),
    "densenet": SpaceEntry(DENSENET_DESCRIPTION, declare_densenet,
                           _by_name("search_spaces.densenet", "TunableDenseNet")),
}


def register_space(name: str) -> Callable[[SpaceT], SpaceT]:
    """Class decorator that registers a space under ``name``, so ``get_space(name)`` finds it."""

    def wrap(cls: SpaceT) -> SpaceT:
        cls.space_name = name
        SPACES[name] = SpaceEntry(cls.description, cls.declare, lambda: cls)
        return cls

    return wrap


def space_entry(name: str) -> SpaceEntry:
    """The registry's entry for ``name`` (read without Keras); an unknown name lists the valid ones."""
    if name not in SPACES:
        raise SpaceError(f"unknown space {name!r}; choose one of: {', '.join(list_spaces())}")
    return SPACES[name]


def get_space(name: str) -> type[TunableSpace]:
    """Return the space class registered as ``name`` (this imports Keras)."""
    return space_entry(name).load()


def list_spaces() -> list[str]:
    """Names of the registered spaces, sorted."""
    return sorted(SPACES)
