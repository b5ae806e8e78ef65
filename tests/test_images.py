"""Your own images: folders and CSVs of any size and mode, decoded once into a cache, streamed when
large, and arrays or ``tf.data`` passed to ``tuner.search``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tuner.data import load_dataset
from tuner.data._images import load_cached
from tuner.errors import DataError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def striped(width: int, height: int) -> Image.Image:
    """Left quarter red, middle half green, right quarter blue."""
    img = Image.new("RGB", (width, height), GREEN)
    img.paste(RED, (0, 0, width // 4, height))
    img.paste(BLUE, (width - width // 4, 0, width, height))
    return img


def class_folder(root: Path, images: dict[str, list[Image.Image]], suffix: str = ".png") -> Path:
    for label, found in images.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(found):
            img.save(root / label / f"{i}{suffix}")
    return root


def shades(n: int, value: int, size=(12, 10)) -> list[Image.Image]:
    return [Image.new("RGB", size, (value, (7 * i) % 256, 0)) for i in range(n)]


def test_mixed_sizes_keep_their_aspect_ratio_cropped_or_padded(tmp_path):
    root = class_folder(tmp_path / "mixed", {"wide": [striped(40, 20)] * 5, "tall": [striped(20, 40)] * 5,
                                             "square": [striped(30, 30)] * 5})
    crop = load_dataset(str(root), image_size=16, cache_dir=tmp_path / "cache")
    assert crop.input_shape == (16, 16, 3)
    x = np.concatenate([crop.x_train, crop.x_val, crop.x_test])
    y = np.concatenate([crop.y_train, crop.y_val, crop.y_test])
    wide = x[y == crop.class_names.index("wide")][0].astype(int)
    assert np.abs(wide - GREEN).max() <= 40  # the centre of a 2:1 image, not a squeezed whole
    pad = load_dataset(str(root), image_size="16x16", resize="pad", cache_dir=tmp_path / "cache")
    x = np.concatenate([pad.x_train, pad.x_val, pad.x_test])
    y = np.concatenate([pad.y_train, pad.y_val, pad.y_test])
    wide = x[y == pad.class_names.index("wide")][0]
    assert wide[:4].max() == 0 and wide[-4:].max() == 0  # black bars above and below
    assert wide[8, 0, 0] > 200 and wide[8, -1, 2] > 200  # the whole width: red left, blue right
    assert pad.describe()["image_size"] == [16, 16] and pad.describe()["resize"] == "pad"


def test_the_default_size_is_the_median_capped(tmp_path):
    root = class_folder(tmp_path / "d", {"a": shades(4, 10, (30, 20)) + shades(1, 10, (300, 200)),
                                         "b": shades(5, 200, (30, 20))})
    assert load_dataset(str(root), cache_dir=tmp_path / "c").input_shape == (20, 30, 3)
    assert load_dataset(str(root), cache_dir=tmp_path / "c", max_side=15).input_shape == (10, 15, 3)
    with pytest.raises(DataError, match="--image-size takes N or HxW"):
        load_dataset(str(root), image_size="big", cache_dir=tmp_path / "c")


def test_rgba_grayscale_and_exif_rotation(tmp_path):
    clear = Image.new("RGBA", (10, 10), (0, 0, 0, 0))  # fully transparent: composited onto white
    red = Image.new("RGBA", (10, 10), RED + (255,))
    root = class_folder(tmp_path / "modes", {"clear": [clear] * 5, "red": [red] * 5})
    data = load_dataset(str(root), image_size=10, cache_dir=tmp_path / "c")
    x = np.concatenate([data.x_train, data.x_val, data.x_test])
    y = np.concatenate([data.y_train, data.y_val, data.y_test])
    assert data.input_shape == (10, 10, 3) and x[y == 0].min() == 255 and (x[y == 1][..., 0] == 255).all()

    grey = class_folder(tmp_path / "grey", {"dark": [Image.new("L", (9, 9), 20)] * 5,
                                            "light": [Image.new("L", (9, 9), 230)] * 5})
    assert load_dataset(str(grey), cache_dir=tmp_path / "c").input_shape == (9, 9, 1)
    Image.new("RGB", (9, 9), BLUE).save(grey / "light" / "colour.png")  # one colour image: three channels
    assert load_dataset(str(grey), cache_dir=tmp_path / "c").input_shape == (9, 9, 3)

    turned = tmp_path / "turned"
    for label in ("a", "b"):
        (turned / label).mkdir(parents=True)
        for i in range(5):
            stored = Image.new("RGB", (20, 10), BLUE)
            stored.paste(RED, (0, 0, 10, 10))  # stored: red left, blue right
            exif = Image.Exif()
            exif[0x0112] = 6  # shown turned 90 degrees clockwise: red on top
            stored.save(turned / label / f"{i}.jpg", exif=exif, quality=95)
    data = load_dataset(str(turned), cache_dir=tmp_path / "c")
    assert data.input_shape == (20, 10, 3)
    image = data.x_train[0].astype(int)
    assert image[2, 5, 0] > 200 and image[2, 5, 2] < 60 and image[-3, 5, 2] > 200


def test_train_val_test_folders_are_kept_as_given(tmp_path):
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        class_folder(tmp_path / "s" / split, {"a": shades(n, 10), "b": shades(n, 200)})
    data = load_dataset(str(tmp_path / "s"), cache_dir=tmp_path / "c")
    assert data.describe()["splits"] == {"train": 12, "val": 4, "test": 6}
    assert (data.x_test[data.y_test == 1][..., 0] == 200).all()
    (tmp_path / "t" / "train").mkdir(parents=True)
    class_folder(tmp_path / "t" / "train", {"a": shades(10, 10), "b": shades(10, 200)})
    class_folder(tmp_path / "t" / "test", {"a": shades(2, 10), "c": shades(2, 90)})
    with pytest.raises(DataError, match="classes that .*train lacks: c"):
        load_dataset(str(tmp_path / "t"), cache_dir=tmp_path / "c")
    for image in (tmp_path / "s" / "train" / "b").iterdir():
        image.write_bytes(b"not an image any more")
    with pytest.raises(DataError, match="class 'b' has no readable image in train"):
        load_dataset(str(tmp_path / "s"), cache_dir=tmp_path / "c")


def test_a_csv_of_paths_and_labels(tmp_path):
    class_folder(tmp_path / "imgs", {"x": shades(6, 10) + shades(6, 200)})
    rows = ["path,label"] + [f"imgs/x/{i}.png,{'dark' if i < 6 else 'light'}" for i in range(12)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset(str(tmp_path / "labels.csv"), cache_dir=tmp_path / "c")
    assert data.class_names == ["dark", "light"] and len(data.y_train) + len(data.y_val) + len(data.y_test) == 12
    x = np.concatenate([data.x_train, data.x_val, data.x_test])
    y = np.concatenate([data.y_train, data.y_val, data.y_test])
    assert (x[y == 1][..., 0] == 200).all()
    with_splits = [f"{tmp_path}/imgs/x/{i}.png,{i % 2},{'test' if i > 9 else 'train'}" for i in range(12)]
    (tmp_path / "split.csv").write_text("\n".join(with_splits))
    assert load_dataset(str(tmp_path / "split.csv"), cache_dir=tmp_path / "c").describe()["splits"]["test"] == 2
    (tmp_path / "bad.csv").write_text("a.png\n")
    with pytest.raises(DataError, match="row 1 is not path,label"):
        load_dataset(str(tmp_path / "bad.csv"), cache_dir=tmp_path / "c")


def test_corrupt_hidden_and_other_files(tmp_path):
    root = class_folder(tmp_path / "p", {"a": shades(5, 10), "b": shades(5, 200)})
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "b" / "cut.png").write_bytes((root / "b" / "0.png").read_bytes()[:40])
    (root / "a" / ".hidden.png").write_bytes(b"junk")
    (root / "b" / "notes.txt").write_text("not an image")
    data = load_dataset(str(root), cache_dir=tmp_path / "c")
    assert sorted(data.describe()["skipped_files"]) == ["a/broken.jpg", "b/cut.png"]
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 10

    (tmp_path / "e" / "full").mkdir(parents=True)
    class_folder(tmp_path / "e", {"full": shades(5, 10)})
    (tmp_path / "e" / "none").mkdir()
    with pytest.raises(DataError, match="class 'none' has no images"):
        load_dataset(str(tmp_path / "e"), cache_dir=tmp_path / "c")
    (tmp_path / "e" / "none" / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="class 'none' has no readable image"):
        load_dataset(str(tmp_path / "e"), cache_dir=tmp_path / "c")


def test_the_cache_is_reused_and_a_changed_folder_decodes_only_what_changed(tmp_path):
    root = class_folder(tmp_path / "p", {"a": shades(5, 10), "b": shades(5, 200)})
    first = load_cached(root, tmp_path / "c", size=(8, 8), workers=1)
    assert first.decoded == 10 and len(first.images) == 10
    assert load_cached(root, tmp_path / "c", size=(8, 8), workers=1).decoded == 0
    Image.new("RGB", (12, 10), (90, 90, 90)).save(root / "b" / "new.png")
    Image.new("RGB", (12, 10), (250, 0, 0)).save(root / "a" / "0.png")
    os.utime(root / "a" / "0.png", ns=(1, 1))  # a different modification time, whatever the clock
    (root / "b" / "1.png").unlink()
    changed = load_cached(root, tmp_path / "c", size=(8, 8), workers=1)
    assert changed.decoded == 2 and len(changed.images) == 10
    assert changed.images[0][0, 0, 0] == 250  # a/0.png, the first file, decoded again
    assert len(list((tmp_path / "c").rglob("images-*.npy"))) == 1  # the old cache file is gone
    assert load_cached(root, tmp_path / "c", size=(8, 8), workers=2).decoded == 0


@pytest.mark.core
def test_a_large_dataset_is_streamed_from_the_cache_and_learns(tmp_path, monkeypatch, tiny_space):
    import tuner
    from tuner.data._images import ImageArray

    monkeypatch.setattr("tuner.data.IN_MEMORY_BYTES", 0)
    root = class_folder(tmp_path / "p", {"dark": shades(40, 20), "light": shades(40, 220)})
    (root / "dark" / "broken.png").write_bytes(b"junk")
    data = load_dataset(str(root), cache_dir=tmp_path / "tuner-cache")
    assert isinstance(data.x_train, ImageArray) and data.x_train[:3].shape == (3, 10, 12, 3)
    mean, _ = data.pixel_stats()
    assert 100 < mean[0] < 140
    study = tuner.search(tiny_space, str(root), trials=1, epochs=3, storage=f"sqlite:///{tmp_path / 'tuner.db'}",
                         keep=1, augment="none", pruner="none")
    trial = study.trials[0]
    assert trial.values[0] >= 0.9 and trial.user_attrs["test_accuracy"] >= 0.9
    assert study.user_attrs["skipped_files"] == ["dark/broken.png"]
    assert study.user_attrs["image_size"] == [10, 12] and study.user_attrs["input_shape"] == [10, 12, 3]


def test_arrays_and_tf_data_passed_to_search(tmp_path, tiny_space):
    import keras

    import tuner

    rng = np.random.default_rng(0)
    y = np.arange(400) % 2
    x = np.where(y[:, None, None] == 1, 200, 30).astype(np.uint8) + rng.integers(0, 20, (400, 8, 8), dtype=np.uint8)
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    study = tuner.search(tiny_space, (x, y), trials=1, epochs=3, storage=url, keep=0, augment="none")
    assert study.study_name == "tiny-arrays" and study.trials[0].values[0] >= 0.9
    assert Path(study.user_attrs["path"]).parent == tmp_path / "tuner-cache"
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.data needs TensorFlow")
    import tensorflow as tf

    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    again = tuner.search(tiny_space, batches, trials=1, epochs=3, storage=url, keep=0, augment="none",
                         study="from-tf-data")
    assert again.user_attrs["path"] == study.user_attrs["path"]  # the same images: the same cache folder
    assert again.trials[0].values[0] >= 0.9
    with pytest.raises(DataError, match="cannot read a dataset from int"):
        tuner.search(tiny_space, 3, storage=url)


def test_a_py_dataset_is_written_once_and_read_back(tmp_path):
    import keras

    from tuner.data import save_arrays

    class Pairs(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return np.full((10, 8, 8, 1), 40 * i, np.uint8), np.full(10, i % 2)

    folder = save_arrays(Pairs(), tmp_path / "cache")
    assert save_arrays(Pairs(), tmp_path / "cache") == folder  # the same content: the same folder
    data = load_dataset(str(folder))
    assert data.input_shape == (8, 8, 1) and len(data.y_train) + len(data.y_val) + len(data.y_test) == 30
    assert sorted(np.unique(np.concatenate([data.x_train, data.x_val, data.x_test]))) == [0, 40, 80]
    with pytest.raises(DataError, match="one shape"):
        save_arrays([(np.zeros((2, 8, 8)), np.zeros(2, int)), (np.zeros((2, 9, 9)), np.zeros(2, int))],
                    tmp_path / "c2")


def test_an_explicit_size_leaves_the_default_size_alone(tmp_path):
    root = class_folder(tmp_path / "p", {"a": shades(5, 10, (30, 20)), "b": shades(5, 200, (30, 20))})
    assert load_dataset(str(root), image_size=8, cache_dir=tmp_path / "c").input_shape == (8, 8, 3)
    assert load_dataset(str(root), cache_dir=tmp_path / "c").input_shape == (20, 30, 3)


def test_sixteen_bit_greys_are_scaled_not_clipped(tmp_path):
    ramp = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 257).astype(np.uint16)  # 0..65535
    root = tmp_path / "deep"
    for label, flip in (("a", False), ("b", True)):
        (root / label).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(ramp[::-1] if flip else ramp).save(root / label / f"{i}.png")
    data = load_dataset(str(root), image_size=16, cache_dir=tmp_path / "c")
    assert data.input_shape == (16, 16, 1)
    image = data.x_train[data.y_train == 0][0][..., 0].astype(int)
    assert image[0, 0] <= 2 and image[-1, -1] >= 253 and len(np.unique(image)) > 200  # the whole range


def test_arrays_with_one_hot_labels_and_reshaped_arrays_are_told_apart(tmp_path):
    from tuner.data import save_arrays

    x = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    y = np.arange(40) % 4
    folder = save_arrays((x, np.eye(4, dtype=int)[y]), tmp_path / "c")
    data = load_dataset(str(folder))
    assert data.classes == 4
    assert save_arrays((x.reshape(40, 4, 16, 1), y), tmp_path / "c") != folder  # same bytes, other images
    with pytest.raises(DataError, match="must be one-hot"):
        save_arrays((x, np.full((40, 4), 2)), tmp_path / "c")


def test_an_auto_size_run_after_an_explicit_one_of_that_size_keeps_the_images(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "p"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    first = load_cached(root, tmp_path / "c", size=(32, 32), workers=1)
    mean = first.images[:].mean()
    assert mean > 100
    again = load_cached(root, tmp_path / "c", size=None, workers=1)  # the median is 32x32: the same entry
    assert again.decoded == 0 and again.images[:].mean() == mean
    wider = load_cached(root, tmp_path / "c", size=None, max_side=224, workers=1)  # another cap, same size
    assert wider.images[:].mean() == mean
