"""The registry of search spaces, by name (``resnet``, ``densenet``...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import TypeVar

from search_spaces._errors import SpaceError

if TYPE_CHECKING:
    from search_spaces._base import TunableSpace

SpaceT = TypeVar("SpaceT", bound="type[TunableSpace]")

SPACES: dict[str, type[TunableSpace]] = {}


def register_space(name: str) -> Callable[[SpaceT], SpaceT]:
    """Class decorator that registers a space under ``name``, so ``get_space(name)`` finds it."""

    def wrap(cls: SpaceT) -> SpaceT:
        cls.space_name = name
        SPACES[name] = cls
        return cls

    return wrap


def get_space(name: str) -> type[TunableSpace]:
    """Return the space class registered as ``name``; an unknown name lists the valid ones."""
    if name not in SPACES:
        raise SpaceError(f"unknown space {name!r}; choose one of: {', '.join(list_spaces())}")
    return SPACES[name]


def list_spaces() -> list[str]:
    """Names of the registered spaces, sorted."""
    return sorted(SPACES)
