"""Tunable CNN search spaces for Keras image classifiers, registered by name.

>>> from search_spaces import get_space
>>> space = get_space("resnet")(input_shape=(32, 32, 3), classes=10)
>>> model = space.build(keras_tuner.HyperParameters())   # ResNet-8 at the defaults
"""

from __future__ import annotations

from search_spaces._base import TunableSpace
from search_spaces._errors import SpaceError
from search_spaces._layers import is_flip_averaged
from search_spaces._params import ParamSpec
from search_spaces._params import parse_assignments
from search_spaces._params import resolve_overrides
from search_spaces._registry import get_space
from search_spaces._registry import list_spaces
from search_spaces._registry import register_space
from search_spaces.densenet import TunableDenseNet
from search_spaces.densenet import build_densenet
from search_spaces.resnet import TunableResNet
from search_spaces.resnet import build_resnet

__all__ = [
    "ParamSpec",
    "SpaceError",
    "TunableDenseNet",
    "TunableResNet",
    "TunableSpace",
    "build_densenet",
    "build_resnet",
    "is_flip_averaged",
    "get_space",
    "list_spaces",
    "parse_assignments",
    "register_space",
    "resolve_overrides",
]
