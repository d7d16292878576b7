"""The one harness every benchmark runs on: provenance, the shared models and data, one results
writer, plot helpers, and the options that several scripts share.

    from harness import SHARED_MODELS, Results, add_options, shared_backbone, ...

benchmarks/ is sys.path[0] when a script runs as `python benchmarks/X.py`, so `import harness` needs
no path edit. The harness, like the scripts, uses bnpp only through its public API (`bnpp_cli`).

- Provenance: `provenance()` is the exact command line (repository-relative script path), the git
  commit and whether the tree was dirty (and which paths), the machine (cores, CPU model, torch /
  timm / bnpp versions, CUDA device), and the date. It is read once, when a script starts, so a
  long run records the code it ran even if HEAD moves meanwhile.
- Shared models: ../shared/models and ../shared/data beside the repository, loaded the way
  ../shared/models/README.md says (`shared_backbone(name)`); `require_shared()` skips with a
  one-line message (exit status 2) where ../shared is absent.
- Results: `Results(path)` writes one JSON document atomically (`write`) or appends one JSONL row
  per run (`append`); both always carry the command, commit and machine.
- Validation halves: `test_halves()` / `validation_images()` split the official test split once by
  a seeded permutation (choices on one half, final figures on the other).
- Plots: `pyplot()` (matplotlib with the Agg backend, None when matplotlib is missing) and
  `save_figure()`; a PNG is always drawn from a results JSON of the same stem that records its
  command (scripts offer --plot-only to redraw it).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RESULTS = REPO / "benchmarks" / "results"
RUNS = RESULTS / "runs"  # fitted runs and generated image files: gitignored, regenerated


# ---- provenance -----------------------------------------------------------------------------------
def rel(path: str | Path) -> str:
    """A path relative to the repository when it lies inside it (results files stay portable)."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def command() -> str:
    """The command line that ran this process, as a shell would take it from the repository root."""
    script = rel(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return shlex.join(["python", script, *sys.argv[1:]])


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def commit() -> dict[str, Any]:
    """{"commit": 12-hex HEAD or "unknown", "dirty": bool | None, "dirty_paths": changed tracked paths}."""
    head = (_git("rev-parse", "--short=12", "HEAD") or "").strip() or "unknown"
    status = _git("status", "--porcelain", "--untracked-files=no")
    paths = [line[3:] for line in status.splitlines()] if status is not None else []
    return {"commit": head, "dirty": None if status is None else bool(paths), "dirty_paths": paths[:50]}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # an optional package: absent or broken is recorded as None
        return None


def machine() -> dict[str, Any]:
    """Cores, CPU model, accelerator, library versions and load: what a timing depends on."""
    return {"cores": os.cpu_count(), "cpu": _cpu_model(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "timm": _version("timm"),
            "bnpp": _version("bnpp_cli"), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


@functools.cache
def provenance() -> dict[str, Any]:
    """Command, commit, dirty flag, machine and date, read once per process (at its first call)."""
    return {"command": command(), **commit(), "machine": machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


# ---- the results writer ---------------------------------------------------------------------------
def _default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (np.ndarray, torch.Tensor)):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"cannot write {type(o).__name__} to a results file")


def _atomic_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass
class Results:
    """One results file: JSON (``write``, the whole document, atomically) or JSONL (``append``, one
    row per run). Every document and every row starts with the process's provenance."""

    path: Path
    prov: dict[str, Any] = field(default_factory=provenance)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    def write(self, doc: dict[str, Any]) -> Path:
        return _atomic_text(self.path, json.dumps({**self.prov, **doc}, indent=2, default=_default) + "\n")

    def append(self, row: dict[str, Any]) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:  # one line per measurement, never rewritten
            fh.write(json.dumps({**self.prov, **row}, default=_default) + "\n")
        return self.path

    def rewrite_rows(self, rows: list[dict[str, Any]]) -> Path:
        """The JSONL file as exactly these rows (a script that re-scores every run each time)."""
        text = "".join(json.dumps({**self.prov, **r}, default=_default) + "\n" for r in rows)
        return _atomic_text(self.path, text)


def read_results(path: str | Path) -> Any:
    """A results JSON document, or the rows of a JSONL file."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


# ---- shared options -------------------------------------------------------------------------------
def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_options(ap: argparse.ArgumentParser, *, out: str | Path | None = RESULTS, out_help: str = "results folder",
                out_required: bool = False, name: str | None = None, seed: bool = True, device: bool = True,
                plot_only: bool = False) -> argparse.ArgumentParser:
    """The options several benchmarks share, spelt and defaulted the same everywhere."""
    if out is not None or out_required:
        ap.add_argument("--out", required=out_required, default=None if out_required else str(out), help=out_help)
    if name is not None:  # "" : no fixed default (the script derives one)
        ap.add_argument("--name", default=name or None, help="results file stem (and runs folder)")
    if seed:
        ap.add_argument("--seed", type=int, default=0, help="seed of the fits, the noise draws and the data order")
    if device:
        ap.add_argument("--device", default=default_device(), help="torch device of the fits and evaluations")
    if plot_only:
        ap.add_argument("--plot-only", action="store_true", help="only redraw the plot from the results file")
    return ap


def floats(text: str) -> list[float]:
    """A comma-separated list of numbers ('16,64,256')."""
    return [float(v) for v in text.split(",") if v.strip()]


# ---- the shared models and data -------------------------------------------------------------------
@dataclass(frozen=True)
class SharedModel:
    """A checkpoint in ../shared/models and how its README says to load it."""

    model: str  # timm name
    file: str
    num_classes: int
    data: str  # folder in ../shared/data
    img_size: int = 32
    model_kwargs: dict[str, Any] = field(default_factory=dict)


# The ViT checkpoint was trained with ImageNet mean / std (its metadata and README), while timm's
# data config for vit_tiny_patch16_224 says 0.5 / 0.5 (31 % top-1 instead of 60 %); timm's own way
# to correct a model's data config is the pretrained_cfg_overlay create_model kwarg.
IMAGENET_STATS = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
SHARED_MODELS = {
    "resnet18_cifar10": SharedModel("resnet18", "resnet18_cifar10.safetensors", 10, "cifar10"),
    "resnet18_cifar100": SharedModel("resnet18", "resnet18_cifar100.safetensors", 100, "cifar100"),
    "vit_cifar10": SharedModel("vit_tiny_patch16_224", "vit_tiny_p4_d6_cifar10.safetensors", 10, "cifar10",
                               model_kwargs={"patch_size": 4, "depth": 6, "pretrained_cfg_overlay": IMAGENET_STATS}),
}


def require_shared(*paths: Path) -> None:
    """Skip (one line on stderr, exit status 2) when a shared model or data file is absent."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        print(f"skipped: needs {', '.join(missing)} (the shared models and data beside the repository, "
              f"see ../shared/models/README.md): not present", file=sys.stderr)
        raise SystemExit(2)


def shared_data(folder: str = "cifar10") -> Path:
    """../shared/data/FOLDER, with train.npz and test.npz in it (skips where absent)."""
    path = SHARED / "data" / folder
    require_shared(path / "train.npz", path / "test.npz")
    return path


def shared_backbone(name: str = "resnet18_cifar10"):
    """(BackboneConfig, data folder) of a shared checkpoint, loaded as its README says (skips where absent)."""
    from bnpp_cli import BackboneConfig

    if name not in SHARED_MODELS:
        raise SystemExit(f"unknown shared model {name!r}; valid: {', '.join(SHARED_MODELS)}")
    m = SHARED_MODELS[name]
    checkpoint = SHARED / "models" / m.file
    require_shared(checkpoint)
    cfg = BackboneConfig(m.model, checkpoint=str(checkpoint), num_classes=m.num_classes, img_size=m.img_size,
                         **({"model_kwargs": dict(m.model_kwargs)} if m.model_kwargs else {}))
    return cfg, shared_data(m.data)


def image_batches(path: str | Path, data_config: dict[str, Any], batch: int = 500,
                  limit: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(normalised images, labels) batches of an .npz in order, the first ``limit`` images at most."""
    from bnpp_cli import BatchTransform, load_dataset

    x, y = load_dataset(str(path), input_size=tuple(data_config["input_size"][1:]), train=False).tensors()
    if limit is not None:
        x, y = x[:limit], y[:limit]
    tf = BatchTransform(data_config["mean"], data_config["std"], augment=False)
    return [(tf(x[i:i + batch]), y[i:i + batch]) for i in range(0, len(y), batch)]


# ---- image files (PIL, which bnpp already needs) -------------------------------------------------
def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """uint8 (H, W, 3) RGB as JPEG bytes at this quality."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(body: bytes, size: tuple[int, int]) -> np.ndarray:
    """JPEG bytes -> uint8 (H, W, 3) RGB at ``size`` (H, W); ValueError for anything else or a
    picture of more than 4x the pixels."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(body)) as im:
            if im.format != "JPEG" or im.size[0] * im.size[1] > 4 * size[0] * size[1]:
                raise ValueError(f"not a JPEG of at most 4x {size} pixels")
            rgb = im.convert("RGB")
            return np.asarray(rgb.resize(size[::-1]) if rgb.size != size[::-1] else rgb)
    except OSError as e:
        raise ValueError(f"cannot decode the JPEG: {e}") from None


def save_png(rgb: np.ndarray, path: str | Path) -> None:
    """uint8 (H, W, 3) RGB as a PNG file."""
    from PIL import Image

    Image.fromarray(rgb).save(path)


# ---- validation images the shared backbones never saw ---------------------------------------------
# The shared resnet18 was trained on all 50,000 official training images, so every image of
# train.npz (half of them) is one it has seen: a drop measured there runs 2.8-3.6 points above the
# same model's drop on new images. The only unseen images are the 10,000 of test.npz, so the
# benchmarks that make choices split it once, by a seeded permutation: the first `val_images` are
# validation (choices: ratios, recipes, length tables), the rest test (the final figures). Both halves
# are written as .npz files under benchmarks/results/runs/heldout (regenerated, never committed), and
# the permutation's seed and a hash of each half's indices go into the results file.
VALIDATION_RULES = ("test-half", "train-holdout")


def test_halves(test_npz: Path, out_dir: Path = RUNS / "heldout", *, seed: int = 0,
                val_images: int = 5000) -> tuple[Path, Path, dict[str, Any]]:
    """(validation .npz, test .npz, description) of a seeded split of ``test_npz``."""
    raw = np.load(test_npz)
    n = len(raw["y"])
    if not 0 < val_images < n:
        raise ValueError(f"val_images {val_images} must be between 1 and {n - 1} (test.npz has {n} images)")
    order = np.random.default_rng(seed).permutation(n)
    halves = {"val": np.sort(order[:val_images]), "test": np.sort(order[val_images:])}
    extra = {"class_names": raw["class_names"]} if "class_names" in raw.files else {}
    paths, info = {}, {"source": str(Path(test_npz).name), "seed": seed,
                       "rule": "numpy default_rng(seed).permutation; the first val_images are validation, the rest test"}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, idx in halves.items():
        digest = hashlib.sha256(idx.astype(np.int64).tobytes()).hexdigest()[:16]
        # named by the dataset's folder and the indices' hash: a different split, or another dataset's
        # 10,000-image test split (the same indices), never reuses a file
        path = out_dir / f"{Path(test_npz).resolve().parent.name}_{Path(test_npz).stem}_{name}_{len(idx)}_{digest}.npz"
        if not path.is_file():
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, x=raw["x"][idx], y=raw["y"][idx], **extra)
            tmp.replace(path)
        paths[name] = path
        info[name] = {"images": int(len(idx)), "indices_sha256_16": digest}
    return paths["val"], paths["test"], info


def write_images_npz(path: Path, x: torch.Tensor, y: torch.Tensor, classes) -> Path:
    """uint8 (N, 3, H, W) images as load_dataset's .npz layout (x N,H,W,3; y; class_names)."""
    arrays = {"x": x.permute(0, 2, 3, 1).contiguous().numpy(), "y": y.numpy()}
    if classes:
        arrays["class_names"] = np.array(list(classes))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def fit_holdout(path: Path, fit_data: str, val_fraction: float, seed: int, input_size, num_classes: int) -> Path:
    """The images a fit with this val_fraction and seed holds out of ``fit_data``, as their own .npz."""
    from bnpp_cli import validation_images as held_out

    if not path.is_file():
        x, y, classes, _, _ = held_out(fit_data, None, val_fraction, seed, tuple(input_size), num_classes)
        write_images_npz(path, x, y, classes)
    return path


def validation_images(rule: str, data: Path, runs: Path, seed: int = 0) -> tuple[Path, Path, dict[str, Any]]:
    """(validation .npz, test .npz, description) for a benchmark's --validation rule: ``test-half``
    (the halves above with permutation seed 0 whatever the fits' seed, so that runs of several seeds
    share them) or ``train-holdout`` (the images a fit with val_fraction 0.1 and this seed holds out
    of train.npz, seen by the backbone in its training, with all of test.npz as the test images)."""
    if rule == "test-half":
        return test_halves(data / "test.npz", seed=0)
    if rule != "train-holdout":
        raise SystemExit(f"unknown validation rule {rule!r}; valid: {', '.join(VALIDATION_RULES)}")
    val = fit_holdout(runs / "val.npz", str(data / "train.npz"), 0.1, seed, (32, 32), 10)
    return val, data / "test.npz", {"source": "held out of train.npz (0.1), seen by the backbone in its training"}


# ---- fits: reuse only what today's code would fit ------------------------------------------------
# fields a fit's saved config is compared on before it is reused; values for keys that older bnpp
# versions did not write are what those versions did
RECIPE_KEYS = ("split", "ratio", "code_channels", "spatial_reduction", "preset", "hidden_channels", "encoder_blocks",
               "val_fraction", "val_data", "limit", "codec_epochs", "joint_epochs", "lr", "joint_lr", "lr_schedule",
               "batch_size", "distill", "distill_temperature", "augment", "lmbda", "seed")
LEGACY = {"lr_schedule": "constant", "distill_temperature": 1.0, "encoder_blocks": None}


def stale_reason(cfg, layout=None) -> str | None:
    """Why the finished fit in ``cfg.out`` is not what ``cfg`` would fit now (None: reusable).

    Compared: the resolved recipe and the codec that plan_codec gives today, so a changed default
    refits instead of silently reusing an old codec."""
    from bnpp_cli import RunDir, plan_codec, resolve_recipe

    saved = RunDir(cfg.out).read_config()
    fit, want = saved.fit.to_dict(), resolve_recipe(cfg).to_dict()
    for key in RECIPE_KEYS:
        if key in want and fit.get(key, LEGACY.get(key)) != want[key]:
            return f"{key} {fit.get(key, LEGACY.get(key))!r}, now {want[key]!r}"
    if fit["channel"]["name"] != cfg.channel.name or fit["channel"]["train_condition"] != cfg.channel.train_condition:
        return f"channel {fit['channel']}, now {cfg.channel}"
    old = saved.codec
    new = plan_codec(tuple(saved.feature_shape), **({"layout": layout} if layout is not None else {}), ratio=cfg.ratio,
                     spatial_reduction=cfg.spatial_reduction, preset=cfg.preset,
                     feature_nonnegative=old.output_activation == "relu", hidden_channels=cfg.hidden_channels,
                     encoder_blocks=cfg.encoder_blocks, num_classes=saved.num_classes)
    diff = old.differences(new)
    return "codec " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items()) if diff else None


def drop_stale(cfg, layout=None) -> None:
    """Remove the finished run in ``cfg.out`` when it is stale, saying why, so that it is fitted again."""
    from bnpp_cli import RunDir

    if RunDir(cfg.out).finished:
        why = stale_reason(cfg, layout)
        if why:
            print(f"{Path(cfg.out).name}: earlier fit is stale ({why}); fitting again", flush=True)
            shutil.rmtree(cfg.out)


def head_macs(run) -> int:
    """MACs of a fitted run's head for one image (the backbone up to the split: it runs on the device)."""
    from bnpp_cli import count_macs

    return count_macs(run.pipeline.head.eval(), torch.zeros(1, *run.config.data_config["input_size"]))


def encoder_macs(run) -> int:
    """MACs of a fitted run's encoder for one image (it runs on the device, after the head)."""
    from bnpp_cli import count_macs

    encoder = run.pipeline.codec.encoder.eval()
    with torch.no_grad():
        f = run.pipeline.head.eval()(torch.zeros(1, *run.config.data_config["input_size"]))
    return count_macs(encoder, f, 0.0)


# ---- plots ----------------------------------------------------------------------------------------
def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (with a note) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Write the figure (beside the results JSON it was drawn from) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def legend(ax, **kw) -> None:
    """A legend only where something was drawn (a partial results file may have no rows yet)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**{"fontsize": 7, **kw})

