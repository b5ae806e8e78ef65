"""Tunable CNN search spaces for Keras image classifiers, registered by name.

>>> from search_spaces import get_space
>>> space = get_space("resnet")(input_shape=(32, 32, 3), classes=10)
>>> model = space.build(keras_tuner.HyperParameters())   # ResNet-8 at the defaults

Importing the package imports no framework: the names that need Keras (the space classes, the
builders) load on first use, so listing the spaces or checking ``--set`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING
from typing import Any

from search_spaces._declarations import AUGMENTATION_HELP
from search_spaces._declarations import TRANSFORMS
from search_spaces._declarations import smallest_values
from search_spaces._declarations import transforms_of
from search_spaces._errors import SpaceError
from search_spaces._params import Declarations
from search_spaces._params import ParamSpec
from search_spaces._params import declared
from search_spaces._params import parse_assignments
from search_spaces._params import resolve_overrides
from search_spaces._registry import SpaceEntry
from search_spaces._registry import get_space
from search_spaces._registry import list_spaces
from search_spaces._registry import register_space
from search_spaces._registry import space_entry

if TYPE_CHECKING:
    from search_spaces._base import SparseSmoothedCrossentropy
    from search_spaces._base import TunableSpace
    from search_spaces._layers import is_flip_averaged
    from search_spaces.auto import TunableAuto
    from search_spaces.densenet import TunableDenseNet
    from search_spaces.densenet import build_densenet
    from search_spaces.inception import TunableInception
    from search_spaces.inception import build_inception
    from search_spaces.resnet import TunableResNet
    from search_spaces.resnet import build_resnet
    from search_spaces.resnet_imagenet import TunableResNetImageNet
    from search_spaces.resnet_imagenet import build_resnet_imagenet
    from search_spaces.vgg import TunableVGG
    from search_spaces.vgg import build_vgg

# The names that import Keras, and the module each comes from.
_NEEDS_KERAS = {
    "TunableSpace": "search_spaces._base",
    "SparseSmoothedCrossentropy": "search_spaces._base",
    "is_flip_averaged": "search_spaces._layers",
    "TunableAuto": "search_spaces.auto",
    "TunableDenseNet": "search_spaces.densenet",
    "build_densenet": "search_spaces.densenet",
    "TunableResNet": "search_spaces.resnet",
    "build_resnet": "search_spaces.resnet",
    "TunableInception": "search_spaces.inception",
    "build_inception": "search_spaces.inception",
    "TunableResNetImageNet": "search_spaces.resnet_imagenet",
    "build_resnet_imagenet": "search_spaces.resnet_imagenet",
    "TunableVGG": "search_spaces.vgg",
    "build_vgg": "search_spaces.vgg",
}


def __getattr__(name: str) -> Any:
    if name in _NEEDS_KERAS:
        return getattr(importlib.import_module(_NEEDS_KERAS[name]), name)
    raise AttributeError(f"module 'search_spaces' has no attribute {name!r}")


__all__ = [
    "AUGMENTATION_HELP",
    "TRANSFORMS",
    "smallest_values",
    "transforms_of",
    "Declarations",
    "ParamSpec",
    "SpaceEntry",
    "SpaceError",
    "SparseSmoothedCrossentropy",
    "TunableAuto",
    "TunableDenseNet",
    "TunableInception",
    "TunableResNet",
    "TunableResNetImageNet",
    "TunableSpace",
    "TunableVGG",
    "build_densenet",
    "build_inception",
    "build_resnet",
    "build_resnet_imagenet",
    "build_vgg",
    "declared",
    "get_space",
    "is_flip_averaged",
    "list_spaces",
    "parse_assignments",
    "register_space",
    "resolve_overrides",
    "space_entry",
]
