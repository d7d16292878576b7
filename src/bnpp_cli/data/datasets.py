"""Datasets: where images and labels come from (batches and per-batch transforms: batching.py).

Every dataset yields ``(image, label)``: a uint8 tensor (3, H, W) already at the model's input size
and an int. Scaling, normalisation and augmentation happen per batch, in torch, on the batch's device::

    load_dataset(spec) -> ImageDataset --make_loader--> x uint8 (N, 3, H, W), y int64 (N,)
        --BatchTransform(mean, std, augment)--> x float32 normalised (N, 3, H, W) --> model

Sources (``load_dataset``'s spec):
- ``PATH.npz``: arrays ``x`` (N, H, W, 3) uint8, ``y`` (N,) integer, optional ``class_names`` (K,) str;
  loaded without pickle and held in memory.
- ``DIR``: ImageFolder layout (DIR/CLASS/IMAGE), decoded per sample with PIL; or a directory holding
  ``train.npz`` / ``test.npz`` (the file picked by ``train``).
- a torchvision name (cifar10, cifar100, svhn, stl10, mnist, fashionmnist), held in memory.

Images not at the input size are resized the timm eval way (cover ``size / crop_pct`` keeping the
aspect ratio, then centre crop): arrays once at load, files per sample. Images already at the input
size are never rescaled: timm's default eval transform would resize a 32x32 CIFAR image to 34 and
crop it back to 32, which changes a CIFAR model's accuracy (see ../shared/models/README.md).
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from ..errors import DataError, choices_hint

DEFAULT_ROOT = "~/.cache/bnpp/data"  # where torchvision datasets are downloaded
TORCHVISION_DATASETS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "svhn": "SVHN",
                        "stl10": "STL10", "mnist": "MNIST", "fashionmnist": "FashionMNIST"}
_CHANNELS_LAST = ("cifar10", "cifar100")  # .data (N, H, W, 3); others (N, 3, H, W) or grey (N, H, W)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
ACCEPTED = ("an .npz file (arrays x, y), an ImageFolder directory, or one of "
            + ", ".join(TORCHVISION_DATASETS))
_SCAN_LIMIT = 20_000  # image headers read at load to see which images need resizing (~0.1 ms each)
_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


class ImageDataset(Dataset):
    """Images as uint8 (3, H, W) tensors at the input size, with int labels.

    Held in memory (``images`` given: ``tensors()`` works and ``make_loader`` indexes it directly) or
    read per sample by ``read(i)`` (image files).
    ``resized`` is False when no image is rescaled, else a description of what is done.
    """

    def __init__(self, labels, *, images: torch.Tensor | None = None, read=None,
                 classes: list[str] | None = None, source: str = "", resized: bool | str = False):
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self._images, self._read = images, read
        self.classes, self.source, self.resized = classes, source, resized

    @property
    def in_memory(self) -> bool:
        return self._images is not None

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self._images[i] if self._images is not None else self._read(i)
        return image, int(self.labels[i])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images uint8 (N, 3, H, W) and labels int64 (N,), without copying."""
        if self._images is None:
            raise DataError(f"{self.source} is read per sample; tensors() needs an in-memory dataset")
        return self._images, self.labels


def load_dataset(spec: str, *, input_size: tuple[int, int], train: bool, root: str | None = None,
                 download: bool = True, crop_pct: float = 1.0,
                 interpolation: str = "bilinear") -> ImageDataset:
    """An .npz file, an ImageFolder directory or a torchvision name as an ImageDataset at input_size.

    A known name wins over a same-named directory unless the spec looks like a path (``./cifar10``).
    """
    size = _check_size(input_size)
    if not 0 < crop_pct <= 1:
        raise DataError(f"crop_pct {crop_pct} is out of range: expected 0 < crop_pct <= 1")
    if interpolation not in INTERPOLATIONS:
        raise DataError(f"unknown interpolation {interpolation!r}: expected {', '.join(INTERPOLATIONS)}")
    resize = (size, crop_pct, interpolation)
    name = spec.strip().lower().replace("-", "").replace("_", "")
    looks_like_path = (os.sep in spec or "/" in spec or spec.startswith(("~", "."))
                       or Path(spec).suffix != "")
    if name in TORCHVISION_DATASETS and not looks_like_path:
        return _load_torchvision(name, train, root, download, resize)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_folder(path, train, resize)
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return _load_npz(path, resize)
        raise DataError(f"unsupported data file {path}: expected {ACCEPTED}")
    if looks_like_path:
        raise DataError(f"no such file or directory: {path}; expected {ACCEPTED}")
    raise DataError(f"unknown dataset {spec!r}: not a file, a directory or a dataset name; "
                    f"expected {ACCEPTED}", hint=choices_hint(name, TORCHVISION_DATASETS))


def _check_size(input_size) -> tuple[int, int]:
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise DataError(f"input_size {input_size!r} is not valid: expected (H, W), two positive ints")
    return size


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _npz_reason(exc: BaseException) -> str:
    """numpy's reason in one line, except its advice to unpickle: bnpp never loads pickled data."""
    text = _one_line(exc)
    if "pickle" in text.lower():
        return "it holds pickled (object) data or is not an .npz archive; bnpp never loads pickled data"
    return text


def _resize_policy(resize) -> str:
    (H, W), crop_pct, interpolation = resize
    cover = f"{math.floor(H / crop_pct)}x{math.floor(W / crop_pct)} (crop_pct {crop_pct:g})"
    return f"resized ({interpolation}) to cover {cover}, centre-cropped to {H}x{W}"


def fit_to_size(x: torch.Tensor, resize) -> torch.Tensor:
    """uint8 (N, 3, h, w) -> uint8 (N, 3, H, W) the timm eval way; x itself if already (H, W)."""
    (H, W), crop_pct, interpolation = resize
    h, w = x.shape[-2:]
    if (h, w) == (H, W):
        return x
    sh, sw = math.floor(H / crop_pct), math.floor(W / crop_pct)  # cover these, keep aspect (timm)
    f = max(sh / h, sw / w)
    nh, nw = max(sh, int(h * f)), max(sw, int(w * f))
    top, left = int(round((nh - H) / 2)), int(round((nw - W) / 2))
    out = torch.empty((len(x), 3, H, W), dtype=torch.uint8, device=x.device)
    chunk = max(1, (1 << 26) // (3 * max(nh * nw, h * w)))  # ~256 MiB of float32 at a time
    for s in range(0, len(x), chunk):
        big = F.interpolate(x[s:s + chunk].float(), size=(nh, nw), mode=interpolation,
                            antialias=interpolation != "nearest")
        out[s:s + chunk] = big[..., top:top + H, left:left + W].round_().clamp_(0, 255).to(torch.uint8)
    return out


class _FileReader:
    """Decodes one image file per call with PIL, as RGB, fitted to the input size."""

    def __init__(self, paths: list[str], resize):
        self.paths, self.resize = paths, resize

    def __call__(self, i: int) -> torch.Tensor:
        from PIL import Image

        path = self.paths[i]
        try:
            with Image.open(path) as image:
                pixels = np.array(image.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot decode image {path}: {_one_line(exc)}") from exc
        image = torch.from_numpy(pixels).permute(2, 0, 1)
        return fit_to_size(image[None], self.resize)[0].contiguous()


def read_image(path: str | Path, input_size: tuple[int, int], crop_pct: float = 1.0,
               interpolation: str = "bilinear") -> torch.Tensor:
    """One image file -> uint8 (3, H, W) RGB at the input size (unchanged if already that size)."""
    if not Path(path).is_file():
        raise DataError(f"no such image file: {path}")
    return _FileReader([str(path)], (tuple(input_size), crop_pct, interpolation))(0)


def _array_dataset(images: torch.Tensor, labels, classes, source: str, resize) -> ImageDataset:
    """From uint8 (N, 3, h, w) images (a view is fine), resized once if not at the input size."""
    (H, W), h, w = resize[0], *images.shape[-2:]
    resized = (h, w) != (H, W) and f"{h}x{w} -> {H}x{W} once at load: {_resize_policy(resize)}"
    return ImageDataset(labels, images=fit_to_size(images, resize).contiguous(), classes=classes,
                        source=source, resized=resized)


def _load_npz(path: Path, resize) -> ImageDataset:
    expected = "expected x (N, H, W, 3) uint8 and y (N,) integer"
    try:
        archive = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as exc:
        raise DataError(f"cannot read {path} as .npz ({_npz_reason(exc)}); {expected}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single array, not an .npz archive; {expected}")
    with archive:
        for key in ("x", "y"):
            if key not in archive.files:
                found = ", ".join(archive.files) or "nothing"
                raise DataError(f"{path} has no array {key!r} (found: {found}); {expected}")
        try:
            x, y = archive["x"], archive["y"]
            names = archive["class_names"] if "class_names" in archive.files else None
        except _NPZ_ERRORS as exc:
            raise DataError(f"cannot read the arrays of {path} ({_npz_reason(exc)}); {expected}") from exc
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"x in {path} is {x.dtype} {x.shape}; {expected}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"y in {path} is {y.dtype} {y.shape}; {expected}")
    if len(x) == 0:
        raise DataError(f"{path} holds no images (x is {x.shape}); {expected} with N > 0")
    if len(x) != len(y):
        raise DataError(f"{path} has {len(x)} images in x but {len(y)} labels in y; expected as many")
    if y.min() < 0:
        raise DataError(f"y in {path} has negative labels (min {y.min()}); expected labels 0, 1, ...")
    classes = None
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"class_names in {path} is {names.dtype} {names.shape}; expected (K,) str")
        classes = [str(n) for n in names]
        if y.max() >= len(classes):
            raise DataError(f"y in {path} has labels up to {y.max()} but only {len(classes)} class_names")
    return _array_dataset(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(y.astype(np.int64)), classes,
                          f"{path} ({len(x)} images {x.shape[1]}x{x.shape[2]})", resize)


def _load_folder(root: Path, train: bool, resize) -> ImageDataset:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_file = root / ("train.npz" if train else "test.npz")
    if not classes and any((root / f).is_file() for f in ("train.npz", "test.npz")):
        if not split_file.is_file():
            raise DataError(f"{root} has no {split_file.name} for the {split_file.stem} split")
        return _load_npz(split_file, resize)
    paths, labels = [], []
    for label, name in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(root / name, followlinks=True)):
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(dirpath, file))
                    labels.append(label)
    if not paths:
        raise DataError(f"no images in {root}: expected an ImageFolder layout {root}/CLASS/IMAGE "
                        f"({', '.join(IMAGE_EXTENSIONS)}), or train.npz / test.npz")
    (H, W), checked = resize[0], paths[::math.ceil(len(paths) / _SCAN_LIMIT)]
    off_size = sum(_image_size(p) != (H, W) for p in checked)
    resized: bool | str = False
    if off_size or len(checked) < len(paths):
        resized = (f"per image, {off_size} of {len(checked)} checked not at {H}x{W}: "
                   f"{_resize_policy(resize)}; images at {H}x{W} unchanged")
    source = f"{root} (ImageFolder, {len(paths)} images, {len(classes)} classes)"
    return ImageDataset(labels, read=_FileReader(paths, resize), classes=classes, source=source,
                        resized=resized)


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as image:  # reads the header only
            return image.height, image.width
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {_one_line(exc)}") from exc


def _load_torchvision(name: str, train: bool, root: str | None, download: bool,
                      resize) -> ImageDataset:
    import torchvision.datasets

    root = os.path.expanduser(root or DEFAULT_ROOT)
    split = {"split": "train" if train else "test"} if name in ("svhn", "stl10") else {"train": train}
    try:
        ds = getattr(torchvision.datasets, TORCHVISION_DATASETS[name])(root, download=download, **split)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError, ...
        what = (f"could not download {name} to {root} (offline?)" if download
                else f"{name} is not in {root} and download is off")
        raise DataError(f"{what}: {_one_line(exc)}",
                        hint="use an .npz file or an ImageFolder directory instead") from exc
    x = torch.as_tensor(np.asarray(ds.data))
    x = x.permute(0, 3, 1, 2) if name in _CHANNELS_LAST else x
    x = x[:, None].expand(-1, 3, -1, -1) if x.ndim == 3 else x  # grey (N, H, W)
    labels = torch.as_tensor(np.asarray(ds.targets if hasattr(ds, "targets") else ds.labels))
    classes = [str(c) for c in getattr(ds, "classes", None) or range(int(labels.max()) + 1)]
    source = f"torchvision {name} ({'train' if train else 'test'} split, {len(x)} images, {root})"
    return _array_dataset(x, labels, classes, source, resize)


def split_train_val(dataset: Dataset, val_fraction: float,
                    seed: int) -> tuple[Dataset, Subset | None]:
    """Deterministic random split: round(N * val_fraction) samples (at least 1) go to validation.

    val_fraction 0 gives (dataset, None). Both subsets keep the dataset's order.
    """
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction {val_fraction} is out of range: expected 0 <= fraction < 1")
    if val_fraction == 0:
        return dataset, None
    n = len(dataset)
    n_val = max(1, math.floor(n * val_fraction + 0.5))
    if n_val >= n:
        raise DataError(f"val_fraction {val_fraction} of {n} samples leaves no training samples")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train_idx, val_idx = order[n_val:].sort().values, order[:n_val].sort().values
    return Subset(dataset, train_idx.tolist()), Subset(dataset, val_idx.tolist())


def unwrap_subsets(dataset: Dataset) -> tuple[Dataset, torch.Tensor | None]:
    """(base dataset, indices into it or None) through any nesting of Subsets."""
    indices = None
    while isinstance(dataset, Subset):
        sub = torch.as_tensor(dataset.indices, dtype=torch.int64)
        indices = sub if indices is None else sub[indices]
        dataset = dataset.dataset
    return dataset, indices


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """Labels int64 (N,) of a dataset or Subset; reads the samples only if labels are not stored."""
    base, indices = unwrap_subsets(dataset)
    stored = base.labels if isinstance(base, ImageDataset) else getattr(base, "targets", None)
    if stored is None:
        ids = range(len(base)) if indices is None else indices.tolist()
        return torch.tensor([int(base[i][1]) for i in ids], dtype=torch.int64)
    stored = torch.as_tensor(stored, dtype=torch.int64)
    return stored if indices is None else stored[indices]


def check_labels(dataset: Dataset, num_classes: int) -> None:
    """DataError if a label of the dataset is not a class of a model with num_classes outputs."""
    labels = dataset_labels(dataset)
    if len(labels) == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        source = getattr(unwrap_subsets(dataset)[0], "source", type(dataset).__name__)
        raise DataError(f"labels of {source} range {lo}..{hi} but the model has "
                        f"num_classes={num_classes}", hint=f"pass --num-classes {hi + 1} "
                        f"to give the model a head for {hi + 1} classes")
