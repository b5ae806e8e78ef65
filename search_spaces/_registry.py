"""The registry of search spaces, by name (``resnet``, ``densenet``...).

An entry holds what can be read without Keras (the description and the declarations) and loads the
space's class, which needs Keras, only when asked: the built-in classes are found by module name, so
listing the spaces imports no framework and no module here imports a space.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any
from typing import TypeVar

from search_spaces._declarations import AUTO_DESCRIPTION
from search_spaces._declarations import DENSENET_DESCRIPTION
from search_spaces._declarations import INCEPTION_DESCRIPTION
from search_spaces._declarations import RESNET_DESCRIPTION
from search_spaces._declarations import RESNET_IMAGENET_DESCRIPTION
from search_spaces._declarations import VGG_DESCRIPTION
from search_spaces._declarations import declare_auto
from search_spaces._declarations import declare_space
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


# The built-in spaces: description, and the module and class that build them.
BUILT_IN = {
    "resnet": (RESNET_DESCRIPTION, "search_spaces.resnet", "TunableResNet"),
    "densenet": (DENSENET_DESCRIPTION, "search_spaces.densenet", "TunableDenseNet"),
    "vgg": (VGG_DESCRIPTION, "search_spaces.vgg", "TunableVGG"),
    "resnet_imagenet": (RESNET_IMAGENET_DESCRIPTION, "search_spaces.resnet_imagenet", "TunableResNetImageNet"),
    "inception": (INCEPTION_DESCRIPTION, "search_spaces.inception", "TunableInception"),
}
SPACES: dict[str, SpaceEntry] = {
    **{name: SpaceEntry(description, functools.partial(declare_space, name), _by_name(module, cls))
       for name, (description, module, cls) in BUILT_IN.items()},
    "auto": SpaceEntry(AUTO_DESCRIPTION, declare_auto, _by_name("search_spaces.auto", "TunableAuto")),
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
