"""Cut a timm model at every valid split point, check the cut, and profile it - from Python.

    python examples/split_and_profile.py                 # test_resnet (timm's tiny test model), seconds
    python examples/split_and_profile.py resnet18 224    # any timm model and input size

Random weights (pass checkpoint=... to BackboneConfig for real ones); no data, no network.
"""

import sys

import torch

from bnpp_cli import BackboneConfig, Budget, ProfileConfig, load_backbone, profile_model, split_model, trace_model

name = sys.argv[1] if len(sys.argv) > 1 else "test_resnet"
size = int(sys.argv[2]) if len(sys.argv) > 2 else 64
config = BackboneConfig(name, img_size=size)
backbone = load_backbone(config)
traced = trace_model(backbone.model, backbone.input_size, name)
x = torch.randn(2, *backbone.input_size)
with torch.no_grad():
    reference = backbone.model(x)
    for point in traced.list_points():
        head, tail = split_model(traced, point)
        exact = torch.equal(tail(head(x)), reference)
        print(f"{point.name:14s} feature {'x'.join(map(str, point.shape)):12s} exact={exact}")

profile = profile_model(ProfileConfig(config, samples=2, repeats=1, budget=Budget(bandwidth_mbps=20)))
print("recommended split:", profile.recommendation["best"], "| Pareto:", ", ".join(profile.recommendation["pareto"]))
