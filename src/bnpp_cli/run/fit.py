"""`bnpp fit`: validate everything, build the pipeline, then train with the run directory kept current.

    fit_codec(FitConfig) -> FitResult
      check options and the output directory -> load backbone (and, on --resume, its saved weights)
      -> trace, find the split -> load data -> plan the codec -> RunConfig -> build_pipeline
      -> for each epoch of each phase: loop.train_epoch, loop.validate, RunDir.save_checkpoint
      -> RunDir.write_final

Runs on CPU, one GPU (bf16 autocast with ``amp``), or several processes under ``torchrun``
(distributed.py; rank 0 writes the run directory). The loop never prints: progress goes to a
callback. Checkpoints make the run resumable: after every epoch, and within one every
``checkpoint_steps`` optimizer steps or ``checkpoint_minutes`` (the last one kept, atomically); a
resumed fit ends with the same weights as an uninterrupted one (the loop's generators and batch
index are part of the checkpoint). Ctrl-C (SIGINT) finishes the batch, writes a checkpoint and
stops; ``overwrite`` starts a bnpp run directory afresh.
"""

from __future__ import annotations

import copy
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..codec.config import plan_codec
from ..codec.entropy import update_tables
from ..codec.presets import get_preset
from ..data.batching import BatchTransform, make_loader
from ..data.datasets import check_labels, load_dataset, split_train_val
from ..errors import BnppError
from ..split.backbone import load_backbone
from ..split.graph import split_model, trace_model
from . import distributed
from .config import FitConfig, RunConfig
from .features import FeatureCache, check_fit, for_fit
from .checks import check_batches, input_checks, learned_check, check_data_paths, check_numbers, check_out, check_resumable, check_same_codec
from .loop import Callback, EpochSpec, distill_points, make_optimizer, set_trainable, train_epoch, validate
from .pipeline import SplitPipeline, build_pipeline
from .rundir import RunDir


def resolve_recipe(config: FitConfig) -> FitConfig:
    """Fill the fields left None from the preset's recipe (explicit values always win)."""
    recipe = get_preset(config.preset).recipe
    fill = {k: getattr(recipe, k) for k in ("lr", "batch_size", "distill", "distill_temperature", "lr_schedule", "lmbda",
                                          "distill_features")}
    return replace(config, **{k: v for k, v in fill.items() if getattr(config, k) is None})


@dataclass
class FitResult:
    """What `fit_codec` did.

    Attributes:
        run: the run directory written (config.json, codec.safetensors, metrics.json).
        config: the RunConfig stored there (split, codec, channel, data config, the fit's options).
        epochs: one record per epoch (phase, epoch, train_loss, train_top1, seconds, images, and the
            validation top-1 noiseless and at the worst training condition, fractions).
        seconds: wall time of the whole fit, the step after training (tables, length table) included.
        validation: where the validation images came from (source, images, backbone_may_have_seen),
            plus the records of the step after training ("tables", "length_table") where the preset has one.
        features: the feature cache (built or reused, rows, seconds); None when it was off.
    """

    run: str
    config: RunConfig
    epochs: list[dict[str, Any]]
    seconds: float
    validation: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] | None = None


def _noop(event: str, info: dict[str, Any]) -> None:
    pass


def fit_codec(config: FitConfig, callback: Callback = _noop) -> FitResult:
    """Validate everything, then train; the run directory appears only once the inputs are sound."""
    rank, world = distributed.rank_and_world()
    config = resolve_recipe(config)
    run_dir = RunDir(config.out)
    check_fit_inputs(config, run_dir, world)
    torch.manual_seed(config.seed)  # a random-init backbone is reproducible too
    backbone = load_backbone(config.backbone)
    saved = run_dir.read_config() if config.resume else None
    if saved is not None:
        check_resumable(run_dir, saved, config)
        backbone.model.load_state_dict(run_dir.read_source_backbone(), strict=True)
    traced = trace_model(backbone.model, backbone.input_size, config.backbone.model)
    point = traced.find(config.split)
    layout = point.require_layout()  # nchw, nhwc, tokens or vector; LayoutError where the model does not settle it
    source, train_set, val_set = _fit_data(config, backbone)
    head, _ = split_model(traced, point)
    codec_cfg = plan_codec(point.shape, layout=layout, ratio=config.ratio if config.code_channels is None else None,
                           code_channels=config.code_channels, spatial_reduction=config.spatial_reduction,
                           preset=config.preset, feature_nonnegative=_nonnegative(head, train_set, backbone.data_config),
                           hidden_channels=config.hidden_channels, encoder_blocks=config.encoder_blocks,
                           decoder_blocks=int(config.decoder_blocks), num_classes=backbone.num_classes)
    if saved is not None:
        check_same_codec(run_dir, saved.codec, codec_cfg)
    check_batches(len(train_set), config.batch_size, world)
    run_config = RunConfig(
        model=config.backbone.model, create_kwargs=backbone.create_kwargs, source_weights=backbone.weights,
        data_config=backbone.data_config, split=point.name, feature_shape=list(point.shape),
        codec=codec_cfg, channel=config.channel, classes=_classes_of(train_set), num_classes=backbone.num_classes,
        fit=config,
    )
    torch.manual_seed(config.seed)
    pipeline, _ = build_pipeline(backbone.model, run_config, traced)
    pipeline = pipeline.to(torch.device(config.device))
    features = for_fit(config, run_config, backbone.model, pipeline, source, len(train_set), torch.device(config.device))
    if features is not None:
        callback("features", dict(features.info))  # built or reused, rows, seconds
    trainer = _Trainer(config, run_config, run_dir, backbone.model, pipeline, train_set, val_set,
                       callback, rank, world, features)
    trainer.validation = _validation_source(config, val_set, backbone.weights)
    return trainer.run()


def check_fit_inputs(config: FitConfig, run_dir: RunDir, world: int = 1) -> None:
    """Every check that needs no model: options, paths, the device, the channel and the preset's
    code over it (codec.kinds ``check_fit``). A typo costs no minutes."""
    check_out(run_dir, config)
    check_numbers(config)
    check_fit(config, world)
    check_data_paths(config)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BnppError(f"`device` {config.device}: CUDA is not available on this machine", hint="use `device` cpu")
    config.channel.build()  # validates the channel and its training condition
    holds_validation = bool(config.val_data) or config.val_fraction > 0
    get_preset(config.preset).code.check_fit(config.preset, config.channel.name, holds_validation)


def _fit_data(config: FitConfig, backbone):
    """(the training images before --limit, the training images, the validation images)."""
    input_size = backbone.input_size
    train_set = load_dataset(config.data, input_size=tuple(input_size[1:]), train=True, root=config.data_root)
    check_labels(train_set, backbone.num_classes)
    if config.val_data:
        val_set = load_dataset(config.val_data, input_size=tuple(input_size[1:]), train=False, root=config.data_root)
        check_labels(val_set, backbone.num_classes)
    else:
        train_set, val_set = split_train_val(train_set, config.val_fraction, config.seed)
    source = train_set  # the images before --limit (a feature cache holds a prefix of them)
    if config.limit is not None:
        train_set = torch.utils.data.Subset(train_set, range(min(config.limit, len(train_set))))
    return source, train_set, val_set


def _validation_source(config: FitConfig, val_set, weights: str) -> dict[str, Any]:
    """Where the validation top-1 comes from, said with the figure (metrics.json, the fit's output)."""
    images = len(val_set) if val_set is not None else 0
    if config.val_data:
        return {"source": "--val-data", "images": images, "backbone_may_have_seen": False}
    # held out of --data: the codec never trains on them, but a backbone brought with weights may
    # have been trained on these very images (then this top-1 overstates accuracy on new ones)
    return {"source": "held out of --data", "images": images, "backbone_may_have_seen": weights != "random"}


def _classes_of(dataset) -> list[str] | None:
    while isinstance(dataset, torch.utils.data.Subset) and not getattr(dataset, "classes", None):
        dataset = dataset.dataset
    classes = getattr(dataset, "classes", None)
    return list(classes) if classes else None


@torch.no_grad()
def _nonnegative(head: nn.Module, dataset, data_config) -> bool:
    """Is the feature post-ReLU (so the decoder may end in ReLU, as the paper's does)?"""
    n = min(16, len(dataset))
    x = torch.stack([dataset[i][0] for i in range(n)])
    f = head(BatchTransform(data_config["mean"], data_config["std"], augment=False)(x))
    return bool((f >= 0).all())


class _StopRequest:
    """SIGINT during a fit (main thread, one process): finish the batch, checkpoint, then stop.
    A second Ctrl-C stops at once (KeyboardInterrupt), as without the handler."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_StopRequest":
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)


class _Trainer:
    """Phases and epochs around the loop: optimizers, checkpoints and the run directory's files."""

    def __init__(self, config: FitConfig, run_config: RunConfig, run_dir: RunDir, model: nn.Module,
                 pipeline: SplitPipeline, train_set, val_set, callback: Callback, rank: int, world: int,
                 features: FeatureCache | None = None):
        self.c, self.rc, self.dir, self.model, self.pipeline = config, run_config, run_dir, model, pipeline
        self.features = features  # phase codec reads the head's features from it (loop.train_epoch)
        self.train_set, self.val_set, self.cb = train_set, val_set, callback
        self.rank, self.world = rank, world
        self.device = torch.device(config.device)
        dc = run_config.data_config
        self.train_tf = BatchTransform(dc["mean"], dc["std"], augment=config.augment)
        self.eval_tf = BatchTransform(dc["mean"], dc["std"], augment=False)
        self.epochs: list[dict[str, Any]] = []
        self.validation: dict[str, Any] = {}
        # the uncut model as it was before fine-tuning, for distillation in phase joint
        distills = config.distill > 0 or config.distill_features > 0
        self.teacher = copy.deepcopy(model).eval() if distills and config.joint_epochs > 0 else None
        self.probe = distill_points(model, pipeline.tail, config.distill_at) if config.distill_features > 0 else ()
        self.plan = [("codec", i) for i in range(config.codec_epochs)] + [("joint", i) for i in range(config.joint_epochs)]
        # mid-epoch checkpoints hold this process's generators: one process only (under torchrun,
        # every rank's would be needed), so torchrun runs checkpoint at epoch ends
        self.mid_epoch = world == 1
        self._since, self._last = 0, time.monotonic()

    def run(self) -> FitResult:
        t0 = time.perf_counter()
        # tiny gradients through a trained backbone become denormal floats, which x86 CPUs process
        # 10-100x slower; flushing them to zero changes nothing measurable in training
        torch.set_flush_denormal(True)
        self.device = distributed.init(self.world, self.device, self.pipeline)
        start, state, position = 0, None, None
        if self.c.resume:
            state = self._load_checkpoint()
            start, self.epochs, position = state["step"], list(state["epochs"]), state.get("position")
        elif self.rank == 0:
            if self.c.overwrite and not self.dir.is_empty():
                self.dir.clear()
            self.dir.write_start(self.rc, self.model.state_dict())
        phase = optimizer = scheduler = forward = None
        with _StopRequest(self.mid_epoch) as stop:
            for step in range(start, len(self.plan)):
                ph, epoch = self.plan[step]
                if ph != phase:
                    phase = ph
                    epochs = sum(1 for q, _ in self.plan if q == ph)
                    steps = epochs * len(make_loader(self.train_set, self.c.batch_size, shuffle=True, seed=self.c.seed,
                                                     drop_last=True, distributed=self.world > 1))
                    optimizer, scheduler = make_optimizer(set_trainable(self.pipeline, ph),
                                                          self.c.lr if ph == "codec" else self.c.joint_lr,
                                                          self.c.lr_schedule, steps)
                    forward = distributed.wrap(self.pipeline, self.world, self.device)
                    if state is not None and state["phase"] == ph:
                        optimizer.load_state_dict(state["optimizer"])
                        scheduler.load_state_dict(state["scheduler"])
                    self.cb("phase", {"phase": ph, "epochs": epochs})
                torch.manual_seed(self.c.seed * 1000 + step)
                spec = EpochSpec(ph, epoch, step, self.c.seed, self.c.batch_size, self.c.distill,
                                 self.c.distill_temperature, self.c.amp, self.rank, self.world, self.c.lmbda,
                                 self.c.distill_features, self.probe)
                after = lambda pos, ph=ph, step=step, epoch=epoch: self._after_batch(
                    pos, stop, ph, epoch, step, optimizer, scheduler)
                images = self.features if self.features is not None else self.train_set
                record = train_epoch(spec, self.pipeline, forward, self.teacher, images, self.train_tf,
                                     optimizer, scheduler, self.device, self.cb, resume=position, after_batch=after)
                position = None
                if self.rank == 0:
                    record.update(validate(self.pipeline, self.val_set, self.eval_tf, self.device))
                    self.epochs.append(record)
                    self._save_checkpoint(step + 1, ph, optimizer, scheduler)
                    self.cb("epoch", record)
                distributed.barrier(self.world)
                if stop.requested and step + 1 < len(self.plan):  # Ctrl-C during validation: saved just now
                    self._stopped(ph, epoch, None)
        if self.rank == 0:
            self.validation.update(self._after_fit())  # the code's own step: tables, a length table (codec.kinds)
            learned = self._learned()
            if learned:
                self.validation["learned"] = learned
                self.validation["input_checks"] = input_checks(
                    learned["cut_top1"], learned["uncut_top1"], self.validation.get("images") or 0,
                    self.rc.num_classes, self.rc.data_config.get("recorded_top1"),
                    self.rc.data_config.get("normalisation"))
                self.cb("learned", learned)
            seconds = time.perf_counter() - t0  # the whole fit, the step after training included
            self.dir.write_final(self.pipeline.codec.state_dict(),
                                 self.model.state_dict() if self.c.joint_epochs > 0 else None, seconds, self.epochs,
                                 self.validation)
        else:
            seconds = time.perf_counter() - t0
        return FitResult(str(self.dir), self.rc, self.epochs, seconds, self.validation,
                         self.features.info if self.features is not None else None)

    def _after_fit(self) -> dict[str, Any]:
        """The preset's step after training (codec.kinds ``after_fit``) over head features streamed
        from the training images (or the feature cache) and the validation images, in eval mode."""
        p = self.pipeline
        kind = get_preset(self.rc.codec.preset).code
        was_training = p.training
        p.eval()
        try:
            with torch.no_grad():
                return kind.after_fit(p.codec, p.channel, p.tail, lambda: self._train_features(kind.table_images),
                                      self._val_batches, self.cb)
        finally:
            p.train(was_training)

    @torch.no_grad()
    def _learned(self) -> dict[str, Any]:
        """Did the codec learn? The cut model's noiseless validation top-1 against chance and against the
        uncut model on the same images (``learned_check``); {} without validation images."""
        last = self.epochs[-1] if self.epochs else {}
        if "val_top1_noiseless" not in last:
            return {}
        p = self.pipeline
        was_training = p.training
        p.eval()
        hits = n = 0
        try:
            for f, y in self._val_batches():
                hits += int((p.tail(f).argmax(1) == y).sum())
                n += len(y)
        finally:
            p.train(was_training)
        return learned_check(last["val_top1_noiseless"], hits / max(n, 1), self.rc.num_classes)

    def _train_features(self, limit: int):
        """Head features of the first ``limit`` training images, batch by batch."""
        if self.features is not None:
            n = min(limit, len(self.features))
            for start in range(0, n, 256):
                yield self.features.batch(torch.arange(start, min(start + 256, n)), self.device)[0]
            return
        subset = torch.utils.data.Subset(self.train_set, range(min(limit, len(self.train_set))))
        for x, _ in make_loader(subset, 256, shuffle=False, seed=0):
            yield self.pipeline.head(self.eval_tf(x).to(self.device))

    def _val_batches(self):
        """(head features, labels) of the validation images, batch by batch."""
        if self.val_set is None:
            return
        for x, y in make_loader(self.val_set, 256, shuffle=False, seed=0):
            yield self.pipeline.head(self.eval_tf(x).to(self.device)), y.to(self.device)

    def _after_batch(self, position, stop: _StopRequest, phase: str, epoch: int, step: int,
                     optimizer, scheduler) -> None:
        """After each optimizer step: a checkpoint when one is due (steps, minutes, Ctrl-C)."""
        if not self.mid_epoch:
            return
        self._since += 1
        every, minutes = self.c.checkpoint_steps, self.c.checkpoint_minutes
        due = (every is not None and self._since >= every) or \
              (minutes is not None and time.monotonic() - self._last >= 60 * minutes)
        if not (due or stop.requested):
            return
        pos = position()
        self._save_checkpoint(step, phase, optimizer, scheduler, pos)
        self.cb("checkpoint", {"phase": phase, "epoch": epoch, "batch": pos["batch"], "run": str(self.dir)})
        if stop.requested:
            self._stopped(phase, epoch, pos["batch"])

    def _stopped(self, phase: str, epoch: int, batch: int | None) -> None:
        """After the checkpoint: tell the callback where (batch None: at the epoch's end), then stop."""
        self.cb("interrupted", {"phase": phase, "epoch": epoch, "batch": batch, "run": str(self.dir)})
        raise KeyboardInterrupt

    def _save_checkpoint(self, step: int, phase: str, optimizer, scheduler,
                         position: dict[str, Any] | None = None) -> None:
        """The run's state at an epoch end (position None) or after a batch within epoch ``step``."""
        update_tables(self.pipeline.codec)
        state = {"step": step, "phase": phase, "optimizer": optimizer.state_dict(), "position": position,
                 "scheduler": scheduler.state_dict(), "codec": self.pipeline.codec.state_dict(),
                 "epochs": self.epochs, "backbone": self.model.state_dict() if phase == "joint" else None}
        self.dir.save_checkpoint(state, self.epochs, self.validation)
        self._since, self._last = 0, time.monotonic()

    def _load_checkpoint(self) -> dict[str, Any]:
        state = self.dir.load_checkpoint(self.device)
        self.pipeline.codec.load_state_dict(state["codec"])
        if state.get("backbone") is not None:
            self.model.load_state_dict(state["backbone"])
        return state
