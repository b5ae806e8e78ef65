"""Datasets: scikit-learn's embedded digits, Keras datasets, ``.npz`` files, image folders and CSVs,
and arrays or ``tf.data`` / ``PyDataset`` objects a library caller passes.

Every loader returns a ``Dataset`` of raw images (uint8 where the source is integer pixels), integer
labels 0..C-1, and fixed train/validation/test splits. Splits are stratified and deterministic for a
given ``split_seed``; the test split is never used for selection. Image files are decoded once into a
cache (``_images``, beside this module); a decoded dataset over ``IN_MEMORY_BYTES`` stays there and is
read in batches (``ImageArray``), a smaller one is loaded into memory.

The loaders live here, in the package itself rather than a private module it re-exports, so that
setting ``tuner.data.IN_MEMORY_BYTES`` (or another setting) still changes what the loaders do.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from pathlib import Path
from typing import Any
from typing import Union

import numpy as np

from tuner._names import RESIZE_MODES
from tuner.data._images import ImageArray
from tuner.data._images import load_cached
from tuner.data._images import parse_image_size
from tuner.errors import DataError

# A split's images: in memory, or rows of an on-disk cache read in batches.
Images = Union[np.ndarray, ImageArray]  # noqa: UP007 - a runtime alias, Python 3.10

KERAS_DATASETS = ("cifar10", "cifar100", "mnist", "fashion_mnist")
BUILTIN_DATASETS = ("digits", *KERAS_DATASETS)
# Decoded image files up to this size are held in memory; larger ones are streamed from the cache.
IN_MEMORY_BYTES = 1 << 30
# The images pixel statistics are computed from, at most, for a streamed dataset (in chunks of STATS_CHUNK).
STATS_IMAGES, STATS_CHUNK = 10_000, 256
# What the default --image-size is capped at (the longer side), by device.
MAX_AUTO_SIDE = {"cpu": 128, "gpu": 224}
ARRAYS_INDEX = "arrays.json"
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
    x_train: Images
    y_train: np.ndarray
    x_val: Images
    y_val: np.ndarray
    x_test: Images
    y_test: np.ndarray
    class_names: list[str]
    # For files: their path; for image files also image_size [h, w], resize, skipped_files
    # (unreadable, left out) and the cache they were decoded into.
    files: dict[str, Any] = field(default_factory=dict)

    @property
    def streamed(self) -> bool:
        """True when the images stay on disk and are read a batch at a time."""
        return isinstance(self.x_train, ImageArray)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def classes(self) -> int:
        return len(self.class_names)

    def pixel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and variance of the training images, for normalisation in the model.

        uint8 images are counted by value (a 256-bin histogram per channel: exact, and no float
        copy of the split), floats summed a chunk at a time; a streamed split from up to
        ``STATS_IMAGES`` evenly spaced images."""
        x = self.x_train
        picked = np.arange(len(x))
        if self.streamed:
            picked = np.unique(np.linspace(0, len(x) - 1, min(len(x), STATS_IMAGES)).astype(np.int64))
        if x.dtype != np.uint8:  # floats: sums of values and squares, a chunk at a time
            sums = np.zeros((2, x.shape[-1]))
            for k in range(0, len(picked), STATS_CHUNK):
                values = np.asarray(x[picked[k:k + STATS_CHUNK]], np.float64)
                sums += [values.sum(axis=(0, 1, 2)), (values**2).sum(axis=(0, 1, 2))]
            count = len(picked) * x.shape[1] * x.shape[2]
            mean = sums[0] / count
            return mean.tolist(), np.maximum(sums[1] / count - mean**2, 1e-6).tolist()
        counts = np.zeros((x.shape[-1], 256), np.int64)
        for k in range(0, len(picked), STATS_CHUNK):
            chunk = x[picked[k:k + STATS_CHUNK]]
            for channel in range(x.shape[-1]):
                counts[channel] += np.bincount(chunk[..., channel].ravel(), minlength=256)
        levels = np.arange(256, dtype=np.float64)
        total = counts.sum(axis=1)
        mean = counts @ levels / total
        variance = counts @ levels**2 / total - mean**2
        return mean.tolist(), np.maximum(variance, 1e-6).tolist()

    def subset(self, images: int, seed: int) -> Dataset:
        """This dataset with a stratified subset of ``images`` of its training images, the same ones
        for the same ``seed`` (in every worker); validation and test splits unchanged. What a search
        explores on where its whole training split costs too much time (``explore_images``)."""
        _, picked = _split_indices(self.y_train, images, seed)
        return replace(self, x_train=_take(self.x_train, picked), y_train=self.y_train[picked])

    def describe(self) -> dict[str, object]:
        """What the study records about its data."""
        return {
            "dataset": self.name,
            "input_shape": list(self.input_shape),
            "classes": self.classes,
            "class_names": self.class_names,
            "splits": {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)},
            **self.files,
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


def load_dataset(
    name: str, *, split_seed: int = 0, image_size: Any = None, resize: str = "crop",
    cache_dir: str | Path | None = None, max_side: int = MAX_AUTO_SIDE["cpu"], progress: bool = False,
) -> Dataset:
    """Load ``name``: ``digits``, a Keras dataset name, a ``.npz`` file, a folder of images (class
    folders, or train/val/test folders of class folders), a ``.csv`` of ``path,label[,split]``, or a
    folder ``save_arrays`` wrote.

    Image files are resized to ``image_size`` (``N`` or ``HxW``; default: their median size, capped at
    ``max_side``) keeping their aspect ratio, then centre-cropped (``resize="crop"``) or padded
    (``"pad"``), and decoded once into ``cache_dir`` (default ``./tuner-cache``); ``progress`` shows
    a progress bar while they decode.
    """
    if name == "digits":
        return _digits(split_seed)
    if name in KERAS_DATASETS:
        return _keras_dataset(name, split_seed)
    path = Path(name).expanduser()
    if path.suffix == ".npz" and path.is_file():
        return _npz(path, split_seed)
    if (path / ARRAYS_INDEX).is_file():
        return _saved_arrays(path, split_seed)
    if path.is_dir() or (path.suffix.lower() == ".csv" and path.is_file()):
        if resize not in RESIZE_MODES:
            raise DataError(f"unknown --resize {resize!r}; choose one of: {', '.join(RESIZE_MODES)}")
        return _image_files(path, split_seed, parse_image_size(image_size), resize,
                            Path(cache_dir or "tuner-cache"), max_side, progress)
    raise DataError(
        f"unknown dataset {name!r}; choose one of: {', '.join(BUILTIN_DATASETS)}, "
        "a .npz file, a .csv of path,label, or a folder of class sub-folders"
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
    data = from_arrays(path.name, **arrays, split_seed=split_seed)
    data.files = {"path": str(path.resolve())}
    return data


def _image_files(path: Path, split_seed: int, size: tuple[int, int] | None, resize: str, cache_dir: Path,
                 max_side: int, progress: bool) -> Dataset:
    cached = load_cached(path, cache_dir, size=size, resize=resize, max_side=max_side, progress=progress)
    images: Images = cached.images
    if cached.images.nbytes <= IN_MEMORY_BYTES:
        images = cached.images[:]
    files = {"path": str(path.resolve()), "image_size": list(cached.size), "resize": cached.resize,
             "skipped_files": cached.skipped, "cache": str(cache_dir.resolve())}
    if cached.splits is None:
        data = from_arrays(path.name, images, cached.labels, class_names=cached.class_names, split_seed=split_seed)
    else:
        given: dict[str, Any] = {}
        for number, split in enumerate(("train", "val", "test")):
            chosen = np.flatnonzero(cached.splits == number)
            if len(chosen):
                given[f"x_{split}"], given[f"y_{split}"] = _take(images, chosen), cached.labels[chosen]
        data = from_arrays(path.name, **given, class_names=cached.class_names, split_seed=split_seed)
    data.files = files
    return data


def save_arrays(data: Any, cache_dir: str | Path) -> Path:
    """Write the images and labels of ``data`` once into a folder of ``cache_dir`` that
    ``load_dataset`` reads, so that worker processes and ``tuner export`` see the same data.

    ``data``: ``(x, y)`` arrays, a ``tf.data.Dataset`` of ``(image, label)`` elements or batches, or a
    ``keras.utils.PyDataset`` of ``(images, labels)`` batches. The folder is named by a hash of the
    content: the same arrays give the same folder.
    """
    blocks = _batches(data)
    first = next(blocks, None)  # refused before anything is written
    if first is None:
        raise DataError("the dataset passed holds no images")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".arrays-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    digest = hashlib.sha256()
    labels: list[np.ndarray] = []
    dtype = np.uint8 if _is_pixels(first[0]) else np.float32
    shape = first[0].shape[1:]
    try:
        with open(tmp / "images.raw", "wb") as f:
            for x, y in itertools.chain([first], blocks):
                if x.shape[1:] != shape:
                    raise DataError(f"every image must have one shape: {shape} and {x.shape[1:]} found")
                if dtype == np.uint8 and not _is_pixels(x):
                    raise DataError("images must be all integer pixels 0..255 or all floats")
                block = np.ascontiguousarray(x, dtype=dtype)
                f.write(block.data)
                digest.update(block.data)
                labels.append(_class_labels(y))
        y_all = np.concatenate(labels)
        if not np.issubdtype(y_all.dtype, np.integer):
            raise DataError(f"labels must be integers, got {y_all.dtype}")
        digest.update(y_all.astype(np.int64).tobytes())
        index = {"shape": [len(y_all), *shape], "dtype": np.dtype(dtype).name}
        digest.update(json.dumps(index).encode())  # the same bytes in another shape are other images
        np.save(tmp / "labels.npy", y_all.astype(np.int64))
        (tmp / ARRAYS_INDEX).write_text(json.dumps(index))
        folder = cache_dir / f"arrays-{digest.hexdigest()[:16]}"
        if folder.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
        return folder.resolve()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _class_labels(y: np.ndarray) -> np.ndarray:
    """Integer labels from labels as given: one per image, ``(N, 1)``, or one-hot ``(N, C)``."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        return y[:, 0]
    if y.ndim == 2:
        if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
            raise DataError(f"labels of shape {y.shape} must be one-hot (a single 1 per row), or one integer per image")
        return y.argmax(axis=1)
    if y.ndim != 1:
        raise DataError(f"labels must be one integer per image, got shape {y.shape}")
    return y


def _is_pixels(x: np.ndarray) -> bool:
    return bool(np.issubdtype(x.dtype, np.integer) and (x.size == 0 or (x.min() >= 0 and x.max() <= 255)))


def _batches(data: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(images, labels)`` blocks of ``data`` as numpy arrays, images with a channel axis."""
    def block(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        x, y = np.asarray(x), np.asarray(y)
        if y.ndim == 0:  # one element, not a batch
            x, y = x[None], y[None]
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or len(x) != len(y):
            raise DataError(f"expected images (N, H, W[, C]) and N labels, got {x.shape} and {y.shape}")
        return x, y

    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        if len(x) != len(y):
            raise DataError(f"x has {len(x)} images but y has {len(y)} labels")
        for k in range(0, len(x), 4096):
            yield block(x[k:k + 4096], np.asarray(y[k:k + 4096]))
    elif hasattr(data, "as_numpy_iterator"):  # tf.data.Dataset
        for element in data.as_numpy_iterator():
            yield block(element[0], element[1])
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):  # keras.utils.PyDataset
        for i in range(len(data)):
            element = data[i]
            yield block(element[0], element[1])
    else:
        raise DataError(f"cannot read a dataset from {type(data).__name__}: pass (x, y) arrays, a "
                        "tf.data.Dataset or a keras.utils.PyDataset, or a dataset name or path")


def _saved_arrays(path: Path, split_seed: int) -> Dataset:
    index = json.loads((path / ARRAYS_INDEX).read_text())
    images: Images = ImageArray(path / "images.raw", index["shape"], index["dtype"])
    if images.nbytes <= IN_MEMORY_BYTES:
        images = images[:]
    data = from_arrays("arrays", images, np.load(path / "labels.npy"), split_seed=split_seed)
    data.files = {"path": str(path.resolve())}
    return data


def from_arrays(
    name: str,
    x_train: Images,
    y_train: np.ndarray,
    *,
    x_val: Images | None = None,
    y_val: np.ndarray | None = None,
    x_test: Images | None = None,
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


def _check_split(split: str, x: Images | None, y: np.ndarray | None) -> tuple[Images, np.ndarray]:
    x, y = (x if isinstance(x, ImageArray) else np.asarray(x)), np.asarray(y)
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
    if isinstance(x, ImageArray):
        return x, y
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"x_{split} must be numeric pixels, got {x.dtype}")
    if np.issubdtype(x.dtype, np.integer) and x.min() >= 0 and x.max() <= 255:
        x = x.astype(np.uint8, copy=False)  # held once in memory, as compact as the source allows
    else:
        x = x.astype(np.float32, copy=False)
    return x, y


def _split(x: Images, y: np.ndarray, fraction: float, seed: int) -> tuple[Images, Images, np.ndarray, np.ndarray]:
    """Stratified split (plain when a class is too rare to stratify), deterministic for ``seed``:
    the rest, then the held-out part, ``fraction`` of the images (a float) or that many (an int)."""
    if len(x) < 4:
        raise DataError(f"too few images ({len(x)}) to split off validation and test data")
    kept, held = _split_indices(y, fraction, seed)
    return _take(x, kept), _take(x, held), y[kept], y[held]


def _split_indices(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The indices of ``_split``'s two parts."""
    from sklearn.model_selection import train_test_split

    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 else None
    order = np.arange(len(y))
    try:
        kept, held = train_test_split(order, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError:
        kept, held = train_test_split(order, test_size=fraction, random_state=seed)
    return kept, held


def _take(x: Images, index: np.ndarray) -> Images:
    return x.take(index) if isinstance(x, ImageArray) else x[index]
