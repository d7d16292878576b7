"""Datasets (.npz, ImageFolder, torchvision names) and batching with per-batch transforms."""
