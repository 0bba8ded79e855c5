"""Reading (RGB order, image modes), paired transforms (alignment), loaders (seeding, multi-scale)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

import datasets
from config import load_config
from datasets.dataset import CODDataset, Sample
from datasets.loader import SeededBatchSampler, ShardSampler
from datasets.reading import decode_image, decode_mask, probe


def save_pair(folder: Path, stem: str, image: np.ndarray, mask: np.ndarray, ext: str = ".png") -> Sample:
    """Write RGB ``image`` and ``mask`` and return the Sample the builder would make."""
    folder.mkdir(parents=True, exist_ok=True)
    ip, mp = folder / f"{stem}{ext}", folder / f"{stem}_gt.png"
    Image.fromarray(image).save(ip, quality=95)
    Image.fromarray(mask).save(mp)
    i, m = probe(ip, 10**9), probe(mp, 10**9)
    return Sample(str(ip), str(mp), stem, i.height, i.width, m.height, m.width)


def shape_pair(h: int = 90, w: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric white 'L' with a diagonal cut on black, and its mask."""
    mask = np.zeros((h, w), np.uint8)
    pts = np.array(
        [
            [w * 0.15, h * 0.1],
            [w * 0.35, h * 0.1],
            [w * 0.35, h * 0.6],
            [w * 0.8, h * 0.75],
            [w * 0.8, h * 0.9],
            [w * 0.15, h * 0.9],
        ],
        np.int32,
    )
    cv2.fillPoly(mask, [pts], 255)
    return np.repeat(mask[..., None], 3, 2), mask


def assert_aligned(img: torch.Tensor, mask: torch.Tensor, level: float = 0.5) -> None:
    """The image's bright region (> ``level``) and the mask agree except within 1 px of the mask's edge."""
    obj = (img.mean(0) > level).numpy().astype(np.uint8)
    m = mask[0].numpy().astype(np.uint8)
    assert set(np.unique(mask.numpy())) <= {0.0, 1.0}
    edge = cv2.dilate(m, np.ones((3, 3), np.uint8)) - cv2.erode(m, np.ones((3, 3), np.uint8))
    off_edge = (obj != m) & (edge == 0)
    assert off_edge.sum() == 0, f"{off_edge.sum()} misaligned pixels away from the edge"
    if m.sum() > 50:
        assert (obj & m).sum() / (obj | m).sum() > 0.85


# ----------------------------------------------------------------------------- reading
@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp"])
def test_pure_red_is_channel_0(tmp_path: Path, ext: str) -> None:
    red = np.zeros((20, 30, 3), np.uint8)
    red[..., 0] = 255
    s = save_pair(tmp_path, "red", red, np.zeros((20, 30), np.uint8), ext)
    assert decode_image(s.image_path)[..., 0].min() > 240
    for transform in (datasets.TrainTransform(), datasets.TestTransform()):
        img = CODDataset([s], transform, 32)[0]["image"]
        means = img.mean((1, 2))
        assert means.argmax() == 0 and means[0] > 0.6 and means[1:].max() < 0.1, means


def test_grey_rgba_palette_16bit_become_rgb_uint8(tmp_path: Path) -> None:
    Image.new("L", (4, 3), 77).save(tmp_path / "grey.png")
    Image.new("RGBA", (4, 3), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    pal = Image.new("P", (4, 3), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    pal.save(tmp_path / "palette.png")
    cv2.imwrite(str(tmp_path / "deep.png"), np.full((3, 4, 3), (1000 * 257 % 65536, 0, 65535), np.uint16))  # BGR
    Image.new("1", (4, 3), 1).save(tmp_path / "bilevel.png")
    expected = {
        "grey": (77, 77, 77),
        "rgba": (10, 20, 30),
        "palette": (200, 100, 50),
        "deep": (255, 0, (1000 * 257 % 65536) >> 8),
        "bilevel": (255, 255, 255),
    }
    for name, rgb in expected.items():
        img = decode_image(tmp_path / f"{name}.png")
        assert img.dtype == np.uint8 and img.shape == (3, 4, 3), name
        assert tuple(int(v) for v in img[1, 2]) == rgb, name
    assert decode_mask(tmp_path / "grey.png").max() == 0  # 77 <= 127
    assert set(np.unique(decode_mask(tmp_path / "palette.png"))) == {0}  # grey of (200,100,50) = 124
    cv2.imwrite(str(tmp_path / "deep_mask.png"), np.full((3, 4), 200 * 257, np.uint16))
    assert set(np.unique(decode_mask(tmp_path / "deep_mask.png"))) == {255}


# ----------------------------------------------------------------------------- transforms
def test_image_and_mask_stay_aligned_through_training_transforms(tmp_path: Path) -> None:
    image, mask = shape_pair()
    s = save_pair(tmp_path, "L", image, mask)
    t = datasets.TrainTransform(hflip=0.5, rotate=30, scale=(0.4, 1.0), color_jitter=0.0)
    ds = CODDataset([s], t, 64, seed=1)
    for epoch in range(12):
        out = ds[(0, 48 + 8 * (epoch % 3), epoch)]
        assert_aligned(out["image"], out["mask"])
    # colour jitter changes the image only: the same draws give the same mask and geometry
    jit = CODDataset([s], datasets.TrainTransform(0.5, 30, (0.4, 1.0), color_jitter=0.4), 64, seed=1)
    for epoch in range(4):
        a, b = ds[(0, 64, epoch)], jit[(0, 64, epoch)]
        assert torch.equal(a["mask"], b["mask"])
        assert not torch.equal(a["image"], b["image"])


def test_an_image_equal_to_its_mask_stays_equal_through_every_transform(tmp_path: Path) -> None:
    """Image and mask are warped alike to the pixel: a black-and-white image whose content is its mask
    comes out as its mask again (the 1-px tolerance of assert_aligned would forgive a shifted mask)."""
    image, mask = shape_pair(71, 97)
    s = save_pair(tmp_path, "L", image, mask)
    transforms = [
        datasets.TestTransform(),
        datasets.TrainTransform(hflip=0.5, rotate=30, scale=(0.4, 1.0), color_jitter=0.0),
        datasets.TrainTransform(hflip=0.5, rotate=10, color_jitter=0.0, side_crop=0.3),
    ]
    for transform in transforms:
        ds = CODDataset([s], transform, 64, seed=4)
        for epoch in range(4):
            out = ds[(0, 40 + 8 * epoch, epoch)]
            where = (type(transform).__name__, epoch)
            assert out["mask"].sum() > 0, where
            assert torch.equal((out["image"] > 0.5).float(), out["mask"].expand(3, -1, -1)), where


def test_flip_and_resize_are_exact(tmp_path: Path) -> None:
    image, mask = shape_pair(60, 80)
    image = (image * np.linspace(0.2, 1, 80)[None, :, None]).astype(np.uint8)  # left-right asymmetric
    s = save_pair(tmp_path, "L", image, mask)
    test = CODDataset([s], datasets.TestTransform(), 40)[0]
    flipped = CODDataset([s], datasets.TrainTransform(1.0, 0.0, (1.0, 1.0), 0.0), 40)[0]
    assert torch.allclose(flipped["image"], test["image"].flip(-1), atol=1.5 / 255)
    # masks may differ only where bilinear weights tie at 50% on an edge (this 2x downscale puts
    # the L's vertical edges exactly there)
    assert_aligned(flipped["mask"].repeat(3, 1, 1), test["mask"].flip(-1))
    assert_aligned(test["image"], test["mask"], level=0.1)  # the L is at least 0.2 bright
    assert test["size"] == (60, 80) and test["name"] == "L"


def test_reduced_decoding_keeps_alignment(tmp_path: Path) -> None:
    image, mask = shape_pair(901, 1203)  # odd sizes: reduced JPEG and PNG round differently
    s = save_pair(tmp_path, "big", image, mask, ".jpg")
    for transform in (datasets.TestTransform(), datasets.TrainTransform(0.5, 10, (0.75, 1.0), 0.0)):
        out = CODDataset([s], transform, 64, seed=2)[(0, 64, 3)]
        assert_aligned(out["image"], out["mask"])
        assert out["size"] == (901, 1203)


# ----------------------------------------------------------------------------- loaders
def loader_cfg(*overrides: str):
    return load_config(None, ["data.image_size=32", "train.batch_size=4", "train.seed=5", *overrides])


@pytest.fixture(scope="module")
def twelve(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    folder = tmp_path_factory.mktemp("twelve")
    rng = np.random.default_rng(0)
    return [
        save_pair(
            folder,
            f"s{i:02d}",
            rng.integers(0, 255, (40, 50, 3), dtype=np.uint8),
            (rng.random((40, 50)) > 0.5).astype(np.uint8) * 255,
            ".jpg",
        )
        for i in range(12)
    ]


def run_epoch(loader, epoch: int) -> list[dict]:
    datasets.set_epoch(loader, epoch)
    return list(loader)


def test_multi_scale_batches_are_seeded_and_one_size_each(twelve: list[Sample]) -> None:
    cfg = loader_cfg("data.multi_scale=[32,48,64]", "train.num_workers=0")
    ds = CODDataset(twelve, datasets.TrainTransform(), 32, seed=5)
    loader = datasets.build_loader(ds, cfg, train=True)
    sizes, names = [], []
    for epoch in range(4):
        batches = run_epoch(loader, epoch)
        assert len(batches) == 3
        for b in batches:
            assert b["image"].shape[0] == 4 and b["image"].shape[-1] == b["image"].shape[-2] == b["mask"].shape[-1]
            sizes.append(b["image"].shape[-1])
        names.append([n for b in batches for n in b["name"]])
    assert set(sizes) == {32, 48, 64}
    assert names[0] != names[1] and sorted(names[0]) == sorted(s.name for s in twelve)
    again = datasets.build_loader(ds, cfg, train=True)
    b0, b1 = run_epoch(again, 2)[0], run_epoch(loader, 2)[0]
    assert b0["name"] == b1["name"] and torch.equal(b0["image"], b1["image"])
    # a loop that forgets set_epoch is stopped, not handed a replayed or invented epoch
    with pytest.raises(RuntimeError, match="set_epoch"):
        next(iter(loader))


def test_a_resumed_epoch_skips_exactly_the_batches_done(twelve: list[Sample]) -> None:
    cfg = loader_cfg("data.multi_scale=[32,48,64]", "train.num_workers=0")
    ds = CODDataset(twelve, datasets.TrainTransform(), 32, seed=5)
    loader = datasets.build_loader(ds, cfg, train=True)
    whole = run_epoch(loader, 2)
    datasets.set_epoch(loader, 2, start=1)
    assert len(loader) == len(whole) - 1
    rest = list(loader)
    assert [b["name"] for b in rest] == [b["name"] for b in whole[1:]]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(rest, whole[1:]))  # same sizes, same warps
    with pytest.raises(ValueError, match="outside an epoch"):
        datasets.set_epoch(loader, 2, start=len(whole) + 1)


def test_workers_do_not_repeat_augmentations_and_do_not_change_them(twelve: list[Sample]) -> None:
    same = [twelve[0]] * 8  # one file eight times: only the augmentation tells them apart
    ds = CODDataset(same, datasets.TrainTransform(), 32, seed=5)
    outs = {}
    for workers in (0, 2):
        loader = datasets.build_loader(ds, loader_cfg(f"train.num_workers={workers}"), train=True)
        outs[workers] = torch.cat([b["image"] for b in run_epoch(loader, 1)])
        del loader
    imgs = outs[2]
    assert imgs.shape[0] == 8
    flat = imgs.flatten(1)
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.equal(flat[i], flat[j]), f"samples {i} and {j} got the same augmentation"
    assert torch.equal(outs[0], outs[2])  # a sample's augmentation does not depend on the worker


def test_evaluation_loader_keeps_order_and_metadata(twelve: list[Sample]) -> None:
    ds = CODDataset(twelve, datasets.TestTransform(), 32, on_error="blank")
    cfg = loader_cfg("eval.batch_size=5", "train.num_workers=0")
    batches = list(datasets.build_loader(ds, cfg, train=False))
    assert [len(b["name"]) for b in batches] == [5, 5, 2]
    b = batches[0]
    assert b["name"] == [f"s{i:02d}" for i in range(5)] and b["size"][0] == (40, 50)
    assert b["image"].shape == (5, 3, 32, 32) and b["image"].dtype == torch.float32 and b["image"].is_contiguous()
    assert b["mask"].shape == (5, 1, 32, 32) and b["mask_path"][0] == twelve[0].mask_path


def test_distributed_shards_and_batch_sizes_agree_across_ranks(twelve: list[Sample]) -> None:
    shards = [list(ShardSampler(12, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(12))
    per_rank = []
    for rank in range(2):
        sampler = DistributedSampler(range(12), num_replicas=2, rank=rank, shuffle=True, seed=5)
        bs = SeededBatchSampler(sampler, 2, True, [32, 48, 64, 80], seed=5)
        bs.set_epoch(3)
        per_rank.append(list(bs))
    assert [b[0][1] for b in per_rank[0]] == [b[0][1] for b in per_rank[1]]  # same size at the same step
    idx = [{k[0] for b in r for k in b} for r in per_rank]
    assert not idx[0] & idx[1] and len(idx[0] | idx[1]) == 12
