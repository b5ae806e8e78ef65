"""Datasets: the embedded digits, .npz files, image folders, and the errors for bad data."""

from __future__ import annotations

import numpy as np
import pytest

from tuner.data import from_arrays
from tuner.data import load_dataset
from tuner.errors import DataError


def test_digits_is_raw_uint8_with_fixed_stratified_splits():
    data = load_dataset("digits")
    assert data.input_shape == (8, 8, 1) and data.classes == 10
    assert data.x_train.dtype == np.uint8 and data.x_train.max() == 16
    sizes = (len(data.y_train), len(data.y_val), len(data.y_test))
    assert sum(sizes) == 1797 and sizes == (1149, 288, 360)
    again = load_dataset("digits")
    np.testing.assert_array_equal(data.x_test, again.x_test)
    np.testing.assert_array_equal(data.y_val, again.y_val)
    assert not np.array_equal(load_dataset("digits", split_seed=1).y_test, data.y_test)
    assert set(np.unique(data.y_val)) == set(range(10))  # stratified: every class validated


def test_pixel_stats_are_per_channel():
    x = np.zeros((40, 8, 8, 2), dtype=np.uint8)
    x[..., 1] = 200
    data = from_arrays("a", x, np.arange(40) % 2)
    mean, variance = data.pixel_stats()
    assert mean == pytest.approx([0.0, 200.0]) and len(variance) == 2


def _save(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_npz_with_train_only_gets_val_and_test_carved_out(tmp_path):
    x = np.random.randint(0, 256, (100, 12, 10), dtype=np.uint8)  # (N, H, W): grey images
    y = np.repeat(np.array([3, 7, 9, 11]), 25)  # labels need not be 0..C-1
    data = load_dataset(_save(tmp_path / "d.npz", x_train=x, y_train=y))
    assert data.input_shape == (12, 10, 1)
    assert data.class_names == ["3", "7", "9", "11"] and set(np.unique(data.y_train)) == {0, 1, 2, 3}
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 100
    assert len(data.y_test) == 10


def test_npz_keeps_given_splits(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"x_{s}": rng.random((n, 8, 8, 3), dtype=np.float32) for s, n in
              (("train", 30), ("val", 6), ("test", 7))}
    arrays.update({f"y_{s}": np.arange(n) % 3 for s, n in (("train", 30), ("val", 6), ("test", 7))})
    data = load_dataset(_save(tmp_path / "d.npz", **arrays))
    assert (len(data.y_val), len(data.y_test)) == (6, 7) and data.x_train.dtype == np.float32


@pytest.mark.parametrize("arrays,message", [
    ({"x_train": np.zeros((10, 8, 8)), "y_train": np.zeros(9)}, "10 images but y_train has 9"),
    ({"x_train": np.zeros((10, 8)), "y_train": np.arange(10) % 2}, "shape \\(N, H, W\\)"),
    ({"x_train": np.zeros((10, 8, 8)), "y_train": np.zeros(10)}, "single class"),
    ({"x": np.zeros((10, 8, 8))}, "must hold x_train and y_train"),
    ({"x_train": np.zeros((10, 8, 8)), "y_train": np.arange(10) % 2, "x_val": np.zeros((2, 8, 8))},
     "only one of x_val and y_val"),
    ({"x_train": np.zeros((20, 8, 8)), "y_train": np.arange(20) % 2, "x_test": np.zeros((2, 9, 9)),
      "y_test": np.zeros(2)}, "x_test images are"),
])
def test_bad_npz_is_a_clear_error(tmp_path, arrays, message):
    with pytest.raises(DataError, match=message):
        load_dataset(_save(tmp_path / "bad.npz", **arrays))


def test_image_folder_takes_the_median_size(tmp_path):
    from PIL import Image

    for label, shade in (("cats", 30), ("dogs", 220)):
        (tmp_path / "pets" / label).mkdir(parents=True)
        for i in range(10):
            size = (16, 12) if i else (20, 20)  # the odd one is resized to the median size
            Image.new("RGB", size, (shade, i, 0)).save(tmp_path / "pets" / label / f"{i}.png")
    data = load_dataset(str(tmp_path / "pets"))
    assert data.class_names == ["cats", "dogs"]
    assert data.input_shape == (12, 16, 3) and data.x_train.dtype == np.uint8


def test_empty_folder_and_unknown_name_are_clear_errors(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="class .a. has no images"):
        load_dataset(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="choose one of: digits, cifar10, cifar100, mnist, fashion_mnist"):
        load_dataset("imagenet")


def test_keras_dataset_offline_is_a_clear_error(monkeypatch):
    import keras

    def offline():
        raise OSError("URL fetch failure")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(DataError, match="cannot load cifar10: Keras downloads it on first use"):
        load_dataset("cifar10")


def test_idx_files_are_read_as_they_are_written(tmp_path):
    import gzip

    from tuner.data import read_idx

    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + np.array([2, 3, 4], ">u4").tobytes()
    (tmp_path / "x.gz").write_bytes(gzip.compress(header + images.tobytes()))
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), images)
    (tmp_path / "short.gz").write_bytes(gzip.compress(header + images.tobytes()[:-1]))
    with pytest.raises(DataError, match="holds 23 values, its header says"):
        read_idx(tmp_path / "short.gz")


def test_fashion_mnist_is_read_from_the_debian_package_offline(monkeypatch):
    from tuner.data import SYSTEM_DATASETS

    if not (SYSTEM_DATASETS["fashion_mnist"] / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("apt-get install dataset-fashion-mnist")
    import keras

    def offline():
        raise OSError("URL fetch failure")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    data = load_dataset("fashion_mnist")
    assert data.describe()["splits"] == {"train": 54000, "val": 6000, "test": 10000}
    assert data.x_train.shape[1:] == (28, 28, 1) and data.x_train.dtype == np.uint8
    assert data.class_names[0] == "T-shirt/top" and np.bincount(data.y_test).tolist() == [1000] * 10
