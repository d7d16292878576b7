"""Codec ablation: variants of the bnpp codec and recipe at one split, on the shared resnet18 / CIFAR-10.

The scratch trainer that chose bnpp's default recipe (session 2): one variant per invocation, all
25,000 images of ../shared/data/cifar10/train.npz (no validation split), evaluated on the official
10,000 test images with one noise draw (seed 0); appends one JSON line to
benchmarks/results/codec_ablation.jsonl. Knobs: --hidden (width), --enc-blocks / --dec-blocks
(residual blocks), --spatial (1: stride-2 code), --sched cos (cosine lr), --T (distillation
temperature), --ce / --distill / --hint (loss weights; hint = feature MSE), --tail-lr (also train the
edge half). It uses bnpp's pieces (backbone, split, Encoder/Decoder, channels, loaders) with its own
loop, so variants need no library change; `bnpp fit` is the supported path. Lines with "hidden": null
and "hidden_resolved": 16 ran before the default width became max(64, 4 C') (that commit's
default_hidden_channels); pass --hidden 16 to repeat them.

    python benchmarks/codec_ablation.py --epochs 5 --sched cos --hidden 64 --spatial 1 --T 4 --enc-blocks 1
"""
import argparse, json, math, time, sys
from pathlib import Path
import torch, torch.nn.functional as F
from torch import nn
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from bnpp_cli.backbone import BackboneConfig, load_backbone
from bnpp_cli.split import trace_model, split_model
from bnpp_cli.codec import plan_codec, Encoder, Decoder, ResidualBlock as Res, _down, _up
from bnpp_cli.channels import create_channel
from bnpp_cli.data import load_dataset
from bnpp_cli.batching import BatchTransform, make_loader

RESULTS = REPO / "benchmarks" / "results" / "codec_ablation.jsonl"
if sys.argv[1:] == ["--table"]:  # print the results file as the README's Markdown table, then stop
    print("| variant | split | images | width | enc blocks | dec blocks | spatial | lr schedule | T | trained from | "
          "epochs | fit s | noiseless | PSNR 10 dB | PSNR 20 dB | drop 20 dB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d in map(json.loads, RESULTS.read_text().splitlines()):
        g = d["args"]
        print(f"| {g['tag']} | {g['split']} {g['ratio']:g}x | {g['limit'] or 25000:,} | {d['hidden_resolved']} | "
              f"{g['enc_blocks']} | {g['dec_blocks']} | "
              f"{'yes' if g['spatial'] == 1 else 'no'} | {'cosine' if g['sched'] == 'cos' else 'constant'} | {g['T']:g} | "
              f"{g['train_cond']:g} dB | {g['epochs']} | {d['fit_s']:.0f} | "
              f"{100 * d['noiseless']:.2f} | {100 * d['10dB']:.2f} | {100 * d['20dB']:.2f} | **{d['drop20']:.2f}** |")
    sys.exit(0)
ap = argparse.ArgumentParser()
ap.add_argument("--split", default="layer2"); ap.add_argument("--ratio", type=float, default=64)
ap.add_argument("--channel", default="awgn"); ap.add_argument("--train-cond", type=float, default=10.0)
ap.add_argument("--epochs", type=int, default=5); ap.add_argument("--limit", type=int, default=None)
ap.add_argument("--lr", type=float, default=1e-3); ap.add_argument("--batch", type=int, default=64)
ap.add_argument("--sched", default="const"); ap.add_argument("--hidden", type=int, default=None)
ap.add_argument("--dec-blocks", type=int, default=0); ap.add_argument("--enc-blocks", type=int, default=0)
ap.add_argument("--spatial", type=int, default=-1); ap.add_argument("--distill", type=float, default=1.0)
ap.add_argument("--ce", type=float, default=1.0); ap.add_argument("--hint", type=float, default=0.0)
ap.add_argument("--wd", type=float, default=0.0); ap.add_argument("--tag", default="")
ap.add_argument("--per-sample", type=int, default=0); ap.add_argument("--T", type=float, default=1.0)
ap.add_argument("--threads", type=int, default=2); ap.add_argument("--tail-lr", type=float, default=0.0)
a = ap.parse_args()
torch.set_num_threads(a.threads); torch.set_flush_denormal(True)
SH = str(REPO.parent / "shared")
bb = load_backbone(BackboneConfig("resnet18", checkpoint=f"{SH}/models/resnet18_cifar10.safetensors", num_classes=10, img_size=32))
tr = trace_model(bb.model, bb.input_size, "resnet18"); pt = tr.find(a.split)
head, tail = split_model(tr, pt); head.eval(); tail.eval()
for p in list(head.parameters()) + list(tail.parameters()): p.requires_grad_(False)
cfg = plan_codec(pt.shape, ratio=a.ratio, preset="bnpp", hidden_channels=a.hidden,
                 spatial_reduction=None if a.spatial < 0 else bool(a.spatial))
c, k, s, hid = cfg.in_channels, cfg.code_channels, cfg.spatial_reduction, cfg.hidden_channels
torch.manual_seed(0)
enc = nn.Sequential(nn.Conv2d(c + 1, hid, 3, padding=1, bias=False), nn.BatchNorm2d(hid), nn.ReLU(inplace=True),
                    *[Res(hid) for _ in range(a.enc_blocks)], _down(hid, k, s), nn.BatchNorm2d(k), nn.Sigmoid())
dec = nn.Sequential(_up(k + 1, hid, s), nn.BatchNorm2d(hid), nn.ReLU(inplace=True), *[Res(hid) for _ in range(a.dec_blocks)],
                    nn.Conv2d(hid, c, 3, padding=1), nn.ReLU())
codec = nn.Module(); codec.encoder = Encoder(cfg, enc); codec.decoder = Decoder(cfg, dec)
ch = create_channel(a.channel, a.train_cond)
print("codec", cfg.code_shape, "hidden", hid, "params", sum(p.numel() for p in codec.parameters()), flush=True)
train = load_dataset(f"{SH}/data/cifar10/train.npz", input_size=(32, 32), train=True)
if a.limit: train = torch.utils.data.Subset(train, range(a.limit))
test = load_dataset(f"{SH}/data/cifar10/test.npz", input_size=(32, 32), train=False)
dc = bb.data_config
ttf = BatchTransform(dc["mean"], dc["std"], augment=True); etf = BatchTransform(dc["mean"], dc["std"], augment=False)
import copy
teacher_tail = copy.deepcopy(tail).eval()
groups = [{"params": list(codec.parameters()), "base": a.lr}]
if a.tail_lr:
    for p_ in tail.parameters(): p_.requires_grad_(True)
    groups.append({"params": list(tail.parameters()), "base": a.tail_lr})
opt = torch.optim.AdamW(groups, lr=a.lr, weight_decay=a.wd)
loader = make_loader(train, a.batch, shuffle=True, seed=0, drop_last=True)
total = a.epochs * len(loader); step = 0
gen = torch.Generator().manual_seed(1); ag = torch.Generator().manual_seed(2)
t0 = time.time()
for ep in range(a.epochs):
    loader.set_epoch(ep); codec.train()
    for x, y in loader:
        if a.sched == "cos":
            lr = a.lr * 0.5 * (1 + math.cos(math.pi * step / total))
        elif a.sched == "wcos":
            w = min(1.0, (step + 1) / (0.05 * total)); lr = a.lr * w * 0.5 * (1 + math.cos(math.pi * step / total))
        else: lr = a.lr
        for g in opt.param_groups: g["lr"] = lr * g["base"] / a.lr
        x = ttf(x, generator=ag)
        with torch.no_grad():
            f = head(x); t = teacher_tail(f)
        prm = ch.sample_param(x.shape[0], generator=gen, per_sample=bool(a.per_sample))
        z = codec.encoder(f, prm); zh = ch(z, prm, generator=gen); fh = codec.decoder(zh, prm); lo = tail(fh)
        loss = a.ce * F.cross_entropy(lo, y)
        if a.distill: loss = loss + a.distill * a.T * a.T * F.kl_div(F.log_softmax(lo / a.T, 1), F.log_softmax(t / a.T, 1), log_target=True, reduction="batchmean")
        if a.hint: loss = loss + a.hint * F.mse_loss(fh, f)
        opt.zero_grad(); loss.backward(); opt.step(); step += 1
    print(f"ep {ep} loss {loss.item():.3f} {time.time()-t0:.0f}s", flush=True)
fit_s = time.time() - t0
codec.eval(); res = {}
feats = []; 
with torch.no_grad():
    for x, y in make_loader(test, 500, shuffle=False, seed=0):
        feats.append((head(etf(x)), y))
    base = sum(int((teacher_tail(f).argmax(1) == y).sum()) for f, y in feats) / 10000
    conds = [("noiseless", None), ("10dB", 10.0), ("20dB", 20.0)] if a.channel == "awgn" else [("noiseless", None), ("p0.01", 0.01)]
    for name, cnd in conds:
        prm = 0.0 if cnd is None else ch.param_from_condition(cnd)
        g = torch.Generator().manual_seed(0)
        hits = sum(int((tail(codec.decoder(ch(codec.encoder(f, prm), prm, generator=g), prm)).argmax(1) == y).sum()) for f, y in feats)
        res[name] = hits / 10000
out = {"args": vars(a), "hidden_resolved": hid, "fit_s": fit_s, "base": base, **res, "drop20": 100 * (base - res.get("20dB", res.get("p0.01")))}
print("RESULT", json.dumps(out), flush=True)
open(RESULTS, "a").write(json.dumps(out) + "\n")
