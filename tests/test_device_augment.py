"""data.augment_on=device: the device path warps and jitters as the worker path does, from the same draws."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import datasets
from datasets.device_augment import DecodedTrainSet, augment, training_inputs, warp_theta
from datasets.loader import seed_worker
from datasets.reading import probe
from engine.checkpoint import load_checkpoint
from helpers import run_train, tiny_model_args


def smooth_pair(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth colour image (interpolation differences stay small) and an off-centre ellipse mask."""
    noise = rng.random((h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
    image = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    image = np.clip(image * 200 + 28, 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    cx, cy = int(w * rng.uniform(0.3, 0.6)), int(h * rng.uniform(0.3, 0.6))
    cv2.ellipse(mask, (cx, cy), (w // 4, h // 6), float(rng.uniform(0, 180)), 0, 360, 255, -1)
    image[mask > 0] = (image[mask > 0] * 0.5 + 100).astype(np.uint8)
    return image, mask


def write_pair(folder: Path, stem: str, image: np.ndarray, mask: np.ndarray) -> datasets.Sample:
    ip, mp = folder / f"{stem}.png", folder / f"{stem}_gt.png"
    Image.fromarray(image).save(ip)
    Image.fromarray(mask).save(mp)
    i, m = probe(ip, 10**9), probe(mp, 10**9)
    return datasets.Sample(str(ip), str(mp), stem, i.height, i.width, m.height, m.width)


def write_pairs(folder: Path, n: int, h: int = 90, w: int = 120) -> list[datasets.Sample]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    return [write_pair(folder, f"p{k}", *smooth_pair(rng, h, w)) for k in range(n)]


def test_warp_matches_opencv_for_the_same_matrix():
    rng = np.random.default_rng(1)
    image, mask = smooth_pair(rng, 48, 48)
    t = datasets.TrainTransform(hflip=0.5, rotate=30, scale=(0.4, 1.0), color_jitter=0.0)
    img_t = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
    mask_t = torch.from_numpy(mask)[None, None]
    flips = 0
    for k in range(8):
        matrix, _ = t.draw(48, 48, 32, np.random.default_rng(k))
        flips += matrix[0, 0] * matrix[1, 1] - matrix[0, 1] * matrix[1, 0] < 0  # a mirror has det < 0
        theta = torch.from_numpy(warp_theta(matrix, 48, 48, 48, 32))[None]
        got, got_mask = augment(img_t, mask_t, theta, torch.ones(1, 3), 32)
        ref = cv2.warpAffine(image, matrix, (32, 32), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        ref_mask = cv2.warpAffine(mask, matrix, (32, 32), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        diff = (got[0] * 255 - torch.from_numpy(ref.transpose(2, 0, 1)).float()).abs()
        assert diff.max() <= 2.0, (k, diff.max())  # OpenCV's 1/32-pixel fixed-point bilinear
        assert (got_mask[0, 0] != torch.from_numpy(ref_mask > 127).float()).sum() <= 2, k
    assert 0 < flips < 8  # the draws vary, mirrors included


@pytest.mark.parametrize("side_crop", [0.0, 0.25])
def test_device_path_reproduces_the_worker_path(tmp_path, side_crop):
    """Same (seed, epoch, index) -> same warp and jitter: the outputs agree up to interpolation
    (the device path samples a square-squashed copy; the worker path rounds to uint8 twice)."""
    samples = write_pairs(tmp_path, 4)
    t = datasets.TrainTransform(hflip=0.5, rotate=30, scale=(0.5, 1.0), color_jitter=0.3, side_crop=side_crop)
    worker = datasets.CODDataset(samples, t, 48, seed=3)
    device = DecodedTrainSet(samples, t, side=160, default_size=48, seed=3)
    stats = {"worker": [], "device": []}
    for epoch in range(6):
        keys = [(i, 48 if epoch % 2 else 40, epoch) for i in range(4)]
        ref = datasets.collate([worker[k] for k in keys])
        batch = datasets.collate([device[k] for k in keys])
        assert batch["image"].dtype == torch.uint8 and batch["warp"].shape == (4, 2, 3)
        x, y = training_inputs(batch, torch.device("cpu"))
        assert x.shape == ref["image"].shape and y.shape == ref["mask"].shape
        assert (x - ref["image"]).abs().mean() < 0.01, epoch
        for j in range(4):
            agree = (y[j] == ref["mask"][j]).float().mean()
            inter, union = (y[j] * ref["mask"][j]).sum(), ((y[j] + ref["mask"][j]) > 0).sum()
            assert agree > 0.99 and (union == 0 or inter / union > 0.9), (epoch, j, agree)
        for name, (img, msk) in (("worker", (ref["image"], ref["mask"])), ("device", (x, y))):
            stats[name] += zip(img.mean((1, 2, 3)).tolist(), img.std((1, 2, 3)).tolist(), msk.mean((1, 2, 3)).tolist())
    # in distribution: the quantiles of brightness, contrast and object area agree
    w, d = np.array(stats["worker"]), np.array(stats["device"])
    q = [0.1, 0.25, 0.5, 0.75, 0.9]
    assert np.abs(np.quantile(w, q, axis=0) - np.quantile(d, q, axis=0)).max() < 0.02
    assert w[:, 2].std() > 0.01  # the augmentation does change the object's area


def test_an_image_equal_to_its_mask_stays_equal_on_the_device_path(tmp_path):
    """The start-up squash and the warp treat image and mask alike to the pixel: a black-and-white
    image whose content is its mask comes out as its mask again."""
    mask = np.zeros((71, 97), np.uint8)
    cv2.fillPoly(mask, [np.array([[10, 7], [40, 7], [40, 45], [80, 55], [80, 64], [10, 64]], np.int32)], 255)
    sample = write_pair(tmp_path, "L", np.repeat(mask[..., None], 3, 2), mask)
    t = datasets.TrainTransform(hflip=0.5, rotate=30, scale=(0.4, 1.0), color_jitter=0.0)
    ds = DecodedTrainSet([sample], t, side=80, default_size=48, seed=2)
    batch = datasets.collate([ds[(0, 48, epoch)] for epoch in range(4)])
    assert torch.equal(batch["image"], batch["mask"].expand(-1, 3, -1, -1))  # after the squash
    x, y = training_inputs(batch, torch.device("cpu"))
    assert y.sum() > 0 and torch.equal((x >= 0.5).float(), y.expand(-1, 3, -1, -1))


def test_decoded_set_skips_broken_files(tmp_path, caplog):
    samples = write_pairs(tmp_path, 3)
    Path(samples[1].image_path).write_bytes(b"not an image")
    ds = DecodedTrainSet(samples, datasets.TrainTransform(), side=64, default_size=32)
    assert [s.name for s in ds.samples] == ["p0", "p2"] and ds.images.shape == (2, 3, 64, 64)
    assert "failed to decode" in caplog.text


def test_train_with_device_augmentation(tmp_path, tiny_dinov3_factory):
    from scripts.make_synthetic_cod import generate

    data, run = tmp_path / "data", tmp_path / "run"
    generate(data, n_train=6, n_test=0, size=48, seed=0)
    common = [
        *tiny_model_args(data, tiny_dinov3_factory(layers=4)),
        "data.val_fraction=0.34",
        "train.batch_size=2",
        "train.num_workers=0",
        "train.epochs=1",
        f"train.run_dir={run}",
    ]
    assert run_train([*common, "data.augment_on=device"]) == 0
    log_text = (run / "train.log").read_text()
    assert "4 training pairs decoded to 37x37 uint8" in log_text
    assert load_checkpoint(run / "last.pth")["config"]["data"]["augment_on"] == "device"


def test_unknown_augment_on_is_one_line(capsys):
    assert run_train(["--config", "e2net_dinov3.yaml", "data.augment_on=gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.augment_on" in err and "workers, device" in err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_augmentation_on_cuda_matches_cpu(tmp_path):
    samples = write_pairs(tmp_path, 4)
    ds = DecodedTrainSet(samples, datasets.TrainTransform(color_jitter=0.3), side=96, default_size=64, seed=1)
    batch = datasets.collate([ds[(i, 64, 2)] for i in range(4)])
    x_cpu, y_cpu = training_inputs(batch, torch.device("cpu"))
    x_gpu, y_gpu = training_inputs(batch, torch.device("cuda"))
    assert (x_gpu.cpu() - x_cpu).abs().max() < 1e-3
    assert (y_gpu.cpu() != y_cpu).float().mean() < 1e-3


def test_loader_workers_start_after_the_start_up_decode(tmp_path):
    """OpenCV's thread pool running in the parent makes forked workers hang in cv2.setNumThreads."""
    cv2.resize(np.zeros((1200, 1600, 3), np.uint8), (444, 444), interpolation=cv2.INTER_AREA)  # starts the pool
    samples = write_pairs(tmp_path, 4, h=600, w=800)
    ds = DecodedTrainSet(samples, datasets.TrainTransform(), side=300, default_size=64)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=2, num_workers=1, collate_fn=datasets.collate, worker_init_fn=seed_worker, timeout=30
    )
    assert next(iter(loader))["image"].shape == (2, 3, 300, 300)
