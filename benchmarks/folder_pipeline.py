"""Your own images: decoding a folder of JPEGs once, starting again from the cache, training from it,
and the memory a search over a dataset larger than that memory takes.

It writes ``--images`` JPEGs (default 20,000) of random sizes and aspect ratios (sides 200-600 px,
smooth random colour fields plus noise, quality 90) into 10 class folders, then measures, in one run:

1. **cold decode**: ``load_dataset`` of the folder at ``--size`` (default 64x64) with no cache, on every
   core: images per second (the JPEGs themselves are in the page cache, as just written);
2. **warm start**: ``tuner search --dataset FOLDER --image-size SIZE`` with the cache in place, from the
   command's start to its first trial's first line (Python, TensorFlow and the cache check included);
3. **training throughput** of one fixed model (the ResNet space's defaults at 16 filters) on the
   training split, fed from the cache (streamed, ``Batches``) and from the same images as in-memory
   arrays: images per second of the second epoch (the first traces), and their ratio;
4. **peak RSS** of ``tuner search`` at ``--big-size`` (default 224x224: 20,000 images are 3.0 GB
   decoded), from an empty cache: decoding, statistics and up to ``--search-seconds`` (600) of training. The
   largest resident set of any of its processes (``RUSAGE_CHILDREN`` of a wrapper process).

    python benchmarks/folder_pipeline.py                       # the benchmarks page's figures (~15 min)
    python benchmarks/folder_pipeline.py --images 2000 --skip-big   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
CLASSES = 10


def write_jpegs(args: tuple[Path, int, int]) -> int:
    """``count`` JPEGs into ``folder``, seeded by ``start``: a coarse random field upsampled (photo-like
    smoothness, so they compress like photos) plus fine noise, tinted by its class (a learnable signal,
    so a search shows that images and labels stay together)."""
    from PIL import Image

    folder, start, count = args
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        w, h = (int(v) for v in rng.integers(200, 601, 2))
        coarse = rng.integers(0, 256, (max(2, h // 40), max(2, w // 40), 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
        tint = 60 * np.array([np.cos(2 * np.pi * i / CLASSES), np.sin(2 * np.pi * i / CLASSES), (i % 2) - 0.5])
        pixels = np.asarray(img, dtype=np.int16) // 2 + 64 + tint.astype(np.int16) + rng.integers(-12, 13, (h, w, 3))
        target = folder / f"class_{i % CLASSES}" / f"{i:06d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(target, quality=90)
    return count


def make_folder(folder: Path, images: int) -> float:
    for c in range(CLASSES):
        (folder / f"class_{c}").mkdir(parents=True, exist_ok=True)
    step = 250
    started = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write_jpegs, [(folder, k, min(step, images - k)) for k in range(0, images, step)]))
    return time.perf_counter() - started


def cold_decode(folder: Path, cache: Path, size: str) -> dict[str, float]:
    from tuner.data import load_dataset

    started = time.perf_counter()
    data = load_dataset(str(folder), image_size=size, cache_dir=cache)
    seconds = time.perf_counter() - started
    images = len(data.y_train) + len(data.y_val) + len(data.y_test)
    return {"images": images, "seconds": seconds, "images_per_second": images / seconds,
            "decoded_bytes": images * int(np.prod(data.input_shape))}


def warm_start(folder: Path, db: Path, size: str) -> float:
    """Seconds from launching ``tuner search`` to the line that starts its first trial."""
    command = [sys.executable, "-m", "tuner", "search", "--dataset", str(folder), "--image-size", size,
               "--storage", f"sqlite:///{db}", "--trials", "1", "--epochs", "1", "--keep", "0",
               "--recycle-after", "0"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               env={**os.environ, "TERM": "dumb"})
    assert process.stderr is not None
    seconds = float("nan")
    for line in process.stderr:
        if line.startswith("trial 0 "):
            seconds = time.perf_counter() - started
            break
    process.kill()
    process.wait()
    return seconds


def training_throughput(folder: Path, cache: Path, size: str, batch_size: int, limit: int) -> dict[str, float]:
    """Images per second of one fixed model's second epoch, fed from the cache and from arrays."""
    import keras
    import keras_tuner

    import tuner.data
    from search_spaces import get_space
    from tuner.data import load_dataset
    from tuner.training._training import Batches

    tuner.data.IN_MEMORY_BYTES = 0  # stream, whatever the size
    data = load_dataset(str(folder), image_size=size, cache_dir=cache)
    streamed = data.x_train.take(np.arange(min(limit, len(data.y_train))))  # type: ignore[union-attr]
    labels = data.y_train[:len(streamed)]
    in_memory = streamed[:]
    mean, variance = data.pixel_stats()

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.start

    found = {}
    for name in ("in_memory", "streamed", "in_memory_again"):
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        space = get_space("resnet")(data.input_shape, data.classes, mean=mean, variance=variance, augment="none")
        hp = keras_tuner.HyperParameters()
        hp.Fixed("filters", 16)  # the rest at the space's defaults
        model = space.build(hp)
        timer = Timer()
        if name == "streamed":
            model.fit(Batches(streamed, labels, batch_size, shuffle=True), epochs=2, callbacks=[timer], verbose=0)
        else:
            model.fit(in_memory, labels, batch_size=batch_size, epochs=2, callbacks=[timer], verbose=0)
        found[name] = len(labels) / timer.seconds
    best_in_memory = max(found["in_memory"], found["in_memory_again"])
    return {**found, "train_images": len(labels), "ratio": found["streamed"] / best_in_memory}


def big_search(folder: Path, db: Path, size: str, seconds: int) -> dict[str, float]:
    """Peak RSS (GB) of any process of a search that decodes the folder at ``size`` into a new cache."""
    wrapper = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    command = [sys.executable, "-c", wrapper, sys.executable, "-m", "tuner", "search", "--dataset", str(folder),
               "--image-size", size, "--storage", f"sqlite:///{db}", "--trials", "1", "--epochs", "1",
               "--timeout", str(seconds), "--keep", "0", "--recycle-after", "0", "--set", "filters=16",
               "--set", "depth=8", "--batch-size", "32", "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    peak_kb = int(done.stdout.strip().splitlines()[-1])
    cache = db.with_name(f"{db.stem}-cache")
    decoded = sum(f.stat().st_size for f in cache.rglob("*.npy"))
    trials = [line for line in done.stdout.splitlines() if line.startswith("study ")]
    return {"peak_rss_gb": peak_kb / 2**20, "decoded_gb": decoded / 2**30, "wall_seconds": wall,
            "result": trials[-1] if trials else done.stderr.strip().splitlines()[-1:]}


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--size", default="64")
    parser.add_argument("--big-size", default="224")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-limit", type=int, default=8192, help="training images timed per feed")
    parser.add_argument("--search-seconds", type=int, default=600)
    parser.add_argument("--workdir", type=Path, help="keep the folder and caches here (default: a temp dir)")
    parser.add_argument("--regenerate", action="store_true", help="write the JPEGs again in --workdir")
    parser.add_argument("--skip-big", action="store_true", help="leave out the peak-RSS search")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="folder-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "photos"
    results: dict[str, object] = {"machine": f"{os.cpu_count()} cores, {cpu_name()}", "images": args.images}
    if not folder.is_dir() or sum(1 for _ in folder.rglob("*.jpg")) != args.images or args.regenerate:
        shutil.rmtree(folder, ignore_errors=True)
        results["generate_seconds"] = make_folder(folder, args.images)
    results["jpeg_bytes"] = sum(f.stat().st_size for f in folder.rglob("*.jpg"))
    print(json.dumps(results), flush=True)
    small_db = work / "small.db"
    small_cache = work / "small-cache"
    shutil.rmtree(small_cache, ignore_errors=True)
    for f in work.glob("small.db*"):
        f.unlink()
    results["cold_decode"] = cold_decode(folder, small_cache, args.size)
    print(json.dumps(results["cold_decode"]), flush=True)
    results["warm_start_seconds"] = warm_start(folder, small_db, args.size)
    print(json.dumps({"warm_start_seconds": results["warm_start_seconds"]}), flush=True)
    results["training"] = training_throughput(folder, small_cache, args.size, args.batch_size, args.train_limit)
    print(json.dumps(results["training"]), flush=True)
    if not args.skip_big:
        big_db = work / "big.db"
        for f in work.glob("big*"):
            shutil.rmtree(f) if f.is_dir() else f.unlink()
        results["big_search"] = big_search(folder, big_db, args.big_size, args.search_seconds)
        print(json.dumps(results["big_search"]), flush=True)
        shutil.rmtree(work / "big-cache", ignore_errors=True)  # 3 GB
    print(json.dumps(results, indent=1))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
