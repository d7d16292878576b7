"""Cut a timm model at every split point, check that the cut is exact, and profile it - from Python.

    python examples/split_and_profile.py              # timm's tiny test_resnet, random weights
    python examples/split_and_profile.py resnet18     # any timm model name

Random weights (timm's init) and random inputs: no network, a few seconds on a CPU.
"""

import sys

import torch

from bnpp_cli import BackboneConfig, Budget, ProfileConfig, load_backbone, profile_model, split_model, trace_model

name = sys.argv[1] if len(sys.argv) > 1 else "test_resnet"
config = BackboneConfig(name, num_classes=10, img_size=64)  # pass checkpoint="w.safetensors" for real weights
backbone = load_backbone(config)
traced = trace_model(backbone.model, backbone.input_size, name)
x = torch.randn(2, *backbone.input_size, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    reference = backbone.model(x)
    for point in traced.list_points():
        head, tail = split_model(traced, point)
        exact = torch.equal(tail(head(x)), reference)
        print(f"{point.name:14s} feature {'x'.join(map(str, point.shape)):12s} exact={exact}")

profile = profile_model(ProfileConfig(config, samples=2, repeats=2, budget=Budget(bandwidth_mbps=20)))
for row in profile.split_points:
    print(f"{row.name:14s} device {row.device_macs / 1e6:8.1f} MMACs  payload {row.payload_bits:8d} bits  "
          f"estimated {row.est_latency_ms:6.2f} ms")
print("recommended split:", profile.recommendation["best"], "| Pareto:", ", ".join(profile.recommendation["pareto"]))
