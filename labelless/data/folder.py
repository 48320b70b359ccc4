"""A user's folder of images → ImageStore (`--dataset folder:PATH`).

Decisions, so that a folder of real-world files loads without surprises:
- Every file under PATH, recursively, in sorted path order (deterministic row order). Names starting
  with '.' (files and folders: `.DS_Store`, `.git/`, editor swap files) are ignored and not reported;
  every other file that Pillow cannot read (text, corrupt, truncated, empty, too large) is skipped and
  listed in `store.skipped` as (path, reason), with one warning naming the count and the first few.
- Multi-frame files (GIF, TIFF) contribute their first frame. EXIF orientation is applied, so phone
  photos stand upright.
- Colour: transparency is composited on white (dropping alpha instead would expose whatever colour
  the encoder left under transparent pixels, often black). 16-bit images are scaled to 8 bit by
  dividing by 257 (65535 → 255), not clipped; float images are clipped to 0..255. If every readable
  image is grayscale the store has one channel, otherwise three (RGB).
- Size: `image_size` given → short side resized to it, then centre-cropped square. Otherwise the
  native size is kept when all images share it and its short side is at most 256 px (larger photos
  kept whole would not fit a GPU-resident store); else 64 px, short side + centre crop.
- Large JPEGs are decoded at 1/2, 1/4 or 1/8 scale when that still covers the target size
  (`Image.draft`), and other formats are reduced by an integer box filter before the final resample,
  so a 100-megapixel photo is never resampled at full size. Pillow's decompression-bomb guard
  (`Image.MAX_IMAGE_PIXELS`, ~179 MP) is lifted while reading, since large scans and panoramas are
  legitimate here; `max_pixels` is the limit instead, and larger files are skipped and listed.
- `labels_from_folders=True`: the first-level subfolder name is the label (classes sorted by name,
  only those with at least one readable image). Files lying directly in PATH then have no label; they
  are skipped and listed rather than failing the load, since a README beside the class folders is
  common.
- File names that are not valid UTF-8 are kept as Python's surrogate-escaped strings
  (`os.fsdecode`), so `store.paths` can always be opened again.
- Memory: every read prints its `memory_plan` on stderr. A folder whose decoded pixels exceed half
  the available RAM (or any folder with `stream="always"` / `LABELLESS_STREAM=always`) is decoded
  into a `.npy` cache file and memory-mapped (`store.streamed`): `cache_dir`, default
  `$LABELLESS_CACHE`, else `$XDG_CACHE_HOME/labelless`, else `~/.cache/labelless`, one file per
  (folder, size, channels, labels_from_folders). A JSON sidecar fingerprints the file list (path,
  size, mtime), the target shape, the Pillow version and `CACHE_VERSION`; a later read with the same
  fingerprint reuses the file without decoding, any change rebuilds it.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import ExifTags, Image, ImageOps

from labelless.data.stores import ImageStore, MemoryPlan, format_bytes, memory_plan
from labelless.errors import UserError

DEFAULT_SIZE = 64  # 100k images × 64×64×3 = 1.2 GB: fits beside a model on any GPU
KEEP_MAX_SIDE = 256
DEFAULT_MAX_PIXELS = 1 << 30  # ~1 gigapixel: 3 GB as RGB while decoding, still feasible
PROGRESS_MIN_FILES = 200
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
CACHE_ENV = "LABELLESS_CACHE"
CACHE_VERSION = 1  # bump when decoding changes what a cached row holds


@dataclass
class _Header:
    path: str
    size: tuple[int, int]  # (width, height) after EXIF orientation
    gray: bool
    class_folder: str | None = None  # first-level subfolder, with labels_from_folders


NOT_IN_CLASS_FOLDER = "not inside a class subfolder (labels_from_folders)"


def read_folder(path: str | os.PathLike, image_size: int | None = None, labels_from_folders: bool = False,
                max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = True, stream: str | None = None,
                cache_dir: str | os.PathLike | None = None) -> ImageStore:
    """Every image under `path` as one uint8 store; unreadable files are skipped and listed (see module doc).

    `stream`: 'auto' (by size), 'always' or 'never' (default `$LABELLESS_STREAM`, else 'auto');
    `cache_dir`: where a streamed folder's decoded pixels go (see module doc).
    """
    root = os.path.expanduser(os.fsdecode(path))  # `folder:~/photos`: the shell leaves a ~ after "folder:" alone
    if not os.path.isdir(root):
        raise UserError(f"folder '{_shown(root)}' does not exist or is not a directory")
    if image_size is not None and image_size < 1:
        raise UserError(f"image_size must be a positive number of pixels, not {image_size}")
    files = _walk(root)
    if not files:
        raise UserError(f"folder '{_shown(root)}' holds no files")
    skipped: list[tuple[str, str]] = []
    with _bomb_guard_lifted():
        headers = _read_headers(files, root, labels_from_folders, max_pixels, progress, skipped)
        if not headers:
            _warn_skipped(root, skipped)
            if labels_from_folders and any(why == NOT_IN_CLASS_FOLDER for _, why in skipped):
                raise UserError(f"none of the {len(files)} files under '{_shown(root)}' is a readable image inside a "
                                "class subfolder: --labels-from-folders takes each label from the first-level "
                                "subfolder (PATH/cat/1.png), so a flat folder has none")
            raise UserError(f"none of the {len(files)} files under '{_shown(root)}' is an image Pillow can read "
                            f"(first: {_shown(skipped[0][0])}: {skipped[0][1]})")
        size, why = _target_size(headers, image_size)
        channels = 1 if all(h.gray for h in headers) else 3
        plan = memory_plan(len(headers), size[1], size[0], channels, mode=stream)
        if plan.stream:
            images, kept, plan = _decode_cached(root, headers, size, channels, progress, skipped, plan,
                                                _cache_file(root, size, channels, labels_from_folders, cache_dir))
        else:
            _print_plan(root, plan)
            images, kept = _decode_all(headers, size, channels, progress, skipped)
            images = images if len(kept) == len(images) else images[kept]
    _warn_skipped(root, skipped)
    if not kept:
        raise UserError(f"no image under '{_shown(root)}' could be decoded (first: {_shown(skipped[0][0])}: "
                        f"{skipped[0][1]})")
    kept_headers = [headers[i] for i in kept]
    labels, class_names = _labels(kept_headers) if labels_from_folders else (None, None)
    return ImageStore(
        images=torch.from_numpy(images),
        labels=labels,
        class_names=class_names,
        source=f"folder {_shown(root)} ({len(kept)} image{'s' if len(kept) != 1 else ''}, {size[1]}×{size[0]}×{channels}, {why})",
        paths=[h.path for h in kept_headers],
        skipped=sorted(skipped),
        streamed=plan.stream,
    )


def _walk(root: str) -> list[str]:
    """Non-hidden files under root, sorted by path components; links to folders are followed once each.
    A folder reached twice (itself and a link to it, or two links) is listed under the first path of a
    walk that takes, in each folder, real subfolders before links and each kind by name: the same
    paths on every file system, whatever order it lists entries in."""
    seen, files = set(), []
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link loop or a second link to the same folder
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")),
                         key=lambda d: (os.path.islink(os.path.join(folder, d)), d))
        files += [os.path.join(folder, n) for n in names if not n.startswith(".")]
    # by components, so 'a/x' sorts before 'a-b/x' as a file browser shows them
    return sorted(files, key=lambda f: os.path.relpath(f, root).split(os.sep))


@contextmanager
def _bomb_guard_lifted() -> Iterator[None]:
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="file", disable=not enabled or total <= PROGRESS_MIN_FILES)


def _read_headers(files: list[str], root: str, labels_from_folders: bool, max_pixels: int, progress: bool,
                  skipped: list[tuple[str, str]]) -> list[_Header]:
    """Open each file lazily (header only) to learn size and mode before decoding anything."""
    headers = []
    for file in _progress(files, len(files), "reading headers", progress):
        class_folder = _class_folder(file, root) if labels_from_folders else None
        if labels_from_folders and class_folder is None:
            skipped.append((file, NOT_IN_CLASS_FOLDER))
            continue
        header, reason = _header(file, max_pixels)
        if header is None:
            skipped.append((file, reason))
            continue
        header.class_folder = class_folder
        headers.append(header)
    return headers


def _class_folder(file: str, root: str) -> str | None:
    parts = Path(os.path.relpath(file, root)).parts
    return parts[0] if len(parts) > 1 else None


def _header(file: str, max_pixels: int) -> tuple[_Header | None, str]:
    try:
        if os.path.getsize(file) == 0:
            return None, "empty file"
        with Image.open(file) as im:
            width, height = im.size
            if width * height > max_pixels:
                return None, f"{width}×{height} is more than max_pixels={max_pixels}"
            if im.getexif().get(ExifTags.Base.Orientation) in ROTATED_ORIENTATIONS:
                width, height = height, width
            return _Header(file, (width, height), im.mode in GRAY_MODES), ""
    except Image.UnidentifiedImageError:
        return None, "not an image Pillow can read"
    except Exception as e:  # noqa: BLE001 — any failure of one file must skip it, never stop the load
        return None, f"{type(e).__name__}: {e}"


def _target_size(headers: list[_Header], image_size: int | None) -> tuple[tuple[int, int], str]:
    """(width, height) of every row, and why that size."""
    if image_size is not None:
        return (image_size, image_size), f"resized to {image_size} px"
    sizes = {h.size for h in headers}
    if len(sizes) == 1 and min(next(iter(sizes))) <= KEEP_MAX_SIDE:
        return next(iter(sizes)), "native"
    reason = "mixed sizes" if len(sizes) > 1 else f"larger than {KEEP_MAX_SIDE} px"
    return (DEFAULT_SIZE, DEFAULT_SIZE), f"resized to {DEFAULT_SIZE} px ({reason}; set image_size to choose)"


def _decode_all(headers: list[_Header], size: tuple[int, int], channels: int, progress: bool,
                skipped: list[tuple[str, str]], out: np.ndarray | None = None) -> tuple[np.ndarray, list[int]]:
    """Decode into one preallocated N×H×W×C array (`out`, e.g. a memory map, or a new one); rows that
    fail are left out of `kept`."""
    images = np.zeros((len(headers), size[1], size[0], channels), dtype=np.uint8) if out is None else out
    kept = []
    mode = "L" if channels == 1 else "RGB"
    # Pillow releases the GIL while decoding, so threads use every core without pickling arrays
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = _map_ahead(pool, lambda h: _decode(h.path, size, mode), headers)
        for row, (array, reason) in enumerate(_progress(decoded, len(headers), "decoding images", progress)):
            if array is None:
                skipped.append((headers[row].path, reason))
            else:
                images[row] = array.reshape(images.shape[1:])
                kept.append(row)
    return images, kept


def _map_ahead(pool: ThreadPoolExecutor, fn: Callable, items: list, ahead: int = 256) -> Iterator:
    """`pool.map` in order, but at most `ahead` items in flight: `map` would submit every file at
    once, holding a future (and, when the consumer lags, a decoded image) per file."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _cache_file(root: str, size: tuple[int, int], channels: int, labels_from_folders: bool,
                cache_dir: str | os.PathLike | None) -> Path:
    """One cache file per folder and shape, so that a changed folder overwrites its stale cache."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                      "labelless")
    key = json.dumps([os.fsencode(os.path.realpath(root)).hex(), size, channels, labels_from_folders])
    name = os.path.basename(os.path.normpath(root)).encode("ascii", "replace").decode()
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40] or "folder"
    return Path(cache_dir).expanduser() / f"{safe}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"


def _fingerprint(headers: list[_Header], shape: tuple[int, ...]) -> str:
    """What a cache's rows depend on: the files (path, size, mtime), the shape, the decoder."""
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, PIL.__version__, list(shape)]).encode())
    for h in headers:
        try:
            stat = os.stat(h.path)
            state = f"{stat.st_size} {stat.st_mtime_ns}"
        except OSError as e:  # gone since its header was read: decoding will skip it, the cache must not match
            state = f"{type(e).__name__}"
        digest.update(os.fsencode(h.path) + b"\0" + f"{state}\n".encode())
    return digest.hexdigest()


def _decode_cached(root: str, headers: list[_Header], size: tuple[int, int], channels: int, progress: bool,
                   skipped: list[tuple[str, str]], plan: MemoryPlan, cache: Path
                   ) -> tuple[np.ndarray, list[int], MemoryPlan]:
    """Decode into `cache` (unless it already holds these files) and memory-map its kept rows.

    The map is copy-on-write: writing into `store.images` changes this process's pages, never the file.
    """
    shape = (len(headers), size[1], size[0], channels)
    fingerprint = _fingerprint(headers, shape)
    sidecar = cache.with_suffix(".json")
    meta = _read_sidecar(sidecar, fingerprint, cache)
    plan = replace(plan, cache_path=str(cache), cache_reused=meta is not None)
    _print_plan(root, plan)
    if meta is None:
        meta = _write_cache(headers, size, channels, progress, shape, fingerprint, cache, sidecar)
    failed = {int(row): reason for row, reason in meta["failed"]}
    skipped += [(headers[row].path, reason) for row, reason in failed.items()]
    kept = [row for row in range(len(headers)) if row not in failed]
    images = np.load(cache, mmap_mode="c")[:len(kept)]
    return images, kept, plan


def _read_sidecar(sidecar: Path, fingerprint: str, cache: Path) -> dict | None:
    """The sidecar of a complete cache of these very files, else None."""
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("fingerprint") != fingerprint or not cache.is_file():
        return None
    return meta


def _write_cache(headers: list[_Header], size: tuple[int, int], channels: int, progress: bool,
                 shape: tuple[int, ...], fingerprint: str, cache: Path, sidecar: Path) -> dict:
    """Decode every row into a new .npy, kept rows first, then publish it and its sidecar atomically."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    nbytes = int(np.prod(shape))
    free = shutil.disk_usage(cache.parent).free
    if nbytes > free:
        raise UserError(f"the decoded images need {format_bytes(nbytes)} in {cache.parent}, which has "
                        f"{format_bytes(free)} free: point ${CACHE_ENV} at a larger disk")
    partial = cache.with_name(f"{cache.name}.{os.getpid()}.partial")
    sidecar.unlink(missing_ok=True)  # from here on, the old cache is invalid
    try:
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
        _reserve(partial, nbytes)
        decode_skipped: list[tuple[str, str]] = []
        _, kept = _decode_all(headers, size, channels, progress, decode_skipped, out)
        for row, source in enumerate(kept):  # compact: kept rows first, so the store is one slice
            if row != source:
                out[row] = out[source]
        out.flush()
        del out
        os.replace(partial, cache)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    reasons = dict(decode_skipped)
    kept_rows = set(kept)
    meta = {"fingerprint": fingerprint, "shape": list(shape), "rows": len(kept),
            "failed": [[row, reasons[h.path]] for row, h in enumerate(headers) if row not in kept_rows]}
    temporary = sidecar.with_name(f"{sidecar.name}.{os.getpid()}.partial")
    temporary.write_text(json.dumps(meta))
    os.replace(temporary, sidecar)
    return meta


def _print_plan(root: str, plan: MemoryPlan) -> None:
    print(f"labelless: folder {_shown(root)}: {plan.describe()}", file=sys.stderr)


def _reserve(path: Path, nbytes: int) -> None:
    """Allocate the file's blocks now: a full disk then fails here, not as SIGBUS inside the map."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise UserError(f"no room for {format_bytes(nbytes)} of decoded images in {path.parent}: "
                                f"point ${CACHE_ENV} at a larger disk") from None
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


def _decode(file: str, size: tuple[int, int], mode: str) -> tuple[np.ndarray | None, str]:
    try:
        with Image.open(file) as im:
            im.draft(None, size)  # JPEG only: decode at 1/2..1/8 scale, still ≥ size on both sides
            im = _resize_centre_crop(_to_mode(ImageOps.exif_transpose(im), mode), size)
            return np.asarray(im, dtype=np.uint8), ""
    except Exception as e:  # noqa: BLE001 — truncated or corrupt data surfaces only here; skip, never stop
        return None, f"{type(e).__name__}: {e}"


def _to_mode(im: Image.Image, mode: str) -> Image.Image:
    """8-bit 'L' or 'RGB': 16-bit scaled by 1/257, transparency composited on white."""
    if im.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return im if im.mode == mode else im.convert(mode)


def _resize_centre_crop(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Crop the central region with the target's aspect ratio, then resample it to `size`."""
    if im.size == size:  # native size kept, or already the target
        return im
    width, height = im.size
    scale = min(width / size[0], height / size[1])
    crop_w, crop_h = size[0] * scale, size[1] * scale
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    box = (left, top, left + crop_w, top + crop_h)
    # reducing_gap: shrink by an integer box filter first, so huge images are not resampled at full size
    return im.resize(size, Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


def _labels(headers: list[_Header]) -> tuple[torch.Tensor, list[str]]:
    class_names = sorted({h.class_folder for h in headers})
    index = {name: i for i, name in enumerate(class_names)}
    return torch.tensor([index[h.class_folder] for h in headers], dtype=torch.int64), class_names


def write_skip_list(path: Path | str, skipped: list[tuple[str, str]]) -> None:
    """One `path<TAB>reason` line per skipped file (`run`'s skipped_files.txt, `predict`'s OUT.skipped.txt);
    file names keep undecodable bytes (surrogateescape), as the predictions CSV does."""
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.writelines(f"{file}\t{reason}\n" for file, reason in skipped)


def _warn_skipped(root: str, skipped: list[tuple[str, str]]) -> None:
    if not skipped:
        return
    first = ", ".join(f"{_shown(p)} ({reason})" for p, reason in sorted(skipped)[:5])
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    warnings.warn(f"skipped {len(skipped)} file(s) under '{_shown(root)}': {first}{more} "
                  "(a run lists them all, each with its reason, in RUN_DIR/skipped_files.txt)", stacklevel=3)


def _shown(path: str) -> str:
    """The path for messages: undecodable bytes in file names become '�' instead of breaking the print."""
    return os.fsencode(path).decode("utf-8", errors="replace")
