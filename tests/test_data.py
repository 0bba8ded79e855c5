"""Data layouts, every bad-data case, and the validation split (datasets/ build side)."""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import datasets
from config import load_config
from datasets import DatasetError
from datasets.build import split_train_val
from datasets.problems import BadFile
from datasets.reading import probe


# ----------------------------------------------------------------------------- helpers
def write_pair(
    folder: Path,
    stem: str,
    h: int = 40,
    w: int = 60,
    img_dir: str = "Imgs",
    gt_dir: str = "GT",
    img_ext: str = ".jpg",
    mask_shape: tuple[int, int] | None = None,
) -> tuple[Path, Path]:
    (folder / img_dir).mkdir(parents=True, exist_ok=True)
    (folder / gt_dir).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(stem.encode()))
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    mh, mw = mask_shape or (h, w)
    mask = np.zeros((mh, mw), np.uint8)
    mask[mh // 4 : mh // 2, mw // 4 : mw // 2] = 255
    ip, mp = folder / img_dir / f"{stem}{img_ext}", folder / gt_dir / f"{stem}.png"
    assert cv2.imwrite(str(ip), img) and cv2.imwrite(str(mp), mask)
    return ip, mp


def cfg_for(root: Path, *overrides: str):
    return load_config(None, [f"data.root={root}", "data.image_size=32", "data.val_fraction=0", *overrides])


def png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> None:
    """A tiny PNG whose header declares width x height (valid CRCs, so only the size check stops it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------- layouts
@pytest.mark.parametrize(
    "img_dir,gt_dir,top",
    [
        ("Imgs", "GT", "TrainDataset"),
        ("Image", "GT", "TrainDataset"),
        ("images", "masks", "TrainDataset"),
        ("Imgs", "Mask", "TrainValDataset"),
    ],
)
def test_training_layouts_of_the_field(tmp_path: Path, img_dir: str, gt_dir: str, top: str) -> None:
    for i, ext in enumerate([".jpg", ".JPG", ".jpeg", ".png", ".bmp", ".Png"]):
        write_pair(tmp_path / top, f"im{i}", img_dir=img_dir, gt_dir=gt_dir, img_ext=ext)
    train, val = datasets.build_train_val(cfg_for(tmp_path))  # data.train defaults to [TrainDataset]
    assert len(train) == 6 and val is None
    assert sorted(s.name for s in train.samples) == [f"im{i}" for i in range(6)]


def test_several_training_folders(tmp_path: Path) -> None:
    write_pair(tmp_path / "COD10K-train", "a")
    write_pair(tmp_path / "CAMO-train", "b", img_dir="Image")
    train, _ = datasets.build_train_val(cfg_for(tmp_path, "data.train=[COD10K-train,CAMO-train]"))
    assert {s.name for s in train.samples} == {"a", "b"}


def test_missing_root_and_wrong_layout_say_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="make_synthetic_cod.py"):
        datasets.build_train_val(cfg_for(tmp_path / "nowhere"))
    (tmp_path / "TrainDataset" / "pictures").mkdir(parents=True)
    with pytest.raises(DatasetError, match="pictures"):
        datasets.build_train_val(cfg_for(tmp_path))
    with pytest.raises(DatasetError, match="TrainDataset"):
        datasets.build_train_val(cfg_for(tmp_path, "data.train=[Other]"))


def test_benchmark_discovery_order_and_cod10k_filter(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    test = tmp_path / "TestDataset"
    for name in ("NC4K", "Extra", "CAMO", "COD10K", "CHAMELEON"):
        write_pair(test / name, f"{name}-1")
    write_pair(test / "COD10K", "COD10K-CAM-1-Aquatic-1-Crab-1")
    write_pair(test / "COD10K", "COD10K-NonCAM-5-Background-1")
    found = datasets.find_benchmark_dirs(tmp_path)
    assert list(found) == ["CAMO", "CHAMELEON", "COD10K", "NC4K", "Extra"]
    assert datasets.find_benchmark_dirs(test, ["nc4k"]) == {"NC4K": found["NC4K"]}
    with pytest.raises(DatasetError, match="CAMO, CHAMELEON"):
        datasets.find_benchmark_dirs(tmp_path, ["CHAMO"])
    with caplog.at_level(logging.WARNING):
        sets = datasets.build_test_sets(cfg_for(tmp_path, "data.test_sets=[COD10K,CAMO]"))
    assert list(sets) == ["COD10K", "CAMO"]
    assert [s.name for s in sets["COD10K"].samples] == ["COD10K-CAM-1-Aquatic-1-Crab-1"]
    assert "non-camouflaged" in caplog.text and "COD10K-NonCAM-5-Background-1" in caplog.text
    sample = sets["CAMO"][0]
    assert sample["name"] == "CAMO-1" and sample["size"] == (40, 60)
    assert sample["mask_path"].endswith("CAMO-1.png") and sample["image"].shape == (3, 32, 32)


# ----------------------------------------------------------------------------- bad data
@pytest.fixture()
def bad_root(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A training folder with 3 good pairs and one of every bad case, plus an empty folder."""
    train = tmp_path / "TrainDataset"
    for i in range(3):
        write_pair(train, f"good{i}")
    bad: dict[str, Path] = {}
    ip, _ = write_pair(train, "truncated", h=120, w=160)
    ip.write_bytes(ip.read_bytes()[: ip.stat().st_size // 2])
    bad["truncated"] = ip
    ip, mp = write_pair(train, "truncpng", img_ext=".png")
    ip.write_bytes(ip.read_bytes()[: ip.stat().st_size // 2])
    bad["truncated png"] = ip
    ip, _ = write_pair(train, "notimage")
    ip.write_bytes(b"<html>this is not an image</html>" * 10)
    bad["not an image"] = ip
    ip, _ = write_pair(train, "zerobyte")
    ip.write_bytes(b"")
    bad["zero-byte"] = ip
    ip, _ = write_pair(train, "brokenlink")
    ip.unlink()
    ip.symlink_to(tmp_path / "missing.jpg")
    bad["broken link"] = ip
    ip, _ = write_pair(train, "bomb", img_ext=".png")
    png_bomb(ip)
    bad["decompression bomb"] = ip
    _, mp = write_pair(train, "corruptmask")
    mp.write_bytes(os.urandom(300))
    bad["corrupt mask"] = mp
    ip, _ = write_pair(train, "nomask")
    (train / "GT" / "nomask.png").unlink()
    bad["image without a mask"] = ip
    _, mp = write_pair(train, "noimage")
    (train / "Imgs" / "noimage.jpg").unlink()
    bad["mask without an image"] = mp
    (tmp_path / "Empty" / "Imgs").mkdir(parents=True)
    (tmp_path / "Empty" / "GT").mkdir(parents=True)
    bad["empty folder"] = tmp_path / "Empty" / "Imgs"
    return tmp_path, bad


def test_every_bad_file_is_listed_once_then_skipped(bad_root, caplog: pytest.LogCaptureFixture) -> None:
    root, bad = bad_root
    with caplog.at_level(logging.WARNING, logger="datasets"):
        train, _ = datasets.build_train_val(cfg_for(root, "data.train=[TrainDataset,Empty]"))
    summaries = [r.getMessage() for r in caplog.records if "problem(s), skipped" in r.getMessage()]
    assert len(summaries) == 1, caplog.text  # one summary for the whole build
    for what, path in bad.items():
        assert str(path) in summaries[0], f"{what} ({path}) missing from the summary"
    for reason in (
        "truncated JPEG",
        "truncated PNG",
        "not an image",
        "zero-byte",
        "broken link",
        "decompression bomb",
        "image without a mask",
        "mask without an image",
        "empty folder",
    ):
        assert reason in summaries[0], reason
    assert sorted(s.name for s in train.samples) == ["good0", "good1", "good2"]
    for i in range(len(train)):  # the survivors all load
        assert train[i]["image"].shape == (3, 32, 32)


def test_strict_mode_fails_at_start_up_listing_everything(bad_root) -> None:
    root, bad = bad_root
    with pytest.raises(DatasetError) as err:
        datasets.build_train_val(cfg_for(root, "data.train=[TrainDataset,Empty]", "data.strict=true"))
    for path in bad.values():
        assert str(path) in str(err.value)
    assert "data.strict=false" in str(err.value)


def test_data_appended_after_the_end_marker_is_not_truncation(tmp_path: Path) -> None:
    ip, _ = write_pair(tmp_path, "trailer")
    ip.write_bytes(ip.read_bytes() + b"camera maker notes " * 200)  # > the 1 KB tail that is searched
    assert probe(ip, 10**8).format == "JPEG"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    ip, _ = write_pair(tmp_path, "locked")
    ip.chmod(0)
    with pytest.raises(BadFile, match="cannot be read"):
        probe(ip, 10**8)


def test_bomb_by_max_pixels_and_nothing_usable(tmp_path: Path) -> None:
    write_pair(tmp_path / "TrainDataset", "big", h=200, w=300)
    with pytest.raises(DatasetError, match="no usable training images"):
        datasets.build_train_val(cfg_for(tmp_path, "data.max_pixels=10000"))


def test_corruption_inside_a_file_is_caught_by_verify(tmp_path: Path) -> None:
    write_pair(tmp_path / "TrainDataset", "ok")
    ip, _ = write_pair(tmp_path / "TrainDataset", "garbled", h=64, w=64, img_ext=".png")
    data = bytearray(ip.read_bytes())
    mid = data.index(b"IDAT") + 200
    data[mid : mid + 400] = os.urandom(400)  # a broken zlib stream; header and IEND intact
    ip.write_bytes(bytes(data))
    probe(ip, 10**8)  # the cheap check cannot see it
    assert len(datasets.build_train_val(cfg_for(tmp_path))[0]) == 2
    train, _ = datasets.build_train_val(cfg_for(tmp_path, "data.verify=true"))
    assert [s.name for s in train.samples] == ["ok"]


def test_file_broken_after_build_never_crashes_an_epoch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(3):
        write_pair(tmp_path / "TrainDataset", f"s{i}")
        write_pair(tmp_path / "TestDataset" / "CAMO", f"t{i}")
    cfg = cfg_for(tmp_path)
    train, _ = datasets.build_train_val(cfg)
    test = datasets.build_test_sets(cfg)["CAMO"]
    Path(train.samples[1].image_path).write_bytes(b"gone")
    Path(test.samples[1].image_path).unlink()
    with caplog.at_level(logging.WARNING):
        assert train[1]["name"] == "s2"  # the next sample stands in
        blank = test[1]  # evaluation keeps the name so predictions stay aligned with ground truth
    assert blank["name"] == "t1" and float(blank["image"].abs().sum()) == 0.0
    assert "s1" in caplog.text and "t1" in caplog.text


def test_max_pixels_holds_at_every_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(2):
        write_pair(tmp_path / "TrainDataset", f"s{i}")
        write_pair(tmp_path / "TestDataset" / "CAMO", f"t{i}")
    cfg = cfg_for(tmp_path, "data.max_pixels=10000")  # 40x60 passes; 200x300 does not
    train, _ = datasets.build_train_val(cfg)
    test = datasets.build_test_sets(cfg)["CAMO"]
    big = np.full((200, 300, 3), 200, np.uint8)  # swapped in after the build-time check
    cv2.imwrite(train.samples[0].image_path, big)
    cv2.imwrite(test.samples[0].image_path, big)
    with caplog.at_level(logging.WARNING):
        assert train[0]["name"] == "s1"  # the next sample stands in
        blank = test[0]
    assert blank["name"] == "t0" and float(blank["image"].abs().sum()) == 0.0
    assert caplog.text.count("data.max_pixels=10,000") == 2


@pytest.mark.parametrize("peak", [255, 65535])
def test_16_bit_masks_are_read_by_their_own_range(tmp_path: Path, peak: int) -> None:
    from evaluation.maps import read_mask as scoring_mask

    write_pair(tmp_path / "TrainDataset", "deep")
    _, mp = write_pair(tmp_path / "TestDataset" / "CAMO", "deep")
    eight = cv2.imread(str(mp), cv2.IMREAD_GRAYSCALE)
    assert cv2.imwrite(str(mp), (eight > 0).astype(np.uint16) * peak)
    assert cv2.imread(str(mp), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert np.array_equal(scoring_mask(mp), eight)  # what --ckpt and --preds score against
    test = datasets.build_test_sets(cfg_for(tmp_path, "data.image_size=40"))["CAMO"]
    mask = test[0]["mask"][0].numpy()  # what validation sees
    assert mask.sum() == pytest.approx((eight > 0).sum() * 40 * 40 / eight.size, rel=0.1)


def test_images_too_small_to_score_are_bad_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from cod_benchmarks import MIN_SIDE

    write_pair(tmp_path / "TestDataset" / "CAMO", "fine")
    write_pair(tmp_path / "TestDataset" / "CAMO", "dot", h=1, w=1)
    write_pair(tmp_path / "TestDataset" / "CAMO", "sliver", h=MIN_SIDE - 1, w=60)
    with caplog.at_level(logging.WARNING):
        test = datasets.build_test_sets(cfg_for(tmp_path))["CAMO"]
    assert [s.name for s in test.samples] == ["fine"]
    assert "dot.jpg: too small (1x1)" in caplog.text and f"sliver.jpg: too small ({MIN_SIDE - 1}x60)" in caplog.text


def test_mask_of_another_size_is_resized_with_a_note(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, mp = write_pair(tmp_path / "TrainDataset", "half", h=40, w=60, mask_shape=(20, 30))
    with caplog.at_level(logging.WARNING):
        train, _ = datasets.build_train_val(cfg_for(tmp_path, "data.strict=true"))  # a note, not a problem
    assert str(mp) in caplog.text and "resized" in caplog.text
    s = datasets.TestTransform()
    out = datasets.CODDataset(train.samples, s, 60)[0]
    assert out["size"] == (20, 30)
    # rows 5:10, cols 7:15 of the 20x30 mask -> rows 10:20, cols 14:30 of the 40x60 image -> at 60x60:
    m = out["mask"][0].numpy()
    assert m[16:29, 15:29].all() and m.sum() == pytest.approx(15 * 16, rel=0.1)


def test_hidden_and_other_files_are_ignored(tmp_path: Path) -> None:
    write_pair(tmp_path / "TrainDataset", "a")
    (tmp_path / "TrainDataset" / "Imgs" / "._a.jpg").write_bytes(b"AppleDouble junk")
    (tmp_path / "TrainDataset" / "Imgs" / "Thumbs.db").write_bytes(b"junk")
    train, _ = datasets.build_train_val(cfg_for(tmp_path, "data.strict=true"))
    assert len(train) == 1


# ----------------------------------------------------------------------------- validation split
def test_validation_is_a_seeded_disjoint_hold_out(tmp_path: Path) -> None:
    for i in range(40):
        write_pair(tmp_path / "TrainDataset", f"im{i:02d}", h=16, w=16)
    cfg = cfg_for(tmp_path, "data.val_fraction=0.25", "train.seed=3")
    train, val = datasets.build_train_val(cfg)
    tr, va = {s.image_path for s in train.samples}, {s.image_path for s in val.samples}
    assert len(va) == 10 and len(tr) == 30 and not tr & va
    again = datasets.build_train_val(cfg)[1]
    assert [s.image_path for s in again.samples] == [s.image_path for s in val.samples]
    other = datasets.build_train_val(cfg_for(tmp_path, "data.val_fraction=0.25", "train.seed=4"))[1]
    assert {s.image_path for s in other.samples} != va
    # a file added later does not move the others across the split
    samples = train.samples + val.samples
    extra = datasets.Sample(str(tmp_path / "TrainDataset" / "Imgs" / "zz.jpg"), "m", "zz", 1, 1, 1, 1)
    tr2, va2 = split_train_val(samples + [extra], 0.25, 3, tmp_path)
    assert len({s.image_path for s in va2} & va) >= 9 and not {s.image_path for s in tr2} & {s.image_path for s in va2}
    # validation samples use the test transform: original size and mask path kept
    v = val[0]
    assert v["size"] == (16, 16) and Path(v["mask_path"]).is_file()


def test_val_set_uses_a_benchmark_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(4):
        write_pair(tmp_path / "TrainDataset", f"tr{i}")
    write_pair(tmp_path / "TestDataset" / "CAMO", "camo0")
    with caplog.at_level(logging.WARNING):
        train, val = datasets.build_train_val(cfg_for(tmp_path, "data.val_fraction=0.5", "data.val_set=CAMO"))
    assert len(train) == 4 and [s.name for s in val.samples] == ["camo0"]
    assert "not a clean protocol" in caplog.text
    with pytest.raises(DatasetError, match="NC4K"):
        datasets.build_train_val(cfg_for(tmp_path, "data.val_set=NC4K"))


# ----------------------------------------------------------------------------- cache
def test_cache_stores_aligned_pre_resized_copies_once(tmp_path: Path) -> None:
    for i in range(3):
        write_pair(tmp_path / "TrainDataset", f"big{i}", h=200, w=300)
    write_pair(tmp_path / "TrainDataset", "small", h=30, w=40)
    cache = tmp_path / "cache"
    cfg = cfg_for(tmp_path, "data.cache=true", f"data.cache_dir={cache}", "data.scale=[0.75,1.0]")
    train, _ = datasets.build_train_val(cfg)
    by_name = {s.name: s for s in train.samples}
    assert Path(by_name["big0"].image_path).parent == cache / "train_40"  # 32 x 1.25
    assert (by_name["big0"].height, by_name["big0"].width) == (40, 60)
    assert by_name["small"].image_path == str(tmp_path / "TrainDataset" / "Imgs" / "small.jpg")  # already small
    mask = cv2.imread(by_name["big0"].mask_path, cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (40, 60) and mask[12:19, 17:29].all() and mask.sum() / 255 == pytest.approx(150, rel=0.2)
    stamp = Path(by_name["big1"].image_path).stat().st_mtime_ns
    again, _ = datasets.build_train_val(cfg)
    assert [s.image_path for s in again.samples] == [s.image_path for s in train.samples]
    assert Path(by_name["big1"].image_path).stat().st_mtime_ns == stamp  # reused, not rewritten
    assert train[0]["image"].shape == (3, 32, 32)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DatasetError, match="data.cache_dir"):
        datasets.build_train_val(cfg_for(tmp_path, "data.cache=true", f"data.cache_dir={blocker}"))
