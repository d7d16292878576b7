"""Where to cut: timm backbones, tracing and cutting (torch.fx), MAC counting, profile and recommendation."""
