"""Image files as a dataset: list them, decode them once on every core into an on-disk uint8 cache,
and read that cache back in batches.

Keras-free (numpy and Pillow only), so the decoding processes start fast. Three layouts are read:
``<root>/<class>/<image>``, ``<root>/{train,val,test}/<class>/<image>`` (the given splits are kept) and a
CSV of ``path,label[,split]``. Every image is resized keeping its aspect ratio to one size, then
centre-cropped (``crop``) or padded (``pad``); EXIF orientation is applied; transparency is composited
onto white; a folder of grayscale images stays one channel.

The cache (``<entry>/images-<fingerprint>.npy``, one row per listed file, and ``index.json``) lives in
one folder per source and settings. ``index.json`` holds each file's size and modification time: a
later run that finds them unchanged reads the cache without opening an image, and a changed folder
decodes only the files that are new or changed. Rows are written and read with ``pwrite``/``preadv``
rather than a memory map, so a process's resident memory holds only the batches in flight.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from tuner.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_FOLDERS = {"train": 0, "val": 1, "validation": 1, "test": 2}
CACHE_VERSION = 1
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "F"}  # grayscale with more than 8 bits: scaled down
BACKGROUND = 255  # transparent pixels become white; --resize pad fills with black
MIN_SIDE = 8
# Files per task handed to a decoding process: large enough to amortise the hand-over.
CHUNK = 64
# Names of unreadable files printed (all of them are recorded on the study).
SHOWN_SKIPPED = 5


@dataclass
class Source:
    """The image files of a dataset and their labels, before any is opened."""

    root: Path  # what ``files`` are relative to: the folder, or the CSV's folder
    files: list[str]
    labels: np.ndarray
    splits: np.ndarray | None  # 0 train, 1 val, 2 test per file, where the layout gives them
    class_names: list[str]


def parse_image_size(value: Any) -> tuple[int, int] | None:
    """``64`` / ``"64"`` (square) or ``"64x48"`` / ``(64, 48)`` (height x width); None: chosen from the data."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.lower().split("x")
    elif isinstance(value, int):
        parts = [str(value)]
    else:
        parts = [str(v) for v in value]
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        sides = []
    if len(sides) == 1:
        sides *= 2
    if len(sides) != 2 or min(sides) < MIN_SIDE or max(sides) > 4096:
        raise DataError(f"--image-size takes N or HxW with sides from {MIN_SIDE} to 4096, got {value!r}")
    return sides[0], sides[1]


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _images_under(folder: Path) -> list[Path]:
    """The image files below ``folder`` at any depth, hidden files and folders ignored, sorted."""
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(parent) / f for f in sorted(files) if is_image(Path(f))]
    return found


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_source(path: Path) -> Source:
    """The files of a folder (either layout) or CSV, with their labels; errors name what is wrong."""
    if path.is_file():
        return _csv_source(path)
    folders = _subfolders(path)
    if folders and "train" in {f.name for f in folders} and all(f.name in SPLIT_FOLDERS for f in folders):
        return _split_source(path, folders)
    if not folders:
        raise DataError(f"{path} has no class sub-folders ({path}/<class>/<image>.jpg)")
    files, labels = [], []
    for label, folder in enumerate(folders):
        found = _images_under(folder)
        if not found:
            raise DataError(f"class {folder.name!r} has no images ({folder})")
        files += found
        labels += [label] * len(found)
    return Source(path, [f.relative_to(path).as_posix() for f in files], np.array(labels, np.int64),
                  None, [f.name for f in folders])


def _split_source(path: Path, folders: list[Path]) -> Source:
    by_split = {f.name: {c.name: _images_under(c) for c in _subfolders(f)} for f in folders}
    names = sorted(by_split["train"])
    for split, classes in by_split.items():
        unknown = sorted(set(classes) - set(names))
        if unknown:
            raise DataError(f"{path}/{split} has classes that {path}/train lacks: {', '.join(unknown)}")
    files, labels, splits = [], [], []
    for split, classes in by_split.items():
        for name, found in classes.items():
            if split == "train" and not found:
                raise DataError(f"class {name!r} has no images ({path}/train/{name})")
            files += [f.relative_to(path).as_posix() for f in found]
            labels += [names.index(name)] * len(found)
            splits += [SPLIT_FOLDERS[split]] * len(found)
    if not names:
        raise DataError(f"{path}/train has no class sub-folders")
    return Source(path, files, np.array(labels, np.int64), np.array(splits, np.int8), names)


def _csv_source(path: Path) -> Source:
    """``path,label`` rows (a header row is optional; a third column ``split`` may name train/val/test);
    relative paths are relative to the CSV's folder."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and any(cell.strip() for cell in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    if not rows:
        raise DataError(f"{path} lists no images (rows of path,label)")
    bad = next((i for i, r in enumerate(rows) if len(r) < 2 or len(r) > 3), None)
    if bad is not None:
        raise DataError(f"{path}: row {bad + 1} is not path,label[,split]: {rows[bad]!r}")
    texts = [r[1].strip() for r in rows]
    names = sorted(set(texts), key=lambda t: (0, int(t), t) if t.isdigit() else (1, 0, t))
    splits = None
    if any(len(r) == 3 for r in rows):
        unknown = {r[2].strip() for r in rows if len(r) == 3} - set(SPLIT_FOLDERS)
        if unknown or any(len(r) == 2 for r in rows):
            raise DataError(f"{path}: a split column needs train, val or test on every row")
        splits = np.array([SPLIT_FOLDERS[r[2].strip()] for r in rows], np.int8)
    files = [r[0].strip() for r in rows]  # relative to the CSV's folder, or absolute
    index = {n: i for i, n in enumerate(names)}
    return Source(path.parent, files, np.array([index[t] for t in texts], np.int64), splits, names)


# --- decoding (runs in the decoding processes) ---


def _open(path: str) -> Any:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # our own photos, not untrusted uploads
    return Image.open(path)


def read_header(path: str) -> tuple[int, int, bool] | None:
    """(height, width after EXIF rotation, grayscale) without decoding pixels; None if unreadable."""
    try:
        with _open(path) as img:
            w, h = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                w, h = h, w
            return h, w, img.mode in GRAY_MODES
    except Exception:  # noqa: BLE001 - any file Pillow cannot read is skipped
        return None


def decode(path: str, size: tuple[int, int], channels: int, resize: str) -> np.ndarray:
    """One image as ``size + (channels,)`` uint8: oriented, flattened onto white, resized keeping its
    aspect ratio, then centre-cropped or padded."""
    from PIL import Image
    from PIL import ImageOps

    th, tw = size
    mode = "L" if channels == 1 else "RGB"
    with _open(path) as img:
        w, h = img.size
        turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        oh, ow = (w, h) if turned else (h, w)
        scale = max(th / oh, tw / ow) if resize == "crop" else min(th / oh, tw / ow)
        # JPEG: let the decoder itself downscale by 2, 4 or 8 while staying above the needed size.
        img.draft(mode, (max(1, round(w * scale)), max(1, round(h * scale))))
        img = ImageOps.exif_transpose(img)
        if img.mode in WIDE_MODES:
            img = _to_8_bits(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            flat = Image.new("RGBA", rgba.size, (BACKGROUND,) * 4)
            img = Image.alpha_composite(flat, rgba)
        img = img.convert(mode)
        h, w = img.height, img.width
        scale = max(th / h, tw / w) if resize == "crop" else min(th / h, tw / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        if resize == "crop":
            top, left = (nh - th) // 2, (nw - tw) // 2
            img = img.crop((left, top, left + tw, top + th))
        else:
            canvas = Image.new(mode, (tw, th), 0)
            canvas.paste(img, ((tw - nw) // 2, (th - nh) // 2))
            img = canvas
        pixels = np.asarray(img, dtype=np.uint8)
    return pixels.reshape(th, tw, channels)


def _to_8_bits(img: Any) -> Any:
    """A 16-bit, 32-bit or float grayscale image as 8 bits, scaled rather than clipped: 16-bit modes
    (medical and scientific PNGs and TIFFs) by 255/65535; 32-bit integers and floats by 255/65535 when
    their values fit 16 bits, by their maximum when wider, not at all when they fit 8 bits; floats
    within 0..1 by 255."""
    from PIL import Image

    values = np.asarray(img, dtype=np.float64)
    top = float(values.max()) if values.size else 0.0
    if img.mode.startswith("I;16"):
        scale = 255.0 / 65535
    elif img.mode == "F" and top <= 1.0:
        scale = 255.0
    elif top <= 255:
        scale = 1.0
    else:
        scale = 255.0 / (65535 if top <= 65535 else top)
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")


def _headers_task(paths: list[str]) -> list[tuple[int, int, bool] | None]:
    return [read_header(p) for p in paths]


def _decode_task(args: tuple[str, int, int, tuple[int, int], int, str, list[tuple[int, str]]]) -> list[int]:
    """Decode ``items`` (row, path) and write each row into the cache file; returns the rows that failed."""
    target, offset, row_bytes, size, channels, resize, items = args
    failed = []
    fd = os.open(target, os.O_WRONLY)
    try:
        for row, path in items:
            try:
                pixels = decode(path, size, channels, resize)
            except Exception:  # noqa: BLE001 - a corrupt image is skipped and recorded, never fatal
                failed.append(row)
                continue
            os.pwrite(fd, pixels.tobytes(), offset + row * row_bytes)
    finally:
        os.close(fd)
    return failed


# --- the cache ---


def create_npy(path: Path, rows: int, shape: Sequence[int], dtype: Any = np.uint8) -> int:
    """An all-zero ``.npy`` file of ``rows`` x ``shape`` (sparse on disk until written); its data offset."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": (rows, *shape)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        offset = f.tell()
        f.truncate(offset + rows * int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return offset


_OPENING = threading.Lock()


class _Opened:
    """A read-only descriptor, closed when the last ``ImageArray`` sharing it goes."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)

    def __del__(self) -> None:
        os.close(self.fd)


class ImageArray:
    """Rows of a cached ``.npy`` file, read on demand: indexing returns a numpy array of just those
    images (``preadv`` into a fresh buffer, no memory map), ``take`` a lazy subset (a split) that
    shares the open file. A cache opened with ``from_npy`` stays readable after a rebuild removes it."""

    def __init__(self, path: Path, shape: Sequence[int], dtype: Any = np.uint8, offset: int = 0,
                 rows: np.ndarray | None = None, *, open_now: bool = False) -> None:
        self.path = Path(path)
        self.offset = offset
        self.dtype = np.dtype(dtype)
        self.image_shape = tuple(int(s) for s in shape[1:])
        self.row_bytes = int(np.prod(self.image_shape)) * self.dtype.itemsize
        self.rows = np.arange(shape[0], dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        # Opened now (``from_npy``: readable after a rebuild removes the file), or on the first read.
        self._file: _Opened | None = _Opened(self.path) if open_now else None

    @classmethod
    def from_npy(cls, path: Path) -> ImageArray:
        mapped = np.load(path, mmap_mode="r")  # the header only: no page is touched
        shape, dtype, offset = mapped.shape, mapped.dtype, int(mapped.offset)
        del mapped
        return cls(path, shape, dtype, offset, open_now=True)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.image_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.image_shape)

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.row_bytes

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None}  # another process opens the file again

    def take(self, index: Any) -> ImageArray:
        subset = ImageArray.__new__(ImageArray)
        subset.__dict__.update(self.__dict__)
        subset.rows = self.rows[index]
        return subset

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self._read(self.rows[[int(index)]])[0]
        return self._read(np.atleast_1d(self.rows[index]))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        if self._file is None:  # unpickled in another process: opened on first read
            with _OPENING:
                if self._file is None:
                    self._file = _Opened(self.path)
        out = np.empty((len(rows), *self.image_shape), self.dtype)
        flat = out.reshape(-1).view(np.uint8)
        start = 0
        while start < len(rows):  # one read per run of consecutive rows
            end = start + 1
            while end < len(rows) and rows[end] == rows[end - 1] + 1:
                end += 1
            _read_exactly(self._file.fd, flat[start * self.row_bytes:end * self.row_bytes],
                          self.offset + int(rows[start]) * self.row_bytes, self.path)
            start = end
        return out


def _read_exactly(fd: int, into: np.ndarray, offset: int, path: Path) -> None:
    """Fill ``into`` from ``offset``: a read returns at most ~2 GiB on Linux, so read until it is full."""
    done = 0
    while done < len(into):
        got = os.preadv(fd, [memoryview(into[done:])], offset + done)  # type: ignore[arg-type]
        if got <= 0:
            raise DataError(f"{path} ends early: the cache is damaged; delete it and run again")
        done += got


@dataclass
class Cached:
    """A decoded source: its images (one row per listed file), which rows are usable, and how made."""

    images: ImageArray
    labels: np.ndarray
    splits: np.ndarray | None
    class_names: list[str]
    size: tuple[int, int]
    channels: int
    resize: str
    skipped: list[str]
    decoded: int  # images decoded by this call (0: read from the cache as it was)


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40] or "data"


def _stats(source: Source) -> list[list[int]]:
    found = []
    for f in source.files:
        try:
            st = os.stat(source.root / f)
            found.append([st.st_size, st.st_mtime_ns])
        except OSError:
            found.append([-1, -1])
    return found


def _entry(cache_dir: Path, path: Path, resize: str, size: tuple[int, int]) -> Path:
    """The cache folder of ``path`` decoded at ``size`` with ``resize``."""
    return cache_dir / f"{_slug(path.name)}-{_key(str(path.resolve()), resize, size)}"


def _current(index: dict[str, Any] | None, source: Source, stats: list[list[int]]) -> bool:
    """Whether a cache ``index`` holds exactly these files, unchanged."""
    return index is not None and index["files"] == source.files and index["stats"] == stats


def auto_size(headers: Sequence[tuple[int, int, bool] | None], max_side: int) -> tuple[int, int]:
    """The median height and width of the readable images, scaled down to ``max_side`` on the longer side."""
    sizes = [h for h in headers if h is not None]
    if not sizes:
        raise DataError("no image could be read")
    h = statistics.median(s[0] for s in sizes)
    w = statistics.median(s[1] for s in sizes)
    scale = min(1.0, max_side / max(h, w))
    return max(MIN_SIDE, round(h * scale)), max(MIN_SIDE, round(w * scale))


def load_cached(
    path: Path, cache_dir: Path, *, size: tuple[int, int] | None, resize: str = "crop", max_side: int = 128,
    progress: bool = False, workers: int | None = None,
) -> Cached:
    """Decode the images ``path`` lists into the cache under ``cache_dir`` (only those not cached
    yet), and return them. ``size`` None: the median image size, capped at ``max_side``."""
    source = list_source(path)
    stats = _stats(source)
    origin = str(path.resolve())
    pointer = cache_dir / f"{_slug(path.name)}-auto-{_key(origin, resize, max_side)}.json"

    def look_up() -> tuple[tuple[int, int] | None, Path | None, dict[str, Any] | None]:
        chosen = size
        if chosen is None and pointer.is_file():  # the size chosen when this source was first decoded
            chosen = tuple(json.loads(pointer.read_text())["size"])  # type: ignore[assignment]
        entry = _entry(cache_dir, path, resize, chosen) if chosen else None
        return chosen, entry, _read_index(entry)

    size, entry, old = look_up()
    if _current(old, source, stats):
        return _cached(entry, old, source, 0)  # type: ignore[arg-type]
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "a") as lock:  # one process decodes; the others wait, then read
        fcntl.flock(lock, fcntl.LOCK_EX)
        size, entry, old = look_up()
        if _current(old, source, stats):
            return _cached(entry, old, source, 0)  # type: ignore[arg-type]
        return _decode_into(cache_dir, path, source, stats, size, entry, old, pointer, resize, max_side,
                            progress, workers)


def _decode_into(cache_dir: Path, path: Path, source: Source, stats: list[list[int]], size: tuple[int, int] | None,
                 entry: Path | None, old: dict[str, Any] | None, pointer: Path, resize: str, max_side: int,
                 progress: bool, workers: int | None) -> Cached:
    """Decode what the cache lacks (every file, or the new and changed ones) and write the new index."""
    origin = str(path.resolve())
    chosen_here = size is None
    with _pool(workers) as pool:
        paths = [str(source.root / f) for f in source.files]
        reused = _reusable(old, source.files, stats)
        looked_at = [i for i in range(len(paths)) if size is None or i not in reused]
        headers = [h for h in _map(pool, _headers_task, [paths[i] for i in looked_at]) if h is not None]
        if size is None:  # a new source: every file's header was read
            size = auto_size(headers, max_side)
            entry = _entry(cache_dir, path, resize, size)
            old = _read_index(entry)
            if _current(old, source, stats):
                _write_json(pointer, {"size": list(size)})  # decoded at this size before, with another cap
                return _cached(entry, old, source, 0)  # type: ignore[arg-type]
            reused = _reusable(old, source.files, stats)
        channels = 1 if all(h[2] for h in headers) else 3
        if old is not None and reused:
            channels = max(channels, old["channels"]) if headers else old["channels"]
            if channels != old["channels"]:
                reused = {}  # colour images joined a grey folder: decode it all again, in colour
        assert entry is not None
        entry.mkdir(parents=True, exist_ok=True)
        name = f"images-{_key(source.files, stats, channels)}.npy"
        target = entry / f".{name}.{os.getpid()}"  # written aside, then put in place: readers never see half
        try:
            offset = create_npy(target, len(paths), (*size, channels))
            row_bytes = size[0] * size[1] * channels
            if reused:
                assert old is not None
                _copy_rows(entry / old["images"], target, offset, row_bytes, reused)
            todo = [i for i in range(len(paths)) if i not in reused]
            failed: set[int] = set()
            tasks = [(str(target), offset, row_bytes, size, channels, resize,
                      [(i, paths[i]) for i in todo[k:k + CHUNK]]) for k in range(0, len(todo), CHUNK)]
            with _bar(progress, len(todo), "decoding images") as advance:
                for result, task in zip(pool.map(_decode_task, tasks), tasks, strict=True):
                    failed.update(result)
                    advance(len(task[-1]))
        except BaseException:  # Ctrl-C, a full disk: no half-written file is left behind
            target.unlink(missing_ok=True)
            raise
    os.replace(target, entry / name)
    ok = [i not in failed and (i not in reused or reused[i][1]) for i in range(len(paths))]
    index = {"version": CACHE_VERSION, "source": origin, "files": source.files, "stats": stats,
             "size": list(size), "channels": channels, "resize": resize, "images": name, "ok": ok}
    _write_json(entry / "index.json", index)
    if chosen_here:
        _write_json(pointer, {"size": list(size)})
    if old is not None and old.get("images") != name:
        (entry / old["images"]).unlink(missing_ok=True)
    return _cached(entry, index, source, len(todo))


def _cached(entry: Path, index: dict[str, Any], source: Source, decoded: int) -> Cached:
    ok = np.array(index["ok"], bool)
    images = ImageArray.from_npy(entry / index["images"]).take(np.flatnonzero(ok))
    skipped = [f for f, good in zip(source.files, index["ok"], strict=True) if not good]
    training = ok if source.splits is None else ok & (source.splits == 0)  # a class needs training images
    counts = np.bincount(source.labels[training], minlength=len(source.class_names))
    empty = [n for n, c in zip(source.class_names, counts, strict=True) if c == 0]
    if empty:
        where = "" if source.splits is None else " in train"
        raise DataError(f"class {empty[0]!r} has no readable image{where}" +
                        (f" (nor {', '.join(repr(e) for e in empty[1:])})" if len(empty) > 1 else ""))
    return Cached(images, source.labels[ok], None if source.splits is None else source.splits[ok],
                  source.class_names, tuple(index["size"]), index["channels"], index["resize"],  # type: ignore[arg-type]
                  skipped, decoded)


def _read_index(entry: Path | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    try:
        index = json.loads((entry / "index.json").read_text())
    except (OSError, ValueError):
        return None
    if index.get("version") != CACHE_VERSION or not (entry / index.get("images", "")).is_file():
        return None
    return index


def _reusable(old: dict[str, Any] | None, files: list[str], stats: list[list[int]]) -> dict[int, tuple[int, bool]]:
    """New row -> (old row, decoded fine) for the files the old cache holds unchanged."""
    if old is None:
        return {}
    before = {(f, tuple(s)): i for i, (f, s) in enumerate(zip(old["files"], old["stats"], strict=True))}
    found = {}
    for i, (f, s) in enumerate(zip(files, stats, strict=True)):
        j = before.get((f, tuple(s)))
        if j is not None:
            found[i] = (j, bool(old["ok"][j]))
    return found


def _copy_rows(source: Path, target: Path, offset: int, row_bytes: int, reused: dict[int, tuple[int, bool]]) -> None:
    src_offset = ImageArray.from_npy(source).offset
    src, dst = os.open(source, os.O_RDONLY), os.open(target, os.O_WRONLY)
    try:
        for new, (old, good) in reused.items():
            if good:
                os.pwrite(dst, os.pread(src, row_bytes, src_offset + old * row_bytes), offset + new * row_bytes)
    finally:
        os.close(src)
        os.close(dst)


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


class _pool:
    """Decoding processes, one per core, started only when there is work (spawned: the caller may
    hold TensorFlow's threads, which a fork would copy mid-state)."""

    def __init__(self, workers: int | None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> _pool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        if len(tasks) <= 1 or self.workers == 1:
            return map(fn, tasks)
        if self.executor is None:
            self.executor = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))
        return self.executor.map(fn, tasks)


def _map(pool: _pool, fn: Callable[[list[str]], list[Any]], items: list[str]) -> list[Any]:
    chunks = [items[k:k + CHUNK * 4] for k in range(0, len(items), CHUNK * 4)]
    return [v for chunk in pool.map(fn, chunks) for v in chunk]


class _bar:
    """A rich progress bar with images/s and time left, or nothing."""

    def __init__(self, enabled: bool, total: int, what: str) -> None:
        self.enabled, self.total, self.what = enabled and total > 0, total, what

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn
        from rich.progress import MofNCompleteColumn
        from rich.progress import Progress
        from rich.progress import TaskProgressColumn
        from rich.progress import TextColumn
        from rich.progress import TimeRemainingColumn

        self.progress = Progress(TextColumn(self.what), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                                 TextColumn("{task.fields[rate]}"),
                                 TimeRemainingColumn(), console=Console(stderr=True))
        self.start = time.perf_counter()
        self.task = self.progress.add_task(self.what, total=self.total, rate="")
        self.done = 0
        self.progress.start()

        def advance(n: int) -> None:
            self.done += n
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            self.progress.update(self.task, advance=n, rate=f"{rate:,.0f} img/s")

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()
