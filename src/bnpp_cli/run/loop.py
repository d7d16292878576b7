"""The training loop of `bnpp fit`, and validation: no files, no printing, no process groups.

Phase "codec" (BottleNet++ step 2): the backbone is frozen (its BatchNorm in eval mode, its
parameters without gradients) and only the codec trains, Adam, cross-entropy (+ optional
distillation from the uncut model's logits), the channel condition drawn per mini-batch over the
training range. The frozen head runs under ``torch.no_grad`` (no autograd graph, no activations
kept, and no parameter gradients anywhere in the backbone); only codec and tail see autograd.
Phase "joint" (step 3, optional): everything fine-tunes at a lower learning rate; the backbone's
BatchNorm statistics stay frozen (small batches would only add noise to them).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..codec.entropy import update_tables
from ..data.batching import BatchTransform, make_loader
from ..errors import RunError
from .features import FeatureCache

Callback = Callable[[str, dict[str, Any]], None]  # (event, info): "phase", "epoch_start", "batch", "epoch",
# "checkpoint", "interrupted"


def scheduled_lr(base: float, schedule: str, step: int, steps: int) -> float:
    """Learning rate at optimizer step ``step`` of ``steps`` in a phase: constant, or cosine
    decay from ``base`` to 0 (Loshchilov & Hutter, SGDR, without restarts)."""
    return base * lr_factor(schedule, step, steps)


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """The multiplier of the base lr at ``step`` (the lambda of torch's LambdaLR)."""
    if schedule == "constant" or steps <= 1:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


def make_optimizer(params, lr: float, schedule: str, steps: int):
    """Adam and its per-step schedule (torch.optim.lr_scheduler.LambdaLR; its state is checkpointed)."""
    optimizer = torch.optim.Adam(params, lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(schedule, step, steps))
    return optimizer, scheduler


def distillation_loss(logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(logits / T)), batch mean (Hinton et al., 2015: the
    T^2 keeps the gradient scale independent of T)."""
    t = float(temperature)
    return t * t * F.kl_div(F.log_softmax(logits.float() / t, 1), F.log_softmax(teacher.float() / t, 1),
                            log_target=True, reduction="batchmean")


def feature_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """|| g - g_t ||^2 / || g_t ||^2 over the batch: the relative squared error of the tail's
    features (FitNets, Romero et al., 2015, at the classifier's input), free of their scale."""
    s, t = student.float().flatten(1), teacher.float().flatten(1)
    return (s - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12)


def classifier_name(model: nn.Module, tail: nn.Module) -> str:
    """The qualified name of the backbone's classifier (timm's pretrained_cfg["classifier"]) in the tail."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    name = name[0] if isinstance(name, (list, tuple)) and name else name
    try:
        if isinstance(name, str) and name:
            tail.get_submodule(name)
            return name
    except AttributeError:
        pass
    raise RunError(f"`distill_features` matches the input of the classifier, and this tail has no classifier "
                   f"module {name!r} (timm's pretrained_cfg['classifier'])",
                   hint="use `distill_features` 0, or name tail modules with `distill_at`")


def distill_points(model: nn.Module, tail: nn.Module, names: list[str] | None) -> tuple[str, ...]:
    """The tail modules whose inputs feature distillation matches: ``names`` (checked: each is called
    exactly once in the tail's forward, so its input is one tensor per pass, and exists in the uncut
    model, the teacher of phase joint), or the classifier where None. The calls are read from the
    tail's FX graph (bnpp's tails are traced); a tail without one offers its leaf modules, unchecked
    for repeated calls."""
    if names is None:
        return (classifier_name(model, tail),)
    if not names:
        raise RunError("`distill_at` names no module", hint="give one or more, comma-separated")
    graph = getattr(tail, "graph", None)
    calls = [n.target for n in graph.nodes if n.op == "call_module"] if graph is not None else \
        [q for q, m in tail.named_modules() if q and not any(True for _ in m.children())]
    entries: list[str] = []  # the first module called in each top-level part: the stages' inputs
    for c in calls:
        entries += [c] if all(e.split(".")[0] != c.split(".")[0] for e in entries) else []
    for name in names:
        try:
            model.get_submodule(name)
            ok = calls.count(name) == 1
        except AttributeError:
            ok = False
        if not ok:
            raise RunError(f"`distill_at` {name!r} is not a module this tail calls once; valid: any called module, "
                           f"e.g. the stages' first: {', '.join(entries[:8])}")
    return tuple(dict.fromkeys(names))


class _Probe:
    """The input of one module at its last forward (a forward pre-hook): the tail's features there."""

    def __init__(self, module: nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, args: tuple) -> None:
        self.value = args[0]

    def take(self) -> torch.Tensor:
        value, self.value = self.value, None
        if value is None:
            raise RunError("a `distill_at` module did not run in this forward pass: no features to distil")
        return value


def set_trainable(pipeline: nn.Module, phase: str) -> list[nn.Parameter]:
    """Phase codec: only the codec learns; phase joint: everything. BN of the backbone stays frozen."""
    joint = phase == "joint"
    for module in (pipeline.head, pipeline.tail):
        for param in module.parameters():
            param.requires_grad_(joint)
    pipeline.head.eval()
    pipeline.tail.eval()  # frozen BN statistics in both phases
    pipeline.codec.train()
    return [q for q in pipeline.parameters() if q.requires_grad]


@dataclass
class EpochSpec:
    """What one epoch of training needs besides the model and the data."""

    phase: str  # "codec" | "joint"
    epoch: int  # within the phase
    step: int  # the epoch's index over both phases (seeds derive from it)
    seed: int
    batch_size: int
    distill: float
    distill_temperature: float
    amp: bool
    rank: int = 0
    world: int = 1
    lmbda: float = 0.0  # rate weight of an entropy code: loss += lmbda x bits per image
    distill_features: float = 0.0  # weight of the mean feature_distillation_loss over distill_at
    distill_at: tuple[str, ...] = ()  # modules (in the tail and the teacher) whose inputs are matched


def train_epoch(spec: EpochSpec, pipeline: nn.Module, forward: nn.Module, teacher: nn.Module | None,
                train_set, transform: BatchTransform, optimizer, scheduler, device: torch.device,
                callback: Callback, resume: dict[str, Any] | None = None,
                after_batch: Callable[[Callable[[], dict[str, Any]]], None] | None = None) -> dict[str, Any]:
    """One pass over the training images; returns the epoch's record. ``forward`` is the pipeline
    or its DDP wrapper; ``teacher`` the uncut model (phase joint with distillation).

    Mid-epoch durability: after every optimizer step, ``after_batch(position)`` is called, where
    ``position()`` returns the epoch's state at that batch boundary (batches done, the generators'
    states, the running sums). ``resume=position`` continues the epoch from there: the same batches,
    the same noise and augmentation draws, so the epoch ends exactly as an uninterrupted one.

    ``train_set`` may be a features.FeatureCache of the training images (phase codec, no
    augmentation): the same batches, noise draws and steps, with the frozen head's forward (and the
    teacher's) read from it instead of computed."""
    cache = train_set if isinstance(train_set, FeatureCache) else None
    if cache is not None and spec.phase != "codec":
        raise RunError("a feature cache serves phase codec only (phase joint trains the head)")
    loader = make_loader(cache.positions if cache is not None else train_set, spec.batch_size, shuffle=True,
                         seed=spec.seed, drop_last=True, distributed=spec.world > 1)
    loader.set_epoch(spec.step)
    gen = torch.Generator(device=device).manual_seed(spec.seed * 7919 + spec.step * 31 + spec.rank)
    aug_gen = torch.Generator().manual_seed(spec.seed * 104729 + spec.step * 17 + spec.rank)
    probes, teacher_probes = _probes(spec, pipeline, teacher, cache)
    start, correct, loss_sum, seen, before_s = _restore(resume, gen, aug_gen, device)
    total, seen0, i, amp = len(loader), seen, start, spec.amp and device.type == "cuda"
    callback("epoch_start", {"phase": spec.phase, "epoch": spec.epoch, "batches": total, "start": start})
    t0 = time.perf_counter()

    def position() -> dict[str, Any]:
        return {"batch": i, "gen": gen.get_state(), "aug": aug_gen.get_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "correct": correct, "loss_sum": loss_sum, "seen": seen,
                "seconds": before_s + time.perf_counter() - t0}

    try:
        for x, y in itertools.islice(loader, start, None):  # the batches already done are skipped
            batch = _Batch(x, y.to(device), cache, transform, aug_gen, device)
            param = pipeline.channel.sample_param(batch.y.shape[0], generator=gen, device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss, logits = _batch_loss(spec, pipeline, forward, teacher, batch, param, gen, probes, teacher_probes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            n = batch.y.shape[0]
            seen += n
            i += 1
            loss_sum += float(loss.detach()) * n
            correct += int((logits.argmax(1) == batch.y).sum())
            if spec.rank == 0:
                callback("batch", {"phase": spec.phase, "epoch": spec.epoch, "step": i, "batches": total,
                                   "images": seen * spec.world, "loss": loss_sum / seen, "acc": correct / seen,
                                   "images_per_s": (seen - seen0) * spec.world / (time.perf_counter() - t0)})
            if after_batch is not None:
                after_batch(position)
    finally:  # also when a checkpoint request stops the epoch: no hook outlives it
        for q in {id(q): q for q in probes + teacher_probes}.values():
            q.handle.remove()
    return {"phase": spec.phase, "epoch": spec.epoch, "train_loss": loss_sum / max(seen, 1),
            "train_top1": correct / max(seen, 1), "seconds": before_s + time.perf_counter() - t0,
            "images": seen * spec.world}


def _probes(spec: EpochSpec, pipeline: nn.Module, teacher: nn.Module | None, cache) -> tuple[list, list]:
    """Feature-distillation probes on the tail's modules and on the teacher's (the same ones in phase
    codec: the teacher is the frozen tail on the uncut features; phase joint: the uncut model)."""
    fd = spec.distill_features > 0
    if fd and cache is not None:
        raise RunError("`distill_features` needs the teacher's tail features; a feature cache holds logits only")
    probes = [_Probe(pipeline.tail.get_submodule(q)) for q in spec.distill_at] if fd else []
    joint_teacher = fd and teacher is not None and spec.phase == "joint"
    teacher_probes = ([_Probe(teacher.get_submodule(q)) for q in spec.distill_at]  # type: ignore[union-attr]
                      if joint_teacher else probes)
    return probes, teacher_probes


def _restore(resume: dict[str, Any] | None, gen, aug_gen, device: torch.device) -> tuple[int, int, float, int, float]:
    """(first batch, correct, loss sum, images seen, seconds before) of a resumed epoch, its generators
    set back; zeros for a fresh one."""
    if resume is None:
        return 0, 0, 0.0, 0, 0.0
    gen.set_state(resume["gen"])
    aug_gen.set_state(resume["aug"])
    torch.set_rng_state(resume["torch"])
    if resume.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(resume["cuda"], device)
    return resume["batch"], resume["correct"], resume["loss_sum"], resume["seen"], resume["seconds"]


class _Batch:
    """One training batch: images x (augmented, on the device), or with a feature cache the head's
    features f and the teacher's logits read from it; labels y."""

    def __init__(self, x, y: torch.Tensor, cache: FeatureCache | None, transform: BatchTransform, aug_gen,
                 device: torch.device):
        self.y, self.f, self.target = y, None, None
        if cache is not None:  # x: the batch's row numbers in the cache
            self.f, self.target = cache.batch(x, device)
            self.x = None
        else:
            self.x = transform(x, generator=aug_gen).to(device, non_blocking=True)


def _batch_loss(spec: EpochSpec, pipeline: nn.Module, forward: nn.Module, teacher: nn.Module | None, b: _Batch,
                param, gen, probes: list, teacher_probes: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits) of one batch: cross-entropy, the distillation terms and the code's rate term."""
    fd = spec.distill_features > 0
    if spec.phase == "codec":
        f, target = b.f, (b.target if spec.distill > 0 else None)
        if f is None:
            with torch.no_grad():
                f = pipeline.head(b.x)
                target = pipeline.tail(f) if spec.distill > 0 or fd else None
        taught = [q.take() for q in teacher_probes] if fd else None  # the same tail ran on the uncut features
        logits = forward(f, param, gen, True)
    else:
        with torch.no_grad():
            target = teacher(b.x) if teacher is not None else None
        taught = [q.take() for q in teacher_probes] if fd and teacher is not None else None
        logits = forward(b.x, param, gen)
    loss = F.cross_entropy(logits.float(), b.y)
    if target is not None and spec.distill > 0:
        loss = loss + spec.distill * distillation_loss(logits, target, spec.distill_temperature)
    if taught is not None:
        fdl = sum(feature_distillation_loss(q.take(), t) for q, t in zip(probes, taught)) / len(probes)
        loss = loss + spec.distill_features * fdl
    return loss + pipeline.codec.rate_loss(spec.lmbda), logits  # an entropy code's rate (0 for the others)


@torch.no_grad()
def validate(pipeline: nn.Module, val_set, transform: BatchTransform, device: torch.device) -> dict[str, Any]:
    """Top-1 on the validation images: noiseless link, and at the worst training condition."""
    if val_set is None or len(val_set) == 0:
        return {}
    pipeline.eval()
    channel = pipeline.channel
    worst = float(channel.param_range[1])
    gen = torch.Generator(device=device).manual_seed(12345)
    hits = {"val_top1_noiseless": 0, "val_top1_worst": 0}
    n, bits = 0, 0.0
    update_tables(pipeline.codec)  # an entropy code's estimate: its integer tables from the density as it is now
    for x, y in make_loader(val_set, 256, shuffle=False, seed=0):
        x, y = transform(x).to(device), y.to(device)
        f = pipeline.head(x)
        hits["val_top1_noiseless"] += int((pipeline.from_features(f, 0.0).argmax(1) == y).sum())
        bits += pipeline.codec.estimated_bits()  # of the noiseless forward just run
        hits["val_top1_worst"] += int((pipeline.from_features(f, worst, gen).argmax(1) == y).sum())
        n += y.shape[0]
    pipeline.codec.train()
    out: dict[str, Any] = {k: v / n for k, v in hits.items()}
    out["val_worst_condition"] = channel.condition_from_param(worst) if worst else None
    out["val_worst_label"] = channel.format_condition(out["val_worst_condition"]) if worst else None  # with its unit
    out["val_images"] = n
    out.update(pipeline.codec.rate_record(bits / n))  # an entropy code's estimate; eval measures the real streams
    return out
