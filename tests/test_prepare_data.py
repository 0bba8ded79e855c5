"""scripts/prepare_data.py on small trees shaped like the official COD10K-v3, CAMO, CHAMELEON and NC4K archives."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import datasets
from scripts import prepare_data


def touch(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(n.encode())  # content = name: a copy or link can be traced back


def cod10k_name(i: int, cam: bool) -> str:
    return f"COD10K-{'CAM' if cam else 'NonCAM'}-1-Aquatic-1-BatFish-{i}"


def make_downloads(root: Path, counts: dict[tuple[str, str], int]) -> Path:
    """Archives as they unpack; ``counts[(benchmark, split)]`` camouflaged image/mask pairs each."""
    dl = root / "downloads"
    cod = dl / "COD10K-v3"
    for split, sub in (("train", "Train"), ("test", "Test")):
        n = counts[("COD10K", split)]
        cam = [cod10k_name(i, True) for i in range(n)]
        non = [cod10k_name(i, False) for i in range(3)]  # non-camouflaged: not part of the benchmark
        touch(cod / sub / "Image", [f"{s}.jpg" for s in cam + non])
        touch(cod / sub / "GT_Object", [f"{s}.png" for s in cam])
        touch(cod / sub / "GT_Edge", [f"{s}.png" for s in cam])  # other annotation folders are ignored
    camo = dl / "CAMO-V.1.0-CVIU2019"  # one GT folder for both splits
    n_tr, n_te = counts[("CAMO", "train")], counts[("CAMO", "test")]
    touch(camo / "Images" / "Train", [f"camourflage_{i:05d}.jpg" for i in range(n_tr)])
    touch(camo / "Images" / "Test", [f"camourflage_{i:05d}.jpg" for i in range(n_tr, n_tr + n_te)])
    touch(camo / "GT", [f"camourflage_{i:05d}.png" for i in range(n_tr + n_te)])
    # Zips often unpack into a folder of the same name.
    touch(dl / "CHAMELEON" / "CHAMELEON" / "Image", [f"animal-{i}.jpg" for i in range(counts[("CHAMELEON", "test")])])
    touch(dl / "CHAMELEON" / "CHAMELEON" / "GT", [f"animal-{i}.png" for i in range(counts[("CHAMELEON", "test")])])
    touch(dl / "NC4K" / "Imgs", [f"{i}.jpg" for i in range(counts[("NC4K", "test")])])
    touch(dl / "NC4K" / "GT", [f"{i}.png" for i in range(counts[("NC4K", "test")])])
    return dl


PUBLISHED = {
    ("COD10K", "train"): 3040,
    ("CAMO", "train"): 1000,
    ("COD10K", "test"): 2026,
    ("CAMO", "test"): 250,
    ("CHAMELEON", "test"): 76,
    ("NC4K", "test"): 4121,
}


def test_published_counts_give_the_layout_and_a_clean_report(tmp_path: Path, capsys, monkeypatch) -> None:
    # The published counts divided by 20 (10,513 files would make a slow test; the logic is the same).
    small = {k: max(1, v // 20) for k, v in PUBLISHED.items()}
    archives = tuple(
        dataclasses.replace(
            a, parts=tuple(dataclasses.replace(p, published=small[(p.benchmark, p.split)]) for p in a.parts)
        )
        for a in prepare_data.ARCHIVES
    )
    monkeypatch.setattr(prepare_data, "ARCHIVES", archives)
    dl = make_downloads(tmp_path, small)
    out = tmp_path / "COD"
    assert prepare_data.main(["--downloads", str(dl), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "every given archive matches the published counts" in text
    assert "train  total         202       202" in text
    assert "6 non-camouflaged images left out" not in text and "3 non-camouflaged images left out" in text
    train = out / "TrainDataset"
    assert len(list((train / "Imgs").iterdir())) == len(list((train / "GT").iterdir())) == 202
    for bench, n in (("CAMO", 12), ("CHAMELEON", 3), ("COD10K", 101), ("NC4K", 206)):
        assert len(list((out / "TestDataset" / bench / "Imgs").iterdir())) == n
        assert len(list((out / "TestDataset" / bench / "GT").iterdir())) == n
    link = out / "TestDataset" / "COD10K" / "Imgs" / f"{cod10k_name(7, True)}.jpg"
    assert link.is_symlink() and link.read_bytes() == link.name.encode()
    assert not any("NonCAM" in p.name for p in (train / "Imgs").iterdir())
    # The data package reads the result as it is.
    assert list(datasets.find_benchmark_dirs(out)) == ["CAMO", "CHAMELEON", "COD10K", "NC4K"]


def test_every_difference_is_reported_by_name(tmp_path: Path, capsys) -> None:
    counts = dict.fromkeys(PUBLISHED, 3)
    dl = make_downloads(tmp_path, counts)
    (dl / "NC4K" / "GT" / "1.png").unlink()  # an image without its mask
    touch(dl / "NC4K" / "GT", ["stray.png", "._0.png"])  # a mask without image; macOS metadata is ignored
    out = tmp_path / "COD"
    argv = ["--cod10k", str(dl / "COD10K-v3"), "--nc4k", str(dl / "NC4K"), "--out", str(out), "--copy"]
    assert prepare_data.main(argv) == 1
    text = capsys.readouterr().out
    assert "train  COD10K          3      3040  DIFFERS by -3037" in text
    assert "test   NC4K            2      4121  DIFFERS by -4119" in text
    assert "train  CAMO            -      1000  not given (skipped)" in text
    assert "NC4K test: 1 image(s) have no mask" in text and "1.jpg" in text
    assert "NC4K test: 1 mask(s) have no image" in text and "stray.png" in text
    assert "._0" not in text
    copied = out / "TestDataset" / "NC4K" / "Imgs" / "0.jpg"
    assert copied.is_file() and not copied.is_symlink()
    assert not (out / "TestDataset" / "CAMO").exists()
    # A second run replaces its own files and gives the same result.
    assert prepare_data.main(argv) == 1
    assert sorted(p.name for p in (out / "TestDataset" / "NC4K" / "GT").iterdir()) == ["0.png", "2.png"]


def test_nothing_found_is_one_clear_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        prepare_data.main(["--downloads", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "no archive found" in capsys.readouterr().err.strip().splitlines()[-1]
