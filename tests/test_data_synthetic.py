"""The generated camouflage set, scripts/check_dataset.py and scripts/bench_data.py."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import datasets
from config import load_config
from scripts import bench_data, check_dataset, make_synthetic_cod


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    assert (
        make_synthetic_cod.main(["--out", str(root), "--train", "48", "--test", "12", "--size", "96", "--seed", "3"])
        == 0
    )
    return root


def pairs(folder: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for ip in sorted((folder / "Imgs").iterdir()):
        mask = cv2.imread(str(folder / "GT" / f"{ip.stem}.png"), cv2.IMREAD_UNCHANGED)
        out.append((cv2.cvtColor(cv2.imread(str(ip)), cv2.COLOR_BGR2RGB), mask))
    return out


def test_layout_formats_and_variety(synth: Path) -> None:
    train, test = synth / "TrainDataset", synth / "TestDataset" / make_synthetic_cod.TEST_SET
    assert sorted(p.suffix for p in (train / "Imgs").iterdir()) == [".jpg"] * 48
    assert sorted(p.suffix for p in (train / "GT").iterdir()) == [".png"] * 48
    assert len(list((test / "Imgs").iterdir())) == len(list((test / "GT").iterdir())) == 12
    data = pairs(train) + pairs(test)
    shapes = {img.shape[:2] for img, _ in data}
    assert len(shapes) > 20 and any(h > w for h, w in shapes) and any(h < w for h, w in shapes)
    for img, mask in data:
        assert mask.ndim == 2 and mask.shape == img.shape[:2] and set(np.unique(mask)) <= {0, 255}


def test_object_statistics_are_camouflage_like(synth: Path) -> None:
    data = pairs(synth / "TrainDataset") + pairs(synth / "TestDataset" / make_synthetic_cod.TEST_SET)
    areas = [float((m > 0).mean()) for _, m in data]
    assert 0 < sum(a == 0 for a in areas) < 0.25 * len(areas)  # some images have no object
    filled = [a for a in areas if a > 0]
    assert 0.04 < np.mean(filled) < 0.35 and max(filled) < 0.7
    several = sum(cv2.connectedComponents((m > 0).astype(np.uint8))[0] > 2 for _, m in data)
    assert several >= 5  # several objects per image happen
    dists, contrasts = [], []
    for img, mask in data:
        obj = mask > 0
        if obj.sum() < 30:
            continue
        ring = cv2.dilate(mask, np.ones((15, 15), np.uint8)) > 0
        ring &= ~cv2.dilate(mask, np.ones((5, 5), np.uint8)).astype(bool)
        mean_obj, mean_ring = img[obj].mean(0), img[ring].mean(0)
        dists.append(float(np.linalg.norm(mean_obj - mean_ring)))
        contrasts.append(float(img[~obj].std(0).mean()))
    # the object's mean colour is close to its surroundings, relative to the texture's own contrast
    assert np.median(dists) < 25 and np.median(dists) < 0.8 * np.median(contrasts)
    assert np.median(dists) > 2  # ... but not identical: colour is one of the (weak) cues


def test_generation_is_deterministic_and_difficulty_matters() -> None:
    a = make_synthetic_cod.make_image(1, 0, 5, 80, 0.5)
    b = make_synthetic_cod.make_image(1, 0, 5, 80, 0.5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = make_synthetic_cod.make_image(1, 1, 5, 80, 0.5)  # the test split draws other images
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])
    easy, hard = (make_synthetic_cod.make_image(1, 0, 5, 80, d) for d in (0.0, 1.0))
    assert np.array_equal(easy[1], hard[1]) and not np.array_equal(easy[0], hard[0])


def test_builders_and_loader_on_the_generated_set(synth: Path) -> None:
    cfg = load_config(
        None,
        [
            f"data.root={synth}",
            "data.image_size=64",
            "data.val_fraction=0.1",
            "train.batch_size=8",
            "train.num_workers=0",
        ],
    )
    train, val = datasets.build_train_val(cfg)
    assert (len(train), len(val)) == (43, 5)
    assert list(datasets.build_test_sets(cfg)) == [make_synthetic_cod.TEST_SET]
    loader = datasets.build_loader(train, cfg, train=True)
    datasets.set_epoch(loader, 0)
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 3, 64, 64) and 0 <= batch["image"].min() <= batch["image"].max() <= 1


def test_check_dataset_counts_and_exit_codes(synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert check_dataset.main([str(synth)]) == 0
    out = capsys.readouterr().out
    assert "SynthCOD" in out and " 46\n" in out and "no problems" in out  # 48 - 2 validation images
    bad = tmp_path / "TrainDataset"
    for sub in ("Imgs", "GT"):
        (bad / sub).mkdir(parents=True)
    (bad / "Imgs" / "x.jpg").write_bytes(b"")
    cv2.imwrite(str(bad / "GT" / "y.png"), np.zeros((4, 4), np.uint8))
    assert check_dataset.main([str(tmp_path), "--fast"]) == 1
    out = capsys.readouterr().out
    assert str(bad / "Imgs" / "x.jpg") in out and str(bad / "GT" / "y.png") in out
    assert check_dataset.main([str(tmp_path / "missing")]) == 1


def test_bench_reports_a_rate() -> None:
    r = bench_data.bench(size=64, n_images=3, seconds=0.2)
    assert r["images_per_s_per_worker"] > 0 and r["images_per_cpu_s"] > 0
