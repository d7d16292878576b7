"""`bnpp fit`: train the encoder/decoder pair at a split point under a simulated channel.

Phase "codec" (BottleNet++ step 2): the backbone is frozen (its BatchNorm in eval mode, its
parameters without gradients) and only the codec trains, Adam, cross-entropy (+ optional
distillation from the uncut model's logits), the channel condition drawn per mini-batch over the
training range. The frozen head runs under ``torch.no_grad`` (no autograd graph, no activations
kept, and no parameter gradients anywhere in the backbone); only codec and tail see autograd.
Phase "joint" (step 3, optional): everything fine-tunes at a lower learning rate; the backbone's
BatchNorm statistics stay frozen (small batches would only add noise to them).

Runs on CPU, one GPU (bf16 autocast with ``amp``), or several processes under ``torchrun``
(DistributedDataParallel: gloo on CPU, nccl on GPU; rank 0 writes the run directory). The loop
never prints: progress goes to a callback. After every epoch a checkpoint makes the run resumable.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import BackboneConfig, load_backbone
from .codec import CodecConfig, build_codec, plan_codec
from .batching import BatchTransform, make_loader
from .data import check_labels, load_dataset, split_train_val
from .errors import BnppError, CodecError, RunError
from .files import atomic_write, write_json
from .pipeline import (BACKBONE_FILE, CODEC_FILE, CONFIG_FILE, FINETUNED_FILE, METRICS_FILE, ChannelConfig,
                       RunConfig, SplitPipeline)
from .split import split_model, trace_model


@dataclass
class FitConfig:
    backbone: BackboneConfig
    split: str
    data: str  # training images (.npz, ImageFolder, or a torchvision dataset name)
    out: str  # run directory
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    ratio: float | None = 64.0  # bandwidth reduction C H W / (C' H' W'); or give code_channels
    code_channels: int | None = None
    spatial_reduction: bool | None = None  # None: plan_codec's rule (bnpp: also for thin codes, C/ratio < 4)
    preset: str = "bnpp"  # codec architecture; "bottlenetpp" is the paper's
    hidden_channels: int | None = None  # bnpp preset: width of the extra layer (None: the preset's default)
    encoder_blocks: int | None = None  # bnpp preset: residual blocks in the encoder (None: the preset's default)
    val_data: str | None = None  # held-out images; default: val_fraction of --data
    val_fraction: float = 0.1
    data_root: str | None = None  # where torchvision datasets live / are downloaded
    limit: int | None = None  # use only the first N training images (quick runs)
    codec_epochs: int = 10
    joint_epochs: int = 0
    lr: float | None = None  # Adam, phase codec; None: the preset's recipe (RECIPES)
    joint_lr: float = 1e-5  # fine-tuning everything: 10x below the paper's codec lr
    lr_schedule: str | None = None  # "cosine" (per step, to 0 over each phase) or "constant"; None: the recipe
    batch_size: int | None = None  # per process; None: the preset's recipe
    distill: float | None = None  # weight of KL(uncut model || pipeline); None: the preset's recipe
    distill_temperature: float | None = None  # softmax temperature T of that KL (scaled by T^2); None: recipe
    augment: bool = True  # random crop + flip
    device: str = "cpu"
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    seed: int = 0
    resume: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Training recipe of each codec preset, used where FitConfig leaves a field None.
# bottlenetpp: the paper's (constant Adam 1e-4, batch 32, cross-entropy only). bnpp: what won in
# benchmarks/codec_ablation.py and benchmarks/rate_accuracy.py: 10x higher lr (the codec is small and
# starts from scratch) decayed to 0 by a cosine schedule, and distillation from the uncut model's
# logits at temperature 4, which keeps the cut model close to the one brought.
RECIPES: dict[str, dict[str, float | int | str]] = {
    "bottlenetpp": {"lr": 1e-4, "batch_size": 32, "distill": 0.0, "distill_temperature": 1.0, "lr_schedule": "constant"},
    "bnpp": {"lr": 1e-3, "batch_size": 64, "distill": 1.0, "distill_temperature": 4.0, "lr_schedule": "cosine"},
}
LR_SCHEDULES = ("cosine", "constant")


def scheduled_lr(base: float, schedule: str, step: int, steps: int) -> float:
    """Learning rate at optimizer step ``step`` of ``steps`` in a phase: constant, or cosine
    decay from ``base`` to 0 (Loshchilov & Hutter, SGDR, without restarts)."""
    if schedule == "constant" or steps <= 1:
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


def distillation_loss(logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(logits / T)), batch mean (Hinton et al., 2015: the
    T^2 keeps the gradient scale independent of T)."""
    t = float(temperature)
    return t * t * F.kl_div(F.log_softmax(logits.float() / t, 1), F.log_softmax(teacher.float() / t, 1),
                            log_target=True, reduction="batchmean")


def resolve_recipe(config: FitConfig) -> FitConfig:
    """Fill the fields left None from the preset's recipe (explicit values always win)."""
    from dataclasses import replace

    recipe = RECIPES.get(config.preset, RECIPES["bnpp"])
    return replace(config, **{k: v for k, v in recipe.items() if getattr(config, k) is None})


@dataclass
class FitResult:
    run: str
    config: RunConfig
    epochs: list[dict[str, Any]]
    seconds: float


Callback = Callable[[str, dict[str, Any]], None]  # (event, info): "phase", "epoch_start", "batch", "epoch"


def _noop(event: str, info: dict[str, Any]) -> None:
    pass


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world


def fit_codec(config: FitConfig, callback: Callback = _noop) -> FitResult:
    """Validate everything, then train; the run directory appears only once the inputs are sound."""
    rank, world = _dist_info()
    config = resolve_recipe(config)
    out = Path(config.out)
    if config.resume and not (out / CONFIG_FILE).is_file():
        raise RunError(f"cannot resume: '{out}' is not a bnpp run directory (no {CONFIG_FILE})")
    if not config.resume and out.exists() and any(out.iterdir()):
        raise RunError(f"run directory '{out}' already exists and is not empty",
                       hint="pass --resume to continue it, or choose another --out")
    _check_numbers(config)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BnppError(f"--device {config.device}: CUDA is not available on this machine", hint="use --device cpu")
    channel = config.channel.build()
    torch.manual_seed(config.seed)  # a random-init backbone is reproducible too
    backbone = load_backbone(config.backbone)
    saved = _read_saved_config(out) if config.resume else None
    if saved is not None:
        _restore_backbone(out, saved, config, backbone.model)
    input_size = backbone.input_size
    traced = trace_model(backbone.model, input_size, config.backbone.model)
    point = traced.find(config.split)
    if len(point.shape) != 3:
        raise CodecError(f"split point '{point.name}' has a token feature {point.shape}: only C x H x W conv "
                         "features are supported yet", hint="pick a conv split point (see `bnpp profile`)")
    train_set = load_dataset(config.data, input_size=tuple(input_size[1:]), train=True, root=config.data_root)
    num_classes = backbone.num_classes
    check_labels(train_set, num_classes)
    if config.val_data:
        val_set = load_dataset(config.val_data, input_size=tuple(input_size[1:]), train=False, root=config.data_root)
        check_labels(val_set, num_classes)
    else:
        train_set, val_set = split_train_val(train_set, config.val_fraction, config.seed)
    if config.limit is not None:
        train_set = torch.utils.data.Subset(train_set, range(min(config.limit, len(train_set))))
    head, tail = split_model(traced, point)
    nonneg = _nonnegative(head, train_set, backbone.data_config)
    codec_cfg = plan_codec(point.shape, ratio=config.ratio if config.code_channels is None else None,
                           code_channels=config.code_channels, spatial_reduction=config.spatial_reduction,
                           preset=config.preset, feature_nonnegative=nonneg,
                           hidden_channels=config.hidden_channels, encoder_blocks=config.encoder_blocks)
    if saved is not None:
        _check_same_codec(out, saved, codec_cfg)
    torch.manual_seed(config.seed)
    codec = build_codec(codec_cfg)
    pipeline = SplitPipeline(head, codec, channel, tail).to(device)
    classes = _classes_of(train_set)
    run_config = RunConfig(
        model=config.backbone.model, create_kwargs=backbone.create_kwargs, source_weights=backbone.weights,
        data_config=backbone.data_config, split=point.name, feature_shape=list(point.shape),
        codec=codec_cfg.to_dict(), channel=asdict(config.channel), classes=classes, num_classes=num_classes,
        fit=config.to_dict(),
    )
    trainer = _Trainer(config, run_config, backbone.model, pipeline, train_set, val_set, callback, rank, world)
    return trainer.run()


def _read_saved_config(out: Path) -> dict[str, Any]:
    import json

    return json.loads((out / CONFIG_FILE).read_text())


def _restore_backbone(out: Path, saved: dict[str, Any], config: FitConfig, model: nn.Module) -> None:
    """Resume on the very backbone the run started with, and refuse a run of another model/split/codec."""
    from .backbone import read_state_dict

    fit = saved.get("fit", {})
    asked = {"model": config.backbone.model, "split": config.split, "preset": config.preset,
             "channel": config.channel.name}
    found = {"model": saved.get("model"), "split": fit.get("split"), "preset": fit.get("preset"),
             "channel": saved.get("channel", {}).get("name")}
    for key, value in asked.items():
        if found[key] != value:
            raise RunError(f"cannot resume '{out}': it was fitted with {key} {found[key]!r}, not {value!r}")
    model.load_state_dict(read_state_dict(out / BACKBONE_FILE), strict=True)


def _check_same_codec(out: Path, saved: dict[str, Any], codec_cfg: CodecConfig) -> None:
    """Resume only into the codec the run started with (other options, or another bnpp version's
    defaults, would build a codec its checkpoint does not fit)."""
    diff = CodecConfig.from_dict(saved["codec"]).differences(codec_cfg)  # from_dict fills defaults
    if diff:
        have = ", ".join(f"{k} {was!r}" for k, (was, _) in diff.items())
        give = ", ".join(f"{now!r}" for was, now in diff.values())
        raise RunError(f"cannot resume '{out}': its codec has {have}, these options give {give}",
                       hint=f"pass the options it was fitted with (see {out / CONFIG_FILE})")


def _check_numbers(c: FitConfig) -> None:
    bad = [(k, v) for k, v in (("--codec-epochs", c.codec_epochs), ("--joint-epochs", c.joint_epochs)) if v < 0]
    bad += [(k, v) for k, v in (("--lr", c.lr), ("--joint-lr", c.joint_lr), ("--batch-size", c.batch_size)) if not v > 0]
    bad += [("--distill", c.distill)] if c.distill < 0 else []
    bad += [("--distill-temperature", c.distill_temperature)] if not c.distill_temperature > 0 else []
    if c.lr_schedule not in LR_SCHEDULES:
        raise BnppError(f"unknown --lr-schedule {c.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
    bad += [("--limit", c.limit)] if c.limit is not None and c.limit < 1 else []
    if bad:
        raise BnppError(f"{bad[0][0]} {bad[0][1]} is out of range", hint="epochs >= 0; lr, batch size > 0")
    if c.codec_epochs + c.joint_epochs == 0:
        raise BnppError("nothing to train: --codec-epochs and --joint-epochs are both 0")


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


class _Trainer:
    def __init__(self, config: FitConfig, run_config: RunConfig, model: nn.Module, pipeline: SplitPipeline,
                 train_set, val_set, callback: Callback, rank: int, world: int):
        self.c, self.rc, self.model, self.pipeline = config, run_config, model, pipeline
        self.train_set, self.val_set, self.cb = train_set, val_set, callback
        self.rank, self.world = rank, world
        self.out = Path(config.out)
        self.device = torch.device(config.device)
        dc = run_config.data_config
        self.train_tf = BatchTransform(dc["mean"], dc["std"], augment=config.augment)
        self.eval_tf = BatchTransform(dc["mean"], dc["std"], augment=False)
        self.epochs: list[dict[str, Any]] = []
        # the uncut model as it was before fine-tuning, for distillation in phase joint
        self.teacher = copy.deepcopy(model).eval() if config.distill > 0 and config.joint_epochs > 0 else None

    # ---- setup --------------------------------------------------------------------------------
    def _init_dist(self) -> None:
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
                self.pipeline.to(self.device)

    def _phase_plan(self) -> list[tuple[str, int]]:
        plan = [("codec", i) for i in range(self.c.codec_epochs)]
        return plan + [("joint", i) for i in range(self.c.joint_epochs)]

    def _set_trainable(self, phase: str) -> list[nn.Parameter]:
        p = self.pipeline
        joint = phase == "joint"
        for module in (p.head, p.tail):
            for param in module.parameters():
                param.requires_grad_(joint)
        p.head.eval()
        p.tail.eval()  # frozen BN statistics in both phases
        p.codec.train()
        return [q for q in p.parameters() if q.requires_grad]

    # ---- main loop ----------------------------------------------------------------------------
    def run(self) -> FitResult:
        t0 = time.perf_counter()
        # tiny gradients through a trained backbone become denormal floats, which x86 CPUs process
        # 10-100x slower; flushing them to zero changes nothing measurable in training
        torch.set_flush_denormal(True)
        self._init_dist()
        start, state = 0, None
        plan = self._phase_plan()
        if self.c.resume:
            state = self._load_checkpoint()
            start, self.epochs = state["step"], list(state["epochs"])
        elif self.rank == 0:
            self._write_start()
        phase, optimizer, ddp = None, None, None
        for step in range(start, len(plan)):
            ph, epoch = plan[step]
            if ph != phase:
                phase = ph
                params = self._set_trainable(ph)
                optimizer = torch.optim.Adam(params, lr=self.c.lr if ph == "codec" else self.c.joint_lr)
                ddp = self._wrap(ph)
                if state is not None and state["phase"] == ph:
                    optimizer.load_state_dict(state["optimizer"])
                self.cb("phase", {"phase": ph, "epochs": sum(1 for q, _ in plan if q == ph)})
            torch.manual_seed(self.c.seed * 1000 + step)
            record = self._train_epoch(ph, epoch, step, ddp, optimizer)
            if self.rank == 0:
                record.update(self._validate())
                self.epochs.append(record)
                self._save_checkpoint(step + 1, ph, optimizer)
                self.cb("epoch", record)
            if self.world > 1:
                torch.distributed.barrier()
        seconds = time.perf_counter() - t0
        if self.rank == 0:
            self._write_final(seconds)
        return FitResult(str(self.out), self.rc, self.epochs, seconds)

    def _wrap(self, phase: str) -> nn.Module:
        if self.world == 1:
            return self.pipeline
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(self.pipeline, device_ids=ids)

    def _train_epoch(self, phase: str, epoch: int, step: int, ddp: nn.Module, optimizer) -> dict[str, Any]:
        loader = make_loader(self.train_set, self.c.batch_size, shuffle=True, seed=self.c.seed,
                             drop_last=True, distributed=self.world > 1)
        loader.set_epoch(step)
        gen = torch.Generator(device=self.device).manual_seed(self.c.seed * 7919 + step * 31 + self.rank)
        aug_gen = torch.Generator().manual_seed(self.c.seed * 104729 + step * 17 + self.rank)
        channel = self.pipeline.channel
        total, correct, loss_sum, seen = len(loader), 0, 0.0, 0
        phase_epochs = sum(1 for q, _ in self._phase_plan() if q == phase)
        base_lr = self.c.lr if phase == "codec" else self.c.joint_lr
        self.cb("epoch_start", {"phase": phase, "epoch": epoch, "batches": total})
        t0 = time.perf_counter()
        amp = self.c.amp and self.device.type == "cuda"
        for i, (x, y) in enumerate(loader):
            x = self.train_tf(x, generator=aug_gen).to(self.device, non_blocking=True)
            y = y.to(self.device)
            param = channel.sample_param(x.shape[0], generator=gen, device=self.device)
            lr = scheduled_lr(base_lr, self.c.lr_schedule, epoch * total + i, phase_epochs * total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                if phase == "codec":
                    with torch.no_grad():
                        f = self.pipeline.head(x)
                        teacher = self.pipeline.tail(f) if self.c.distill > 0 else None
                    logits = ddp(f, param, gen, True)
                else:
                    with torch.no_grad():
                        teacher = self.teacher(x) if self.teacher is not None else None
                    logits = ddp(x, param, gen)
                loss = F.cross_entropy(logits.float(), y)
                if teacher is not None:
                    loss = loss + self.c.distill * distillation_loss(logits, teacher, self.c.distill_temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = y.shape[0]
            seen += n
            loss_sum += float(loss.detach()) * n
            correct += int((logits.argmax(1) == y).sum())
            if self.rank == 0:
                self.cb("batch", {"step": i + 1, "batches": total, "loss": loss_sum / seen, "acc": correct / seen,
                                  "images_per_s": seen * self.world / (time.perf_counter() - t0)})
        return {"phase": phase, "epoch": epoch, "train_loss": loss_sum / max(seen, 1),
                "train_top1": correct / max(seen, 1), "seconds": time.perf_counter() - t0,
                "images": seen * self.world}

    @torch.no_grad()
    def _validate(self) -> dict[str, Any]:
        """Top-1 on the validation images: noiseless link, and at the worst training condition."""
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        p = self.pipeline
        p.eval()
        channel = p.channel
        worst = float(channel.param_range[1]) if hasattr(channel, "param_range") else 0.0
        gen = torch.Generator(device=self.device).manual_seed(12345)
        hits = {"val_top1_noiseless": 0, "val_top1_worst": 0}
        n = 0
        for x, y in make_loader(self.val_set, 256, shuffle=False, seed=0):
            x, y = self.eval_tf(x).to(self.device), y.to(self.device)
            f = p.head(x)
            hits["val_top1_noiseless"] += int((p.from_features(f, 0.0).argmax(1) == y).sum())
            hits["val_top1_worst"] += int((p.from_features(f, worst, gen).argmax(1) == y).sum())
            n += y.shape[0]
        p.codec.train()
        out: dict[str, Any] = {k: v / n for k, v in hits.items()}
        out["val_worst_condition"] = channel.condition_from_param(worst) if worst else None
        return out

    # ---- files --------------------------------------------------------------------------------
    def _write_start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / CONFIG_FILE, self.rc.to_dict())
        _save_tensors(self.out / BACKBONE_FILE, self.model.state_dict())

    def _save_checkpoint(self, step: int, phase: str, optimizer) -> None:
        state = {"step": step, "phase": phase, "optimizer": optimizer.state_dict(),
                 "codec": self.pipeline.codec.state_dict(), "epochs": self.epochs,
                 "backbone": self.model.state_dict() if phase == "joint" else None}
        atomic_write(self.out / "checkpoint" / "state.pt", lambda tmp: torch.save(state, tmp))
        write_json(self.out / METRICS_FILE, {"status": "running", "epochs": self.epochs})

    def _load_checkpoint(self) -> dict[str, Any]:
        path = self.out / "checkpoint" / "state.pt"
        if not path.is_file():
            if (self.out / CODEC_FILE).is_file():  # the fit finished: its checkpoint was removed then
                raise RunError(f"cannot resume '{self.out}': its fit finished, there is no checkpoint to go on "
                               f"from", hint="to train longer, start a new run with a new --out")
            raise RunError(f"cannot resume '{self.out}': no checkpoint (no epoch finished yet)",
                           hint="delete the directory and start again")
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.pipeline.codec.load_state_dict(state["codec"])
        if state.get("backbone") is not None:
            self.model.load_state_dict(state["backbone"])
        return state

    def _write_final(self, seconds: float) -> None:
        _save_tensors(self.out / CODEC_FILE, self.pipeline.codec.state_dict())
        if self.c.joint_epochs > 0:
            _save_tensors(self.out / FINETUNED_FILE, self.model.state_dict())
        write_json(self.out / METRICS_FILE, {"status": "done", "seconds": seconds, "epochs": self.epochs})
        shutil.rmtree(self.out / "checkpoint", ignore_errors=True)


def _save_tensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
