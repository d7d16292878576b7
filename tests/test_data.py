"""Data module: sources, resizing policy, splits, label checks, batch transforms, loaders."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image
from torch.utils.data import Subset

from bnpp_cli.data.batching import BatchLoader, BatchTransform, crop_flip, make_loader
from bnpp_cli.data.datasets import ImageDataset, check_labels, load_dataset, split_train_val
from bnpp_cli.errors import DataError

CIFAR10 = Path(__file__).parents[1] / ".." / "shared" / "data" / "cifar10"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def images(n: int, h: int = 8, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def batch_of(n: int = 16, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


# --- .npz ---------------------------------------------------------------------------------------

def test_npz_round_trip(tmp_path):
    x, y = images(6), np.array([0, 2, 1, 2, 0, 1])
    path = write_npz(tmp_path / "d.npz", x=x, y=y, class_names=np.array(["a", "b", "c"]))
    ds = load_dataset(str(path), input_size=(8, 8), train=False)
    assert len(ds) == 6 and ds.in_memory and ds.resized is False
    assert ds.classes == ["a", "b", "c"] and ds.num_classes == 3
    assert str(path) in ds.source
    image, label = ds[3]
    assert image.dtype == torch.uint8 and image.shape == (3, 8, 8) and label == 2 and type(label) is int
    assert torch.equal(image, torch.from_numpy(x[3]).permute(2, 0, 1))
    xs, ys = ds.tensors()
    assert xs.shape == (6, 3, 8, 8) and xs.dtype == torch.uint8 and xs.is_contiguous()
    assert ys.dtype == torch.int64 and ys.tolist() == y.tolist()


def test_npz_without_class_names_counts_classes_from_labels(tmp_path):
    path = write_npz(tmp_path / "d.npz", x=images(3), y=np.array([0, 4, 1], dtype=np.int32))
    ds = load_dataset(str(path), input_size=(8, 8), train=True)
    assert ds.classes is None and ds.num_classes == 5


def test_npz_at_input_size_is_never_rescaled_even_with_crop_pct(tmp_path):
    x = images(2)
    path = write_npz(tmp_path / "d.npz", x=x, y=np.array([0, 1]))
    ds = load_dataset(str(path), input_size=(8, 8), train=False, crop_pct=0.875, interpolation="bicubic")
    assert ds.resized is False
    assert torch.equal(ds.tensors()[0], torch.from_numpy(x).permute(0, 3, 1, 2))


def test_npz_of_another_size_is_resized_once_to_the_input_size(tmp_path):
    x = np.full((3, 6, 6, 3), 100, dtype=np.uint8)
    path = write_npz(tmp_path / "d.npz", x=x, y=np.array([0, 1, 0]))
    ds = load_dataset(str(path), input_size=(10, 10), train=False)
    assert ds.in_memory and ds.tensors()[0].shape == (3, 3, 10, 10)
    assert "6x6 -> 10x10" in ds.resized
    assert (ds.tensors()[0] == 100).all()  # a flat image stays flat


def test_non_square_images_are_centre_cropped(tmp_path):
    x = images(2, h=8, w=16)  # shorter side already 8: no scaling, only the centre crop
    path = write_npz(tmp_path / "d.npz", x=x, y=np.array([0, 1]))
    ds = load_dataset(str(path), input_size=(8, 8), train=False)
    assert torch.equal(ds.tensors()[0], torch.from_numpy(x[:, :, 4:12]).permute(0, 3, 1, 2))


@pytest.mark.parametrize("arrays, needle", [
    (dict(y=np.array([0])), "no array 'x'"),
    (dict(x=images(1)), "no array 'y'"),
    (dict(x=images(0), y=np.zeros(0, dtype=np.int64)), "no images"),
    (dict(x=images(3), y=np.array([0, 1])), "3 images in x but 2 labels"),
    (dict(x=images(2).astype(np.float32), y=np.array([0, 1])), "float32"),
    (dict(x=images(2), y=np.array([0.0, 1.0])), "y in"),
    (dict(x=images(2), y=np.array([0, -1])), "negative labels"),
    (dict(x=images(2), y=np.array([0, 3]), class_names=np.array(["a", "b"])), "only 2 class_names"),
    (dict(x=images(2), y=np.array([0, 1]), class_names=np.array([{}, 1], dtype=object)), "cannot read"),
])
def test_bad_npz_raises_data_error_naming_the_file(tmp_path, arrays, needle):
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as err:
        load_dataset(str(path), input_size=(8, 8), train=False)
    assert needle in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_corrupt_npz_raises_data_error(tmp_path):
    path = tmp_path / "corrupt.npz"
    path.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(DataError, match="cannot read .*corrupt.npz"):
        load_dataset(str(path), input_size=(8, 8), train=False)
    good = write_npz(tmp_path / "good.npz", x=images(50), y=np.zeros(50, dtype=np.int64))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(DataError, match="truncated.npz"):
        load_dataset(str(truncated), input_size=(8, 8), train=False)


def test_missing_path_raises_data_error_listing_accepted_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spec in (str(tmp_path / "missing.npz"), str(tmp_path / "no" / "dir"), "./cifar10", "x.npz"):
        with pytest.raises(DataError) as err:
            load_dataset(spec, input_size=(8, 8), train=False)
        assert "no such file or directory" in str(err.value) and spec.lstrip("./") in str(err.value)
        assert "ImageFolder" in str(err.value) and "cifar10" in str(err.value)


def test_unsupported_file_and_unknown_name(tmp_path):
    text = tmp_path / "labels.txt"
    text.write_text("0 1 2")
    with pytest.raises(DataError, match=r"unsupported data file .*labels\.txt"):
        load_dataset(str(text), input_size=(8, 8), train=False)
    with pytest.raises(DataError) as err:
        load_dataset("cifar11", input_size=(8, 8), train=False)
    message = str(err.value)
    assert "'cifar11'" in message and all(n in message for n in ("cifar10", "cifar100", "svhn", "mnist"))
    assert "cifar10" in err.value.hint


@pytest.mark.parametrize("kwargs, needle", [
    (dict(input_size=(8,)), "input_size"),
    (dict(input_size=(8, 8), crop_pct=0.0), "crop_pct"),
    (dict(input_size=(8, 8), interpolation="lanczos"), "lanczos"),
])
def test_bad_options_raise_data_error(tmp_path, kwargs, needle):
    path = write_npz(tmp_path / "d.npz", x=images(2), y=np.array([0, 1]))
    with pytest.raises(DataError, match=needle):
        load_dataset(str(path), train=False, **kwargs)


# --- torchvision names (no network: failures and conversions through stand-ins) ------------------

def test_torchvision_offline_download_becomes_data_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match=rf"could not download cifar10 to {tmp_path} \(offline\?\)"):
        load_dataset("cifar10", input_size=(32, 32), train=True, root=str(tmp_path))


def test_torchvision_not_downloaded_becomes_data_error(tmp_path):
    with pytest.raises(DataError, match=rf"cifar10 is not in {tmp_path}"):
        load_dataset("CIFAR-10", input_size=(32, 32), train=False, root=str(tmp_path), download=False)


def test_torchvision_grey_and_channels_first_arrays_are_converted(tmp_path, monkeypatch):
    class FakeMNIST:
        def __init__(self, root, train, download):
            self.data = torch.full((4, 28, 28), 7, dtype=torch.uint8)
            self.targets = torch.tensor([3, 1, 4, 1])
            self.classes = [f"{i} - digit" for i in range(10)]

    class FakeSVHN:
        def __init__(self, root, split, download):
            assert split == "test"
            self.data = images(5).transpose(0, 3, 1, 2)
            self.labels = np.array([0, 9, 2, 3, 4])

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    monkeypatch.setattr(torchvision.datasets, "SVHN", FakeSVHN)
    mnist = load_dataset("mnist", input_size=(32, 32), train=True, root=str(tmp_path))
    assert mnist.tensors()[0].shape == (4, 3, 32, 32) and (mnist.tensors()[0] == 7).all()
    assert mnist.num_classes == 10 and mnist[2][1] == 4 and "28x28 -> 32x32" in mnist.resized
    svhn = load_dataset("svhn", input_size=(8, 8), train=False, root=str(tmp_path))
    assert svhn.classes == [str(i) for i in range(10)] and svhn.resized is False
    assert torch.equal(svhn.tensors()[0], torch.from_numpy(images(5)).permute(0, 3, 1, 2))


# --- ImageFolder ----------------------------------------------------------------------------------

def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_image_folder_reads_classes_labels_and_resizes_off_size_images(tmp_path):
    a, b = images(1)[0], images(1, seed=1)[0]
    write_png(tmp_path / "cat" / "a.png", a)
    write_png(tmp_path / "dog" / "b.png", b)
    write_png(tmp_path / "dog" / "sub" / "c.png", np.full((12, 16, 3), 200, dtype=np.uint8))
    Image.fromarray(a[..., 0]).save(tmp_path / "cat" / "grey.png")  # "L" mode -> RGB
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = load_dataset(str(tmp_path), input_size=(8, 8), train=True)
    assert ds.classes == ["cat", "dog"] and len(ds) == 4 and not ds.in_memory
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert torch.equal(ds[0][0], torch.from_numpy(a).permute(2, 0, 1))  # at size: untouched
    assert torch.equal(ds[1][0], torch.from_numpy(a[..., 0]).expand(3, 8, 8))
    assert torch.equal(ds[2][0], torch.from_numpy(b).permute(2, 0, 1))
    resized, label = ds[3]
    assert resized.shape == (3, 8, 8) and resized.dtype == torch.uint8 and label == 1
    assert (resized == 200).all()
    assert "1 of 4 checked not at 8x8" in ds.resized
    with pytest.raises(DataError, match="tensors"):
        ds.tensors()


def test_image_folder_at_input_size_reports_no_resizing(tmp_path):
    write_png(tmp_path / "x" / "a.png", images(1)[0])
    assert load_dataset(str(tmp_path), input_size=(8, 8), train=False).resized is False


def test_empty_image_folder_raises_data_error(tmp_path):
    with pytest.raises(DataError, match=f"no images in {tmp_path}"):
        load_dataset(str(tmp_path), input_size=(8, 8), train=False)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "readme.txt").write_text("")
    with pytest.raises(DataError, match=f"no images in {tmp_path}"):
        load_dataset(str(tmp_path), input_size=(8, 8), train=False)


def test_corrupt_image_raises_data_error_naming_it(tmp_path):
    write_png(tmp_path / "x" / "a.png", images(1)[0])
    (tmp_path / "x" / "b.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*b\.png"):
        load_dataset(str(tmp_path), input_size=(8, 8), train=False)


def test_directory_of_split_files_picks_the_split(tmp_path):
    write_npz(tmp_path / "train.npz", x=images(4), y=np.arange(4))
    write_npz(tmp_path / "test.npz", x=images(2), y=np.arange(2))
    assert len(load_dataset(str(tmp_path), input_size=(8, 8), train=True)) == 4
    assert len(load_dataset(str(tmp_path), input_size=(8, 8), train=False)) == 2
    (tmp_path / "test.npz").unlink()
    with pytest.raises(DataError, match="no test.npz"):
        load_dataset(str(tmp_path), input_size=(8, 8), train=False)


# --- splits and labels ----------------------------------------------------------------------------

def array_dataset(n: int, num_classes: int = 10) -> ImageDataset:
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return ImageDataset(torch.arange(n) % num_classes, images=x, source="toy")


def test_split_train_val_is_deterministic_disjoint_and_exact():
    ds = array_dataset(20)
    train, val = split_train_val(ds, 0.25, seed=3)
    assert len(train) == 15 and len(val) == 5
    assert set(train.indices).isdisjoint(val.indices)
    assert sorted(train.indices + val.indices) == list(range(20))
    again = split_train_val(ds, 0.25, seed=3)
    assert again[0].indices == train.indices and again[1].indices == val.indices
    assert split_train_val(ds, 0.25, seed=4)[1].indices != val.indices
    assert len(split_train_val(ds, 0.01, seed=0)[1]) == 1  # at least one
    assert split_train_val(ds, 0.0, seed=0) == (ds, None)


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5])
def test_split_train_val_rejects_fractions_outside_0_1(fraction):
    with pytest.raises(DataError, match=f"val_fraction {fraction}"):
        split_train_val(array_dataset(10), fraction, seed=0)


def test_check_labels_names_the_range_and_hints_num_classes():
    ds = array_dataset(20, num_classes=10)
    check_labels(ds, 10)
    with pytest.raises(DataError) as err:
        check_labels(ds, 5)
    assert "toy" in str(err.value) and "0..9" in str(err.value) and "num_classes=5" in str(err.value)
    assert "--num-classes 10" in err.value.hint
    check_labels(Subset(ds, [0, 1, 2, 3]), 4)  # labels of the subset only
    with pytest.raises(DataError, match="0..4"):
        check_labels(Subset(Subset(ds, list(range(10))), [0, 4]), 4)


# --- BatchTransform -------------------------------------------------------------------------------

def test_no_augment_is_exactly_scale_and_normalise():
    x = batch_of()
    out = BatchTransform(MEAN, STD, augment=False)(x)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(out, (x.float() / 255 - mean) / std, atol=1e-6, rtol=0)


def test_augment_is_reproducible_and_actually_changes_images():
    x = batch_of(64)
    augment = BatchTransform(MEAN, STD, augment=True)
    plain = BatchTransform(MEAN, STD, augment=False)(x)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    c = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    changed = (a != plain).flatten(1).any(1)
    assert changed.float().mean() > 0.5  # all but 1 of 162 (offset, flip) draws change an image


def test_augment_crops_at_most_pad_pixels_with_zero_padding():
    x = torch.full((256, 3, 32, 32), 255, dtype=torch.uint8)
    out = BatchTransform((0, 0, 0), (1, 1, 1), augment=True)(x, torch.Generator().manual_seed(0))
    zero_rows = (out[:, 0] == 0).all(2).sum(1)
    zero_cols = (out[:, 0] == 0).all(1).sum(1)
    assert zero_rows.max() == 4 and zero_cols.max() == 4  # default pad 32 // 8
    assert (zero_rows == 0).any() and set(out.unique().tolist()) == {0.0, 1.0}
    only_flips = BatchTransform((0, 0, 0), (1, 1, 1), augment=True, pad=0)
    y = batch_of(32)
    flipped = only_flips(y, torch.Generator().manual_seed(0))
    for i in range(len(y)):
        assert torch.equal(flipped[i], y[i] / 255) or torch.equal(flipped[i], y[i].flip(-1) / 255)


def test_crop_flip_offsets():
    x = batch_of(4, size=6)
    zero, no = torch.zeros(4, 2, dtype=torch.int64), torch.zeros(4, dtype=torch.bool)
    assert torch.equal(crop_flip(x, zero, no), x)
    assert torch.equal(crop_flip(x, zero, ~no), x.flip(-1))
    down = crop_flip(x, torch.tensor([[1, 0]] * 4), no)  # out[r] = x[r + 1]
    assert torch.equal(down[:, :, :-1], x[:, :, 1:]) and (down[:, :, -1] == 0).all()
    right = crop_flip(x, torch.tensor([[0, -2]] * 4), no)  # out[c] = x[c - 2]
    assert torch.equal(right[..., 2:], x[..., :-2]) and (right[..., :2] == 0).all()


def test_batch_transform_rejects_float_input_and_bad_stats():
    with pytest.raises(DataError, match="uint8"):
        BatchTransform(MEAN, STD, augment=False)(torch.zeros(1, 3, 4, 4))
    with pytest.raises(DataError, match="std"):
        BatchTransform(MEAN, (1, 0, 1), augment=False)


# --- loaders --------------------------------------------------------------------------------------

def epoch_ids(loader) -> list[int]:
    """Image values identify samples in array_dataset."""
    ids = []
    for x, y in loader:
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and len(x) == len(y)
        assert torch.equal(y, x[:, 0, 0, 0].long() % 10)
        ids += x[:, 0, 0, 0].tolist()
    return ids


def test_make_loader_covers_each_sample_once_per_epoch_deterministically():
    ds = array_dataset(10)
    loader = make_loader(ds, 3, shuffle=True, seed=0)
    assert len(loader) == 4
    first, second = epoch_ids(loader), epoch_ids(loader)
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    again = make_loader(ds, 3, shuffle=True, seed=0)
    assert epoch_ids(again) == first
    again.set_epoch(1)
    assert epoch_ids(again) == second
    assert epoch_ids(make_loader(ds, 3, shuffle=True, seed=1)) != first
    assert epoch_ids(make_loader(ds, 3, shuffle=False, seed=0)) == list(range(10))
    dropped = make_loader(ds, 3, shuffle=True, seed=0, drop_last=True)
    assert len(dropped) == 3 and len(epoch_ids(dropped)) == 9


def test_make_loader_on_subsets_uses_the_subset_indices():
    ds = array_dataset(20)
    train, val = split_train_val(ds, 0.3, seed=0)
    assert sorted(epoch_ids(make_loader(val, 4, shuffle=True, seed=0))) == val.indices
    nested = Subset(train, [0, 2, 4])
    assert epoch_ids(make_loader(nested, 2, shuffle=False, seed=0)) == [train.indices[i] for i in (0, 2, 4)]


def test_make_loader_on_files_goes_through_a_dataloader(tmp_path):
    for i in range(5):
        write_png(tmp_path / f"c{i % 2}" / f"{i}.png", np.full((8, 8, 3), i, dtype=np.uint8))
    ds = load_dataset(str(tmp_path), input_size=(8, 8), train=True)
    loader = make_loader(ds, 2, shuffle=True, seed=0)
    seen = [(int(x[j, 0, 0, 0]), int(y[j])) for x, y in loader for j in range(len(x))]
    assert sorted(seen) == [(0, 0), (1, 1), (2, 0), (3, 1), (4, 0)] and len(loader) == 3
    again = [(int(x[j, 0, 0, 0]), int(y[j])) for x, y in make_loader(ds, 2, shuffle=True, seed=0)
             for j in range(len(x))]
    assert again == seen


def test_shards_are_equal_and_cover_the_dataset():
    ds = array_dataset(10)
    shards = [epoch_ids(BatchLoader(ds, 2, shuffle=True, seed=0, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded to 12 by repetition
    assert set(sum(shards, [])) == set(range(10))
    with pytest.raises(DataError, match="torchrun"):
        make_loader(ds, 2, shuffle=True, seed=0, distributed=True)


# --- timm data config -----------------------------------------------------------------------------

@pytest.mark.slow
def test_real_cifar10_test_split():
    if not CIFAR10.is_dir():
        pytest.skip("../shared/data/cifar10 not present")
    ds = load_dataset(str(CIFAR10 / "test.npz"), input_size=(32, 32), train=False)
    x, y = ds.tensors()
    assert x.shape == (10_000, 3, 32, 32) and ds.resized is False
    assert ds.num_classes == 10 and ds.classes[0] == "airplane" and ds.classes[-1] == "truck"
    assert torch.bincount(y).tolist() == [1_000] * 10
    check_labels(ds, 10)
    assert len(load_dataset(str(CIFAR10), input_size=(32, 32), train=False)) == 10_000
