"""One search across families (``--space auto``): ``family`` is a hyperparameter, and each family's own
hyperparameters are declared under it, named after it ("resnet.depth", "vgg.dense_units"), so a
sampler draws only the chosen family's and every name reads in the dashboard (``declare_auto``). The
training recipe (optimizer, learning rate, L1/L2, activation...) is shared by every family.
"""

from __future__ import annotations

from typing import Any

import keras

from search_spaces._base import TunableSpace
from search_spaces._declarations import AUTO_DESCRIPTION
from search_spaces._declarations import declare_auto
from search_spaces._registry import get_space


class TunableAuto(TunableSpace):
    """Every built-in family in one space; the chosen family's space builds the model."""

    space_name = "auto"
    description = AUTO_DESCRIPTION

    @classmethod
    def declare(cls, hp: Any) -> dict[str, Any]:
        return declare_auto(hp)

    def architecture(self, values: dict[str, Any]) -> keras.Model:
        family = get_space(values["family"])(
            self.input_shape, self.classes, mean=self.mean, variance=self.variance, augment=self.augment,
            train_steps=self.train_steps, label_smoothing=self.label_smoothing)
        return family.architecture(values)
