"""Images, masks and camera labels in the FFHQC / EG3D layout, from a folder or a .zip.

Layout (paths relative to the dataset root):

    dataset.json        {"labels": [[name, [25 floats]], ...],
                         "identities": {name: int, ...},        optional
                         "background": "white" | [r, g, b]}     optional: what the images were composited on
    <res>/NNNNN.png     the images (or directly in the root, or wherever the label names say)
    mask/NNNNN.png      optional foreground masks (L, 255 = head), same stem as the image

`path` may be the root (folder or zip) or, as FFHQC is usually given, the folder of one resolution
(`FFHQC/512`) whose parent holds dataset.json and mask/. A label name is looked up relative to the
root first, then relative to the image folder (`<res>/` or the folder given).

Items are the labels sorted by name. An index list (a JSON array) filters and rebalances them as
the authors' code does (fraunhoferhhi/cgs-gan, training/dataset.py): its entries are image FILE
NUMBERS, the first number in an image's file name (17 -> `00017.png`), in the list's order, with
repeats kept (they are the rebalancing); entries whose file does not exist are dropped, with one
line saying how many. `index_list="auto"` takes the authors' FFHQC list, `smile_pose_rebalancing.json`
(their `custom_dist/smile_pose_rebalancing.json`), from the dataset folder when it is there (see
`find_rebalancing_list`). xflip appends the mirrored copies (yaw-flipped labels). Masks stored at
another resolution are resized (bilinear) to the images'.

Everything but the pixel data is validated in the constructor (labels, index list, every image and
mask header), so a broken dataset fails before training with the file named (`DataError`);
`check_dataset` also decodes the images (all of them when cheap, else a sample) for a check before
any cluster resource is used.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import threading
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from cgsgan import camera
from cgsgan.data.backgrounds import composite, sample_backgrounds

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BACKGROUNDS = ("off", "random", "white", "black")
MASK_DIR = "mask"
# Above this the images are read on demand instead of being decoded into memory up front
# (FFHQC at 512 is ~55 GB of pixels).
CACHE_LIMIT_BYTES = 4 << 30


# The authors' rebalanced FFHQC list (their custom_dist/smile_pose_rebalancing.json): what
# data.index_list="auto" looks for beside the dataset. Nothing is downloaded.
REBALANCING_LIST = "smile_pose_rebalancing.json"
# check_dataset decodes every used image up to this many; above, a seeded sample of DECODE_SAMPLE.
FULL_DECODE_MAX = 4096
DECODE_SAMPLE = 1024


class DataError(ValueError):
    """The dataset (a file of it) is broken; the message starts with the file at fault. Deterministic:
    reading the same files again fails the same way, so retrying does not help."""


# Notices already shown in this process: each is said once, however many datasets are built
# (the trainer builds two over the same files) - and not at all in a worker when the launcher
# already said it before Ray started (`mark_shown`).
_SHOWN: set[str] = set()


def _say_once(kind: str, message: str) -> None:
    """One line on stderr, once per process: `kind` is "note" or "warning"."""
    if message not in _SHOWN:
        _SHOWN.add(message)
        print(f"{kind}: {message}", file=sys.stderr, flush=True)


def mark_shown(messages: Iterable[str]) -> None:
    """Treat these notices as already said (a Ray worker, after the launcher printed them)."""
    _SHOWN.update(messages)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


_DIGITS = re.compile(r"\d+")


def file_number(name: str) -> int | None:
    """The number of an image file, as the authors' loader reads it: the first run of digits in the
    file's name (`512/00017.png` -> 17, `img00017.png` -> 17); None when the name has no digits."""
    m = _DIGITS.search(PurePosixPath(name).name)
    return int(m.group()) if m else None


def find_rebalancing_list(path: str | Path) -> Path | None:
    """The authors' FFHQC rebalancing list beside a dataset, if present: REBALANCING_LIST in the folder
    given (or, for a zip, the folder holding it), in its parent (FFHQC/ when given FFHQC/512), or in
    a custom_dist/ folder below either."""
    p = Path(path)
    folders = [p, p.parent] if p.is_dir() else [p.parent]
    for folder in folders:
        for cand in (folder / REBALANCING_LIST, folder / "custom_dist" / REBALANCING_LIST):
            if cand.is_file():
                return cand
    return None


class _Store:
    """Read-only access to the files of a folder or a zip, by relative posix path."""

    def __init__(self, root: Path, is_zip: bool) -> None:
        self.root, self.is_zip = root, is_zip
        self._zip: zipfile.ZipFile | None = None
        self._zip_names: list[str] | None = None
        self._lock = threading.Lock()  # one zip handle, read by the prefetch and training threads

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None:  # opened lazily, so each DataLoader worker gets its own handle
            self._zip = zipfile.ZipFile(self.root)
        return self._zip

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_zip", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _zip=None, _lock=threading.Lock())

    def describe(self, name: str) -> str:
        return f"{self.root}:{name}" if self.is_zip else str(self.root / name)

    def list(self, under: str = "") -> list[str]:
        """Relative paths of all files below folder `under` ("" = everything), recursively."""
        prefix = under.rstrip("/") + "/" if under else ""
        if self.is_zip:
            if self._zip_names is None:
                self._zip_names = [n for n in self._zipfile().namelist() if not n.endswith("/")]
            return [n for n in self._zip_names if n.startswith(prefix)]
        top = self.root / under if under else self.root
        out = []
        for dirpath, _dirs, files in os.walk(top):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            out.extend(f if rel == "." else f"{rel}/{f}" for f in files)
        return out

    def open(self, name: str):
        """A binary file object (only what is read is read: enough for an image header)."""
        if self.is_zip:
            return self._zipfile().open(name)
        return open(self.root / name, "rb")

    def read(self, name: str) -> bytes:
        if self.is_zip:
            with self._lock:
                return self._zipfile().read(name)
        return (self.root / name).read_bytes()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None


def _open_layout(path: Path) -> tuple[_Store, str | None]:
    """The store holding dataset.json at its root, and the image folder if `path` was one resolution's."""
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path}: not a folder or a .zip")
        store = _Store(path, is_zip=True)
        if "dataset.json" not in store.list():
            raise DataError(f"{path}: missing dataset.json at the root of the zip")
        return store, None
    if not path.is_dir():
        raise DataError(f"dataset not found: {path}")
    if (path / "dataset.json").is_file():
        return _Store(path, is_zip=False), None
    if (path.parent / "dataset.json").is_file():  # FFHQC/512 with FFHQC/dataset.json and FFHQC/mask
        return _Store(path.parent, is_zip=False), path.name
    raise DataError(f"{path / 'dataset.json'}: missing dataset.json (looked in {path} and its parent)")


@dataclass
class LabelTable:
    """The labels of a dataset, sorted by image name: names [N], labels [N, 25], identities [N] (-1 = none)."""

    names: list[str]
    labels: torch.Tensor
    identities: torch.Tensor
    source: str  # where dataset.json was read from, for messages
    stored_background: torch.Tensor | None = None  # [3] colour the images were composited on, if declared


def _parse_labels(store: _Store) -> LabelTable:
    where = store.describe("dataset.json")
    try:
        meta = json.loads(store.read("dataset.json"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{where}: not valid JSON: {e}") from e
    raw = meta.get("labels") if isinstance(meta, dict) else None
    if isinstance(raw, dict):
        raw = list(raw.items())
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{where}: no camera labels (expected \"labels\": [[name, [25 floats]], ...])")
    table: dict[str, torch.Tensor] = {}
    for entry in raw:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)):
            raise DataError(f"{where}: a label entry is not [name, [25 floats]]: {str(entry)[:80]}")
        name, values = entry
        if name in table:
            raise DataError(f"{where}: image {name!r} is labelled twice")
        if not isinstance(values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        ):
            raise DataError(f"{where}: label of {name!r}: camera label must be {camera.LABEL_DIM} numbers, "
                             f"got {str(values)[:60]}")
        try:
            table[name] = camera.validate_label(values, f"{where}: label of {name!r}")
        except ValueError as e:  # wrong length, NaN / Inf
            raise DataError(str(e)) from e
    ids_raw = meta.get("identities") or {}
    if not isinstance(ids_raw, dict):
        raise DataError(f"{where}: \"identities\" must map image names to integers")
    names = sorted(table)
    ids = []
    for n in names:
        v = ids_raw.get(n, -1)
        if isinstance(v, bool) or not isinstance(v, int):
            raise DataError(f"{where}: identity of {n!r} is not an integer: {v!r}")
        ids.append(v)
    bg = meta.get("background")
    if bg is not None:
        named = {"white": [1.0, 1.0, 1.0], "black": [0.0, 0.0, 0.0]}
        bg = named.get(bg, bg) if isinstance(bg, str) else bg
        if not (isinstance(bg, list) and len(bg) == 3 and all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in bg)):
            raise DataError(f"{where}: \"background\" must be \"white\", \"black\" or [r, g, b] in [0, 1], "
                             f"got {meta.get('background')!r}")
        bg = torch.tensor(bg, dtype=torch.float32)
    return LabelTable(names, torch.stack([table[n] for n in names]), torch.tensor(ids, dtype=torch.int64), where, bg)


def load_labels(path: str | Path) -> LabelTable:
    """Labels of the dataset at `path` (folder, zip or one resolution's folder), in item order."""
    store, _ = _open_layout(Path(path))
    try:
        return _parse_labels(store)
    finally:
        store.close()


def _read_index_list(index_list: str | Path | Sequence[int]) -> tuple[list[int], str]:
    where = "index list"
    if isinstance(index_list, (str, Path)):
        where = str(index_list)
        try:
            values = json.loads(Path(index_list).read_text())
        except FileNotFoundError as e:
            raise DataError(f"{where}: index list not found") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{where}: not valid JSON: {e}") from e
    else:
        values = list(index_list)
    if not isinstance(values, list) or not values:
        raise DataError(f"{where}: expected a non-empty JSON array of image file numbers")
    for pos, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise DataError(f"{where}: entry {pos} is not an integer image number: {v!r}")
    return [int(v) for v in values], where


def load_index_list(index_list: str | Path | Sequence[int], names: Sequence[str],
                    describe=str) -> tuple[list[int], int]:
    """Positions into `names` of an index list's entries, and how many entries were dropped.

    Entries are image FILE NUMBERS (`file_number`: 17 -> `00017.png`), as in the authors' loader:
    kept in the list's order with their repeats; an entry whose number no image has is dropped.
    `describe` turns a name into the path shown in messages.
    """
    values, where = _read_index_list(index_list)
    position: dict[int, int] = {}
    for pos, name in enumerate(names):
        number = file_number(name)
        if number is None:
            raise DataError(f"{describe(name)}: the index list {where} selects images by the number in their file "
                            "name, and this image's name has none")
        if number in position:
            raise DataError(f"{describe(name)}: has the same file number ({number}) as "
                            f"{describe(names[position[number]])}, so the index list {where} is ambiguous")
        position[number] = pos
    kept = [position[v] for v in values if v in position]
    if not kept:
        lo, hi = min(position), max(position)
        raise DataError(f"{where}: none of its {len(values)} entries is the file number of an image of the "
                        f"dataset (its images are numbered {lo}..{hi})")
    return kept, len(values) - len(kept)


def _resolve_images(store: _Store, image_dir: str | None, names: list[str], resolution: int | None,
                    source: str) -> list[str]:
    """File of each label name; every labelled image must exist and every image beside them be labelled."""
    files = [f for f in store.list(image_dir or "") if _is_image(f) and not f.startswith(MASK_DIR + "/")]
    file_set = set(files)
    res_dirs: list[str] = []
    if image_dir:
        prefixes = [image_dir]
    else:
        top_dirs = {f.split("/", 1)[0] for f in files if "/" in f}
        res_dirs = sorted(d for d in top_dirs if d.isdigit())
        if resolution is not None and str(resolution) in top_dirs:
            prefixes = [str(resolution)]
        else:
            prefixes = res_dirs if len(res_dirs) == 1 else []
    resolved, missing = [], []
    for n in names:
        for cand in [n, *(f"{p}/{n}" for p in prefixes)]:
            if cand in file_set:
                resolved.append(cand)
                break
        else:
            missing.append(n)
    if missing:
        looked = ", ".join(store.describe(p) for p in ["", *prefixes] if p or not image_dir)
        hint = ""
        if not image_dir and not prefixes and len(res_dirs) > 1:
            hint = f"; several resolution folders ({', '.join(res_dirs)}): give resolution= or the folder of one"
        raise DataError(f"{source}: {len(missing)} label(s) without an image, e.g. {missing[0]!r} "
                         f"(looked in {looked}){hint}")
    # Unlabelled images among the labelled ones: folders holding none of the labelled images
    # (another resolution, say) are not part of this dataset.
    used_dirs = {str(PurePosixPath(f).parent) for f in resolved}
    labelled = set(resolved)
    extra = sorted(f for f in files if f not in labelled and str(PurePosixPath(f).parent) in used_dirs)
    if extra:
        raise DataError(f"{store.describe(extra[0])}: image without a label in {source} "
                         f"({len(extra)} unlabelled image(s))")
    return resolved


def _resolve_masks(store: _Store, images: list[str]) -> list[str] | None:
    """Mask file of each image (same stem under mask/, with or without the image folder), or None."""
    masks = [f for f in store.list(MASK_DIR) if _is_image(f)]
    if not masks:
        return None
    by_stem = {str(PurePosixPath(f).with_suffix("")): f for f in masks}
    out = []
    for img in images:
        parts = PurePosixPath(img).with_suffix("").parts
        for start in range(len(parts)):  # mask/64/00000.png, then mask/00000.png
            key = "/".join((MASK_DIR, *parts[start:]))
            if key in by_stem:
                out.append(by_stem[key])
                break
        else:
            raise DataError(f"{store.describe(img)}: no mask for this image in {store.describe(MASK_DIR)}")
    return out


def _image_size(store: _Store, name: str) -> tuple[int, int]:
    try:
        with store.open(name) as f, Image.open(f) as im:
            return im.size
    except Exception as e:  # PIL raises many types for broken files
        raise DataError(f"{store.describe(name)}: unreadable image ({type(e).__name__}: {e})") from e


def _decode(store: _Store, name: str, mode: str, size: int | None = None) -> np.ndarray:
    """uint8 [H, W, C] (C = 3 for RGB, 1 for L); masks of another size are resized when `size` is given."""
    try:
        with Image.open(io.BytesIO(store.read(name))) as im:
            im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as e:
        raise DataError(f"{store.describe(name)}: unreadable image ({type(e).__name__}: {e})") from e
    return arr[..., None] if arr.ndim == 2 else arr


def unmix(image01: torch.Tensor, mask: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """Foreground colour of images composited on `color`: image01 [..., 3, H, W], mask [..., 1, H, W],
    color [3] -> [..., 3, H, W] (inverts image = fg * mask + color * (1 - mask) where mask > 0)."""
    c = color.to(image01)[:, None, None]
    fg = (image01 - c * (1 - mask)) / mask.clamp_min(1e-6)
    return torch.where(mask > 0, fg.clamp(0, 1), image01)


@dataclass
class RawBatch:
    """Items as stored: uint8 images [b, 3, H, W] and masks [b, 1, H, W] (None without masks), and
    which items are the mirrored copies [b]. A quarter of float32's bytes to copy to a GPU."""

    images: torch.Tensor
    masks: torch.Tensor | None
    flipped: torch.Tensor

    def pin(self) -> RawBatch:
        """In page-locked memory, so that the copy to a GPU is one DMA transfer (needs CUDA)."""
        return RawBatch(self.images.pin_memory(), self.masks.pin_memory() if self.masks is not None else None,
                        self.flipped)

    def to(self, device: torch.device) -> RawBatch:
        return RawBatch(self.images.to(device, non_blocking=True),
                        self.masks.to(device, non_blocking=True) if self.masks is not None else None, self.flipped)


class BatchLoader:
    """A dataset's batches, the next one read (from memory, or decoded from its files) and pinned in
    a background thread while the current step trains (PIL and torch's copies release the GIL)."""

    def __init__(self, dataset: ImageDataset, pin: bool = False) -> None:
        self.dataset, self.pin = dataset, pin
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cgsgan-batches")
        self._next: tuple[tuple[int, ...], Future] | None = None

    def _read(self, key: tuple[int, ...]) -> RawBatch:
        raw = self.dataset.raw_batch(key)
        return raw.pin() if self.pin else raw

    def get(self, indices: Iterable[int]) -> RawBatch:
        """The batch of these items: the one read ahead if it is this one, else read now."""
        key = tuple(int(i) for i in indices)
        ahead, self._next = self._next, None
        if ahead is not None and ahead[0] == key:
            return ahead[1].result()
        if ahead is not None:
            ahead[1].cancel()
        return self._read(key)

    def read_ahead(self, indices: Iterable[int]) -> None:
        key = tuple(int(i) for i in indices)
        self._next = (key, self._pool.submit(self._read, key))

    @property
    def reading_ahead(self) -> bool:
        return self._next is not None

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


class ImageDataset(torch.utils.data.Dataset):
    """FFHQC/EG3D-layout images with camera labels, optional masks, index list and x-flips.

    Items (dicts): image float32 [3, H, W] in [-1, 1]; mask float32 [1, H, W] in [0, 1] (ones
    without masks); label float32 [25] (mirrored for flipped items); identity int64 (-1 when
    dataset.json has no identities); index int (the item index).

    index_list: a JSON file or a sequence of image file numbers (see the module docstring), or
    "auto" for the authors' FFHQC list beside the dataset (`find_rebalancing_list`; every image
    once when there is none). Dropped entries are said once, on stderr.
    background: "off" returns images as stored; "random" / "white" / "black" paste them onto a
    uniform colour with their mask ("random": one colour per item, fixed by (seed, epoch, index);
    call `set_epoch`). When dataset.json declares the colour the images were composited on
    ("background", as the synthetic heads do), that colour is first un-mixed from the soft mask
    edges, so no fringe of it survives on the new background. Without masks the reals cannot be
    repainted: one warning says so. mask_resize: masks of another (square) size are resized,
    bilinear, to the image size (FFHQC keeps one mask folder for all resolutions); False makes a
    size mismatch an error.
    cache: decode the images once into memory (skipped, with a warning, above CACHE_LIMIT_BYTES).
    headers_checked: the headers were read already (`check_dataset`, by the launcher): with a
    resolution given they are not read again; a decoded image of another size is still a DataError.
    """

    def __init__(
        self,
        path: str | Path,
        resolution: int | None = None,
        index_list: str | Path | Sequence[int] | None = None,
        xflip: bool = False,
        background: str = "off",
        seed: int = 0,
        cache: bool = True,
        mask_resize: bool = True,
        headers_checked: bool = False,
    ) -> None:
        if background not in BACKGROUNDS:
            raise ValueError(f"background={background!r}: expected one of {BACKGROUNDS}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed={seed!r}: expected an integer >= 0")
        self.path = Path(path)
        self.background, self.seed, self.xflip, self.epoch = background, seed, bool(xflip), 0
        self.notices: list[str] = []  # what this dataset said (or would have said) once on stderr
        self._store, image_dir = _open_layout(self.path)
        table = _parse_labels(self._store)
        self.names, self._source = table.names, table.source
        self.stored_background = table.stored_background
        self._files = _resolve_images(self._store, image_dir, table.names, resolution, table.source)
        self._mask_files = _resolve_masks(self._store, self._files)
        # A launcher that ran check_dataset read every header already: a worker trusts it rather than
        # opening each file again (a 512 px FFHQC is 140k files per worker); decoding still checks sizes.
        trust = headers_checked and resolution is not None
        self._res = int(resolution) if trust else self._check_sizes(resolution, mask_resize)
        self._check_background()

        n = len(self.names)
        if isinstance(index_list, str) and index_list == "auto":
            index_list = find_rebalancing_list(self.path)
            if index_list is None:
                self._notice("note", f"{self.path}: no {REBALANCING_LIST} beside the dataset (index_list=auto); "
                                     "every labelled image is used once")
        self.index_list_path = str(index_list) if isinstance(index_list, (str, Path)) else None
        if index_list is not None:
            raw, dropped = load_index_list(index_list, self._files, self._store.describe)
            if dropped:
                where = self.index_list_path or "index list"
                self._notice("note", f"{where}: {dropped} of {dropped + len(raw)} entries name no image of "
                                     f"{self.path} (no file with that number) and are dropped; {len(raw)} kept "
                                     f"({len(set(raw))} distinct images)")
        else:
            raw = list(range(n))
        self._raw = torch.tensor(raw, dtype=torch.int64)  # [M] into the sorted label list
        self._base_labels, self._base_ids = table.labels, table.identities
        item_raw = self._raw.repeat(2) if self.xflip else self._raw
        labels = table.labels[self._raw]
        self._labels = torch.cat([labels, camera.mirror_label(labels)]) if self.xflip else labels  # [len, 25]
        self._identities = table.identities[item_raw]  # [len]

        self._images: torch.Tensor | None = None  # uint8 [N, 3, H, W] over the raw images used
        self._masks: torch.Tensor | None = None  # uint8 [N, 1, H, W]
        self._slot = torch.full((n,), -1, dtype=torch.int64)  # raw index -> cache row
        self._pending: dict[int, Future] = {}  # raw index -> decode started by `prefetch`
        self._pool: ThreadPoolExecutor | None = None
        if cache:
            self._fill_cache()

    # ------------------------------------------------------------------ validation / loading
    def _notice(self, kind: str, message: str) -> None:
        self.notices.append(message)
        _say_once(kind, message)

    def _check_background(self) -> None:
        """Without masks the reals keep the background they were stored on, whatever the scheme."""
        if self.background == "off" or self.has_masks:
            return
        fixed = sample_backgrounds(self.background, 1)[0] if self.background != "random" else None
        stored = self.stored_background
        if fixed is not None and stored is not None and torch.allclose(fixed, stored):
            return  # e.g. white on images stored on white: nothing to repaint
        self._notice("warning", f"{self.path}: no masks ({MASK_DIR}/ folder), so the real images keep the "
                                "background they were stored with while generated images are rendered on the "
                                "loss.background colours; add masks, or set loss.background to the colour the "
                                "images were stored on")

    def _check_sizes(self, resolution: int | None, mask_resize: bool) -> int:
        first, size0 = self._files[0], None
        for name in self._files:
            w, h = _image_size(self._store, name)
            if w != h:
                raise DataError(f"{self._store.describe(name)}: image is {w}x{h}, not square")
            if resolution is not None and w != resolution:
                raise DataError(f"{self._store.describe(name)}: image is {w}x{h} but resolution={resolution}")
            if size0 is None:
                size0 = w
            elif w != size0:
                raise DataError(f"{self._store.describe(name)}: image is {w}x{h} but {self._store.describe(first)} "
                                 f"is {size0}x{size0} (mixed sizes)")
        if self._mask_files is not None:
            for img, mask in zip(self._files, self._mask_files):
                mw, mh = _image_size(self._store, mask)
                if (mw, mh) != (size0, size0) and not (mask_resize and mw == mh):
                    raise DataError(f"{self._store.describe(mask)}: mask is {mw}x{mh} but its image "
                                     f"{self._store.describe(img)} is {size0}x{size0}"
                                     + (" (only square masks are resized)" if mask_resize else ""))
        return int(size0)

    def _load(self, raw: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 image [3, H, W] and mask [1, H, W] (or None) of raw image `raw`."""
        img = torch.from_numpy(_decode(self._store, self._files[raw], "RGB").copy()).permute(2, 0, 1)
        if img.shape[-1] != self._res or img.shape[-2] != self._res:
            raise DataError(f"{self._store.describe(self._files[raw])}: decoded size {tuple(img.shape[1:])} differs "
                             f"from the {self._res}x{self._res} of its header")
        mask = None
        if self._mask_files is not None:
            m = _decode(self._store, self._mask_files[raw], "L", size=self._res)
            mask = torch.from_numpy(m.copy()).permute(2, 0, 1)
        return img.contiguous(), mask

    def _fill_cache(self) -> None:
        used = torch.unique(self._raw)
        per_image = self._res * self._res * (3 + (1 if self._mask_files is not None else 0))
        if len(used) * per_image > CACHE_LIMIT_BYTES:
            warnings.warn(f"{self.path}: {len(used)} images of {self._res}px do not fit the in-memory cache "
                          f"({CACHE_LIMIT_BYTES >> 30} GiB); reading them on demand", stacklevel=3)
            return
        images = torch.empty(len(used), 3, self._res, self._res, dtype=torch.uint8)
        masks = torch.empty(len(used), 1, self._res, self._res, dtype=torch.uint8) if self._mask_files else None
        for row, raw in enumerate(used.tolist()):
            img, mask = self._load(raw)
            images[row] = img
            if masks is not None:
                masks[row] = mask
        self._slot[used] = torch.arange(len(used))
        self._images, self._masks = images, masks
        self._store.close()  # everything is in memory; workers need no file handle

    # ------------------------------------------------------------------ public API
    @property
    def resolution(self) -> int:
        return self._res

    @property
    def labels(self) -> torch.Tensor:
        """Camera labels of all items [len, 25] (mirrored ones for the flipped half)."""
        return self._labels

    @property
    def identities(self) -> torch.Tensor:
        """Identity of each item [len] int64 (-1 where unknown)."""
        return self._identities

    @property
    def raw_indices(self) -> torch.Tensor:
        """Index into the sorted label list (`names`) of each item [len]."""
        return self._raw.repeat(2) if self.xflip else self._raw

    @property
    def has_masks(self) -> bool:
        return self._mask_files is not None

    @property
    def reads_on_demand(self) -> bool:
        """Whether some items are decoded from their files when asked for (not held in memory)."""
        return bool((self._slot[self._raw] < 0).any())

    def prefetch(self, indices: Iterable[int]) -> None:
        """Start decoding the files of these items in a background thread.

        For items outside the in-memory cache (a dataset too large to hold): the trainer asks
        for the next batch while the current step computes, so the decode (PIL releases the GIL)
        overlaps training. Items are the same either way; decodes not asked for by the next
        call are dropped.
        """
        wanted = {raw for raw in (self._raw_of(int(i)) for i in indices) if self._slot[raw] < 0}
        for raw in [r for r in self._pending if r not in wanted]:
            self._pending.pop(raw).cancel()
        if not wanted:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cgsgan-decode")
        for raw in wanted - self._pending.keys():
            self._pending[raw] = self._pool.submit(self._load, raw)

    def _raw_of(self, index: int) -> int:
        """The raw image (index into `names`) behind item `index` (flipped items repeat the raw list)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        return int(self._raw[index % len(self._raw)])

    def set_epoch(self, epoch: int) -> None:
        """Selects the random background colours of this epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._raw) * (2 if self.xflip else 1)

    def background_color(self, index: int) -> torch.Tensor:
        """The colour [3] item `index` gets in this epoch under the dataset's scheme (not "off")."""
        words = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2)
        g = torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))
        return sample_backgrounds(self.background, 1, g)[0]

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        raw = self._raw_of(index)
        flipped = index >= len(self._raw)
        row = int(self._slot[raw])
        if row >= 0:
            img_u8 = self._images[row]
            mask_u8 = self._masks[row] if self._masks is not None else None
        else:
            pending = self._pending.pop(raw, None)
            img_u8, mask_u8 = pending.result() if pending is not None else self._load(raw)
        image = img_u8.float() / 255  # [3, H, W] in [0, 1]
        mask = mask_u8.float() / 255 if mask_u8 is not None else torch.ones(1, self._res, self._res)
        if flipped:
            image, mask = image.flip(-1), mask.flip(-1)
        if self.background != "off":
            if self.stored_background is not None:
                image = unmix(image, mask, self.stored_background)
            image = composite(image[None], mask[None], self.background_color(index)[None])[0]
        return {
            "image": image * 2 - 1,
            "mask": mask,
            "label": self._labels[index].clone(),
            "identity": self._identities[index].clone(),
            "index": index,
        }

    def raw_batch(self, indices: Sequence[int]) -> RawBatch:
        """Items `indices` as stored (uint8): what crosses to the training device; `finish` makes
        them what `__getitem__` gives. Decodes the files of items not held in memory."""
        raws = [self._raw_of(int(i)) for i in indices]
        rows = self._slot[raws]
        if bool((rows >= 0).all()):
            images = self._images.index_select(0, rows)
            masks = self._masks.index_select(0, rows) if self._masks is not None else None
        else:
            loaded = [(self._images[r], self._masks[r] if self._masks is not None else None) if r >= 0
                      else (self._pending.pop(raw).result() if raw in self._pending else self._load(raw))
                      for raw, r in zip(raws, rows.tolist())]  # fmt: skip
            images = torch.stack([img for img, _ in loaded])
            masks = torch.stack([m for _, m in loaded]) if self._mask_files is not None else None
        flipped = torch.tensor([int(i) >= len(self._raw) for i in indices])
        return RawBatch(images, masks, flipped)

    def finish(self, raw: RawBatch, indices: Sequence[int]) -> torch.Tensor:
        """The images [b, 3, H, W] in [-1, 1] of items `indices` from their RawBatch, on its device:
        the same values as `__getitem__`'s (the same operations, batched)."""
        image = raw.images.float() / 255
        mask = (raw.masks.float() / 255 if raw.masks is not None
                else torch.ones(len(image), 1, self._res, self._res, device=image.device))
        flipped = raw.flipped.to(image.device)[:, None, None, None]
        image, mask = torch.where(flipped, image.flip(-1), image), torch.where(flipped, mask.flip(-1), mask)
        if self.background != "off":
            if self.stored_background is not None:
                image = unmix(image, mask, self.stored_background)
            image = composite(image, mask, torch.stack([self.background_color(int(i)) for i in indices]))
        return image * 2 - 1

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _pending={}, _pool=None)  # threads do not travel

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool, self._pending = None, {}
        self._store.close()


def check_dataset(path: str | Path, resolution: int | None = None, index_list: str | Path | Sequence[int] | None = None,
                  background: str = "off", full_decode_max: int = FULL_DECODE_MAX,
                  sample: int = DECODE_SAMPLE) -> list[str]:
    """Everything `ImageDataset` checks (labels, index list, every image and mask header), then the
    pixel data: every image the items use (and its mask) is decoded when there are at most
    `full_decode_max` of them, else a seeded random sample of `sample`. For a check before any
    cluster resource is used; raises DataError naming the file. Returns the notices the dataset
    said (on stderr, once) followed by a one-line summary of what was checked.
    """
    ds = ImageDataset(path, resolution=resolution, index_list=index_list, background=background, cache=False)
    try:
        used = torch.unique(ds._raw)
        what = "images and masks" if ds.has_masks else "images"
        if len(used) <= full_decode_max:
            picked, how = used.tolist(), f"decoded all {len(used)} {what}"
        else:
            order = torch.randperm(len(used), generator=torch.Generator().manual_seed(0))[:sample]
            picked = used[order].tolist()
            how = (f"decoded a random sample of {len(picked)} of the {len(used)} {what} (the others are decoded "
                   "when training reads them)")
        for raw in picked:
            ds._load(raw)
    finally:
        ds.close()
    summary = (f"{path}: {len(ds.names)} labelled {ds.resolution}px images, {len(ds._raw)} items"
               f"{' from ' + ds.index_list_path if ds.index_list_path else ''}; headers read, {how}")
    return [*ds.notices, summary]
