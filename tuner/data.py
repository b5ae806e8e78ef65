"""Datasets: scikit-learn's embedded digits, Keras datasets, ``.npz`` files and image folders.

Every loader returns a ``Dataset`` of raw images (uint8 where the source is integer pixels), integer
labels 0..C-1, and fixed train/validation/test splits. Splits are stratified and deterministic for a
given ``split_seed``; the test split is never used for selection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuner.errors import DataError

KERAS_DATASETS = ("cifar10", "cifar100", "mnist", "fashion_mnist")
BUILTIN_DATASETS = ("digits", *KERAS_DATASETS)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Fractions carved out of the training data when a source has no validation or test split.
VAL_FRACTION = 0.1
TEST_FRACTION = 0.1
# Mirrored digits are not digits: these get no flips under --augment auto.
NO_FLIP_DATASETS = {"digits", "mnist"}
# --augment auto adds shifts below this many training images, or from this many epochs a trial.
SHIFT_BELOW_IMAGES = 20_000
SHIFT_FROM_EPOCHS = 30
# digits is small (1,797 images): larger held-out splits keep its accuracy estimates stable.
DIGITS_FRACTION = 0.2
# Where Debian's dataset packages put the original files (``apt-get install dataset-fashion-mnist``);
# a dataset found there is read offline, otherwise Keras downloads it.
SYSTEM_DATASETS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}
CLASS_NAMES = {
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"],
}
IDX_FILES = {"x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
             "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz"}


@dataclass
class Dataset:
    """Images as ``(N, H, W, C)`` arrays and integer labels, already split."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def classes(self) -> int:
        return len(self.class_names)

    def pixel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and variance of the training images, for normalisation in the model."""
        axes = (0, 1, 2)
        x = self.x_train.astype(np.float64)
        variance = np.maximum(x.var(axis=axes), 1e-6)
        return x.mean(axis=axes).tolist(), variance.tolist()

    def describe(self) -> dict[str, object]:
        """What the study records about its data."""
        return {
            "dataset": self.name,
            "input_shape": list(self.input_shape),
            "classes": self.classes,
            "class_names": self.class_names,
            "splits": {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)},
        }


def auto_augmentation(name: str, train_images: int, epochs: int) -> str:
    """The augmentation ``--augment auto`` picks: flips where a mirror keeps the class (not digits or
    MNIST), and shifts where a trial sees its images often enough to over-fit them: a small training
    split (under ``SHIFT_BELOW_IMAGES``) or a long trial (``SHIFT_FROM_EPOCHS``).

    In a short trial on a large dataset shifts only slow learning down: on Fashion-MNIST (54,000
    images, 10 epochs) ResNet-8 with them reached 0.912 validation accuracy, and without them more.
    """
    shift = train_images < SHIFT_BELOW_IMAGES or epochs >= SHIFT_FROM_EPOCHS
    flip = name not in NO_FLIP_DATASETS
    return {(True, True): "flip_shift", (True, False): "shift", (False, True): "flip",
            (False, False): "none"}[(shift, flip)]


def load_dataset(name: str, *, split_seed: int = 0) -> Dataset:
    """Load ``name``: ``digits``, a Keras dataset name, a ``.npz`` file or a folder of class folders."""
    if name == "digits":
        return _digits(split_seed)
    if name in KERAS_DATASETS:
        return _keras_dataset(name, split_seed)
    path = Path(name).expanduser()
    if path.suffix == ".npz" and path.is_file():
        return _npz(path, split_seed)
    if path.is_dir():
        return _folder(path, split_seed)
    raise DataError(
        f"unknown dataset {name!r}; choose one of: {', '.join(BUILTIN_DATASETS)}, "
        "a .npz file, or a folder of class sub-folders"
    )


def _digits(split_seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[..., None]  # 8x8 pixels with values 0..16
    y = bunch.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = _split(x, y, DIGITS_FRACTION, split_seed)
    x_train, x_val, y_train, y_val = _split(x_rest, y_rest, DIGITS_FRACTION, split_seed)
    names = [str(c) for c in bunch.target_names]
    return Dataset("digits", x_train, y_train, x_val, y_val, x_test, y_test, names)


def _keras_dataset(name: str, split_seed: int) -> Dataset:
    import keras

    folder = SYSTEM_DATASETS.get(name)
    if folder is not None and all((folder / file).is_file() for file in IDX_FILES.values()):
        arrays = {key: read_idx(folder / file) for key, file in IDX_FILES.items()}
        return from_arrays(name, **arrays, class_names=CLASS_NAMES.get(name), split_seed=split_seed)
    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as err:  # noqa: BLE001 - any failure to download or read is the same to a user
        raise DataError(
            f"cannot load {name}: Keras downloads it on first use and that failed "
            f"({type(err).__name__}); connect to the internet once, or pass a .npz file"
        ) from None
    return from_arrays(name, x_train, y_train, x_test=x_test, y_test=y_test,
                       class_names=CLASS_NAMES.get(name), split_seed=split_seed)


def read_idx(path: Path) -> np.ndarray:
    """An array from a gzipped IDX file, the format of the original MNIST and Fashion-MNIST files:
    two zero bytes, a type byte (8: uint8), the number of dimensions, each size as a big-endian
    uint32, then the values."""
    import gzip

    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 8 or len(raw) < 4 + 4 * raw[3]:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    dims = raw[3]
    shape = tuple(int(v) for v in np.frombuffer(raw, ">u4", count=dims, offset=4))
    values = np.frombuffer(bytearray(raw), np.uint8, offset=4 + 4 * dims)  # writable, as loaders give
    if values.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {values.size} values, its header says {shape}")
    return values.reshape(shape)


def _npz(path: Path, split_seed: int) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if "x_train" not in arrays or "y_train" not in arrays:
        raise DataError(f"{path} must hold x_train and y_train (found: {', '.join(arrays) or 'nothing'})")
    for split in ("val", "test"):
        if (f"x_{split}" in arrays) != (f"y_{split}" in arrays):
            raise DataError(f"{path} has only one of x_{split} and y_{split}")
    return from_arrays(path.name, **arrays, split_seed=split_seed)


def _folder(path: Path, split_seed: int) -> Dataset:
    from PIL import Image

    classes = sorted(p for p in path.iterdir() if p.is_dir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted(c.iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{path} has no images in class sub-folders ({path}/<class>/<image>.png)")
    images, labels, size, mode = [], [], None, None
    for file, label in files:
        try:
            with Image.open(file) as img:
                mode = mode or ("L" if img.mode in ("L", "1", "I;16") else "RGB")
                size = size or img.size  # every image is resized to the size of the first one
                images.append(np.asarray(img.convert(mode).resize(size)))
        except OSError as err:
            raise DataError(f"cannot read image {file}: {err}") from None
        labels.append(label)
    x = np.stack(images)
    return from_arrays(path.name, x, np.array(labels), class_names=[c.name for c in classes],
                       split_seed=split_seed)


def from_arrays(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    class_names: list[str] | None = None,
    split_seed: int = 0,
) -> Dataset:
    """Check arrays, give them a channel axis and labels 0..C-1, and carve missing splits from train."""
    x_train, y_train = _check_split("train", x_train, y_train)
    labels = np.unique(y_train)
    if len(labels) < 2:
        raise DataError(f"{name}: the training data has a single class; a classifier needs two or more")
    if x_test is None:
        x_train, x_test, y_train, y_test = _split(x_train, y_train, TEST_FRACTION, split_seed)
    if x_val is None:
        x_train, x_val, y_train, y_val = _split(x_train, y_train, VAL_FRACTION, split_seed)
    x_val, y_val = _check_split("val", x_val, y_val)
    x_test, y_test = _check_split("test", x_test, y_test)
    for split, x in (("val", x_val), ("test", x_test)):
        if x.shape[1:] != x_train.shape[1:]:
            raise DataError(f"{name}: x_{split} images are {x.shape[1:]}, x_train images {x_train.shape[1:]}")
    unknown = np.setdiff1d(np.concatenate([y_val, y_test]), labels)
    if len(unknown):
        raise DataError(f"{name}: labels {unknown[:5].tolist()} appear in val/test but not in train")
    def index(y: np.ndarray) -> np.ndarray:
        return np.searchsorted(labels, y).astype(np.int64)
    names = class_names or [str(v) for v in labels.tolist()]
    return Dataset(name, x_train, index(y_train), x_val, index(y_val), x_test, index(y_test), names)


def _check_split(split: str, x: np.ndarray | None, y: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"x_{split} must be images of shape (N, H, W) or (N, H, W, C), got {x.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"y_{split} must be one integer label per image, got shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"the {split} split is empty")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"x_{split} must be numeric pixels, got {x.dtype}")
    if np.issubdtype(x.dtype, np.integer) and x.min() >= 0 and x.max() <= 255:
        x = x.astype(np.uint8, copy=False)  # held once in memory, as compact as the source allows
    else:
        x = x.astype(np.float32, copy=False)
    return x, y


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """Stratified split (plain when a class is too rare to stratify), deterministic for ``seed``."""
    from sklearn.model_selection import train_test_split

    if len(x) < 4:
        raise DataError(f"too few images ({len(x)}) to split off validation and test data")
    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 else None
    try:
        return train_test_split(x, y, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError:
        return train_test_split(x, y, test_size=fraction, random_state=seed)
