"""A fit's inputs, checked before anything is built or written (run.fit): options, paths, the output
directory, and on --resume that the run is the same model, split, preset, channel and codec.
Each raises a BnppError whose one line names the bad value and what would be valid. And its
outcome, checked after training: did the codec learn (``learned_check``), and do the accuracies
say the inputs were prepared as the backbone was trained (``input_checks``)?"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..codec.config import CodecConfig
from ..codec.presets import LR_SCHEDULES
from ..errors import BnppError, DataError, RunError
from ..files import check_writable
from .config import FitConfig, RunConfig
from .rundir import CONFIG_FILE, RunDir


def check_out(run_dir: RunDir, config: FitConfig) -> None:
    """--out: a new or empty directory; a bnpp run to --resume; or a bnpp run to --overwrite."""
    check_writable(run_dir.path, "directory", "run directory")
    if config.resume and config.overwrite:
        raise RunError("give --resume (continue the run) or --overwrite (start it again), not both")
    if config.resume and not run_dir.is_run:
        raise RunError(f"cannot resume: '{run_dir}' is not a bnpp run directory (no {CONFIG_FILE})")
    if config.resume or run_dir.is_empty():
        return
    if not config.overwrite:
        raise RunError(f"run directory '{run_dir}' already exists and is not empty",
                       hint="pass --resume to continue it, --overwrite to start it again, or choose another --out")
    if not run_dir.replaceable:
        raise RunError(f"--overwrite: '{run_dir}' holds files that are not a bnpp run's "
                       f"({', '.join(run_dir.foreign_entries()[:3])}): not deleting them",
                       hint="choose another --out")


def check_data_paths(config: FitConfig) -> None:
    """A --data / --val-data that names a file or directory must exist (dataset names load later)."""
    for flag, spec in (("--data", config.data), ("--val-data", config.val_data)):
        if spec is None:
            continue
        path = Path(spec).expanduser()
        looks_like_path = "/" in spec or spec.startswith(("~", ".")) or path.suffix != ""
        if looks_like_path and not path.exists():
            raise DataError(f"{flag} {spec}: no such file or directory",
                            hint="an .npz file, an ImageFolder directory, or a dataset name such as cifar10")


def check_batches(images: int, batch_size: int, world: int) -> None:
    """Every epoch drops its last partial batch: fewer images than a batch would train nothing."""
    if images // world // batch_size < 1:
        per = f" per process ({world} processes)" if world > 1 else ""
        raise DataError(f"{images} training images give no full batch of {batch_size}{per}: nothing would train",
                        hint=f"use --batch-size {max(1, images // world)} or less, or more images "
                             "(--limit, --val-fraction)")


def check_resumable(run_dir: RunDir, saved: RunConfig, config: FitConfig) -> None:
    """Resume only a run of the same model, split, preset and channel."""
    fit = saved.fit
    asked = {"model": config.backbone.model, "split": config.split, "preset": config.preset,
             "channel": config.channel.name}
    found = {"model": saved.model, "split": fit.split if fit else None, "preset": fit.preset if fit else None,
             "channel": saved.channel.name}
    for key, value in asked.items():
        if found[key] != value:
            raise RunError(f"cannot resume '{run_dir}': it was fitted with {key} {found[key]!r}, not {value!r}")


def check_same_codec(run_dir: RunDir, saved: CodecConfig, codec_cfg: CodecConfig) -> None:
    """Resume only into the codec the run started with (other options, or another bnpp version's
    defaults, would build a codec its checkpoint does not fit)."""
    diff = saved.differences(codec_cfg)
    if diff:
        have = ", ".join(f"{k} {was!r}" for k, (was, _) in diff.items())
        give = ", ".join(f"{now!r}" for was, now in diff.values())
        raise RunError(f"cannot resume '{run_dir}': its codec has {have}, these options give {give}",
                       hint=f"pass the options it was fitted with (see {run_dir.file(CONFIG_FILE)})")


def check_numbers(c: FitConfig) -> None:
    bad = [(k, v) for k, v in (("--codec-epochs", c.codec_epochs), ("--joint-epochs", c.joint_epochs)) if v < 0]
    bad += [(k, v) for k, v in (("--lr", c.lr), ("--joint-lr", c.joint_lr), ("--batch-size", c.batch_size)) if not v > 0]
    bad += [("--distill", c.distill)] if c.distill < 0 else []
    bad += [("--distill-features", c.distill_features)] if not 0 <= c.distill_features < float("inf") else []
    if c.distill_at is not None and not c.distill_features > 0:
        raise BnppError(f"--distill-at {','.join(c.distill_at)} says where --distill-features matches the tail, "
                        f"and --distill-features is {c.distill_features:g}", hint="give --distill-features > 0")
    blocks = c.decoder_blocks
    bad += [("--decoder-blocks", blocks)] if int(blocks) != blocks or blocks < 0 else []
    bad += [("--lmbda", c.lmbda)] if not 0 <= c.lmbda < float("inf") else []
    bad += [("--distill-temperature", c.distill_temperature)] if not c.distill_temperature > 0 else []
    if c.lr_schedule not in LR_SCHEDULES:
        raise BnppError(f"unknown --lr-schedule {c.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
    bad += [("--limit", c.limit)] if c.limit is not None and c.limit < 1 else []
    bad += [("--checkpoint-steps", c.checkpoint_steps)] if c.checkpoint_steps is not None and c.checkpoint_steps < 1 else []
    bad += [("--checkpoint-minutes", c.checkpoint_minutes)] if c.checkpoint_minutes is not None and \
        not 0 < c.checkpoint_minutes < float("inf") else []
    if bad:
        raise BnppError(f"{bad[0][0]} {bad[0][1]} is out of range",
                        hint="epochs, --decoder-blocks: integers >= 0; lr, batch size > 0; --limit, "
                             "--checkpoint-steps >= 1; minutes > 0")
    if c.codec_epochs + c.joint_epochs == 0:
        raise BnppError("nothing to train: --codec-epochs and --joint-epochs are both 0")


NEAR_CHANCE = 1.5  # a top-1 below 1.5 x chance (15 % at 10 classes) is "near chance"
LOST_MARGIN = 0.5  # a cut model that lost over half the uncut model's margin above chance did not learn


def learned_check(cut_top1: float, uncut_top1: float, num_classes: int) -> dict[str, Any]:
    """The cut model's validation top-1 (noiseless link) judged against chance and the uncut model's
    top-1 on the same images: {cut_top1, uncut_top1, chance, learned, reason}."""
    chance = 1.0 / num_classes
    margin = uncut_top1 - chance
    reason = None
    if cut_top1 < NEAR_CHANCE * chance and uncut_top1 >= NEAR_CHANCE * chance:
        reason = (f"the cut model's validation top-1 {cut_top1:.2%} is near chance ({chance:.2%}); the uncut model "
                  f"scores {uncut_top1:.2%} on the same images")
    elif margin > 0 and uncut_top1 - cut_top1 > LOST_MARGIN * margin:
        reason = (f"the cut model's validation top-1 {cut_top1:.2%} is far below the uncut model's {uncut_top1:.2%} on "
                  f"the same images (chance {chance:.2%})")
    return {"cut_top1": cut_top1, "uncut_top1": uncut_top1, "chance": chance, "learned": reason is None,
            "reason": reason}


NOISE_SIGMAS = 3.0  # a cut model above the uncut one by over 3 binomial standard errors is not noise
NOISE_FLOOR = 0.005  # ... and by over half a point (a few hundred images give a wide error)


def input_checks(cut_top1: float, uncut_top1: float, images: int, num_classes: int,
                 recorded_top1: float | None = None, normalisation: str | None = None) -> list[str]:
    """What the accuracies say about the inputs, in words (empty: nothing odd): a cut model that
    beats the uncut one by more than noise on the same images, or an uncut model far below the top-1
    its checkpoint records (lost over LOST_MARGIN of its margin above chance), both signs of images
    normalised otherwise than the backbone was trained (or labels in another order)."""
    out = []
    where = f" (now from {normalisation})" if normalisation else ""
    noise = max(NOISE_FLOOR, NOISE_SIGMAS * math.sqrt(max(uncut_top1 * (1 - uncut_top1), 1e-12) / max(images, 1)))
    if cut_top1 - uncut_top1 > noise:
        out.append(f"the cut model ({cut_top1:.2%}) beats the uncut one ({uncut_top1:.2%}) on the same {images} images "
                   f"by more than noise ({100 * noise:.1f} points): are the images normalised as the backbone was "
                   f"trained (`mean`, `std`{where}) and the labels in its order?")
    chance = 1.0 / max(num_classes, 1)
    if recorded_top1 is not None and recorded_top1 - uncut_top1 > LOST_MARGIN * (recorded_top1 - chance) > 0:
        out.append(f"the uncut model scores {uncut_top1:.2%} here, far below the {recorded_top1:.2%} its checkpoint "
                   f"records: check the normalisation (`mean`, `std`{where}), `img_size` and the labels")
    return out
