"""test.py end to end: scoring saved maps, evaluating a checkpoint, predicting own images, user errors."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_evaluation import library_scores  # the same oracle (tests/ is on sys.path under pytest)

from build import build_model
from evaluation.names import COD_KEYS, OVERLAP_KEYS
from helpers import ROOT, load_test_cli

SCORED = (*COD_KEYS, *OVERLAP_KEYS)  # the default set of a benchmark outside the COD and DIS registries

# The S-measure paper's demo: two masks and six published methods' maps (BSD-3-Clause; tests/data/README.md).
DEMO = ROOT / "tests" / "data" / "smeasure-demo"
METHODS = ("DCL", "DISC", "MDF", "dhsnet", "mc", "rfcn")


@pytest.fixture(scope="module")
def cli():
    return load_test_cli("e2net_test_cli")


def direct_scores(pairs: list[tuple[Path, Path]]) -> dict:
    """PySODMetrics used directly, the way its README does (cv2.IMREAD_GRAYSCALE, no resizing)."""
    return library_scores(
        [(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), cv2.imread(str(g), cv2.IMREAD_GRAYSCALE)) for p, g in pairs]
    )


def demo_layout(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """Data root with TestDataset/DEMO/{Imgs,GT} and one maps folder per method (DIR/DEMO/<gt stem>.png)."""
    bench = tmp_path / "data" / "TestDataset" / "DEMO"
    shutil.copytree(DEMO / "GT", bench / "GT")
    shutil.copytree(DEMO / "GT", bench / "Imgs")  # stand-in images: only the masks are read
    preds = {}
    for method in METHODS:
        folder = tmp_path / "maps" / method
        (folder / "DEMO").mkdir(parents=True)
        for gt in (DEMO / "GT").iterdir():
            shutil.copy(DEMO / "FG" / f"{gt.stem}_{method}.png", folder / "DEMO" / gt.name)
        preds[method] = folder
    return tmp_path / "data", preds


# ---------------------------------------------------------------- --preds
def test_preds_mode_matches_pysodmetrics_on_the_smeasure_demo(cli, tmp_path: Path, capsys, caplog) -> None:
    data_root, preds = demo_layout(tmp_path)
    argv = [x for m in METHODS for x in ("--preds", str(preds[m]))]
    with caplog.at_level(logging.WARNING):
        rc = cli.main(argv + ["--data-root", str(data_root), "--out", str(tmp_path / "out"), "--workers", "1"])
    assert rc == 0
    for method in METHODS:
        ours = json.loads((tmp_path / "out" / method / "results.json").read_text())["DEMO"]
        assert list(ours) == [*SCORED, "n_images"] and ours["n_images"] == 2
        ref = direct_scores([(DEMO / "FG" / f"{g}_{method}.png", DEMO / "GT" / f"{g}.png") for g in ("0021", "846")])
        for k in SCORED:
            assert abs(ours[k] - ref[k]) <= 1e-12, (method, k, ours[k], ref[k])
    table = capsys.readouterr().out
    assert "DEMO (n=2)" in table and all(m in table for m in METHODS)
    md = (tmp_path / "out" / "results.md").read_text()
    assert sum(line.startswith(f"| {m} |") for line in md.splitlines() for m in METHODS) == 6
    assert (tmp_path / "out" / "results.csv").is_file() and (tmp_path / "out" / "curves" / "DEMO.png").is_file()
    # DISC's maps are 3-channel and mc's are 16-bit: said, by file name.
    assert "DISC/DEMO: 2 maps are colour images" in caplog.text and "mc/DEMO: 2 maps are 16-bit" in caplog.text


def test_metrics_flag_writes_only_the_chosen_metrics(cli, tmp_path: Path) -> None:
    data_root, preds = demo_layout(tmp_path)
    argv = ["--preds", str(preds["DCL"]), "--data-root", str(data_root), "--out", str(tmp_path / "out")]
    assert cli.main([*argv, "--workers", "1", "--no-report", "--metrics", "mIoU,Sm"]) == 0
    ours = json.loads((tmp_path / "out" / "results.json").read_text())["DEMO"]
    assert list(ours) == ["Sm", "mIoU", "n_images"]  # in column order, whatever the order asked
    ref = direct_scores([(DEMO / "FG" / f"{g}_DCL.png", DEMO / "GT" / f"{g}.png") for g in ("0021", "846")])
    assert abs(ours["Sm"] - ref["Sm"]) <= 1e-12 and abs(ours["mIoU"] - ref["mIoU"]) <= 1e-12


def test_preds_mode_reports_unmatched_benchmarks_as_an_error(cli, tmp_path: Path, capsys) -> None:
    bench = tmp_path / "data" / "TestDataset" / "CAMO"
    for sub in ("Imgs", "GT"):
        (bench / sub).mkdir(parents=True)
        cv2.imwrite(str(bench / sub / "a.png"), np.zeros((8, 8), np.uint8))
    (tmp_path / "maps" / "NC4K").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "maps" / "NC4K" / "a.png"), np.zeros((8, 8), np.uint8))
    rc = cli.main(
        [
            "--preds",
            str(tmp_path / "maps"),
            "--data-root",
            str(tmp_path / "data"),
            "--workers",
            "1",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("test.py: error:") and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- user errors
def _error(cli, capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_errors_are_one_clear_line(cli, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "flat").mkdir()
    cv2.imwrite(str(tmp_path / "flat" / "x.png"), np.zeros((4, 4), np.uint8))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    fake_ckpt = tmp_path / "best.pth"
    fake_ckpt.write_bytes(b"x")
    cases = {
        "give either --ckpt": [],
        "no such file": ["--ckpt", str(tmp_path / "missing.pth")],
        "holds no images": ["--ckpt", str(fake_ckpt), "--images", str(tmp_path / "notes")],
        "is not a folder": ["--ckpt", str(fake_ckpt), "--images", str(tmp_path / "nowhere")],
        "has no prediction maps": ["--preds", str(tmp_path / "empty"), "--data-root", str(tmp_path)],
        "holds maps directly": ["--preds", str(tmp_path / "flat"), "--data-root", str(tmp_path)],
        "does not exist": ["--preds", str(tmp_path / "nowhere"), "--data-root", str(tmp_path)],
        "needs --data-root": ["--preds", str(tmp_path / "flat")],
        "apply to --ckpt only": ["--preds", str(tmp_path / "flat"), "--data-root", str(tmp_path), "eval.batch_size=2"],
        "--workers must be >= 0": ["--ckpt", str(fake_ckpt), "--workers", "-1"],
        "unknown metric(s) Sharpness": ["--ckpt", str(fake_ckpt), "--metrics", "Sm,Sharpness"],
        "name at least one metric": ["--ckpt", str(fake_ckpt), "--metrics", ""],
    }
    for expected, argv in cases.items():
        line = _error(cli, capsys, argv)
        assert expected in line, (argv, line)


def test_bad_checkpoint_fails_with_one_line(cli, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "best.pth"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    assert cli.main(["--ckpt", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("test.py: error: checkpoint") and str(bad) in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- --ckpt (needs the model, data and engine parts)
def make_checkpoint(path: Path, tiny_dinov3: Path, data: Path, run_folder: bool) -> Path:
    """A checkpoint of a tiny random model at ``path``; ``run_folder``: beside a config.yaml, as train.py writes."""
    import torch

    from config import load_config, save_config, to_dict
    from engine.checkpoint import save_checkpoint

    cfg = load_config(
        None,
        [
            f"model.encoder.pretrained_path={tiny_dinov3}",
            f"data.root={data}",
            "data.image_size=64",
            "model.channels=32",
            "eval.batch_size=2",
            "train.num_workers=0",
            "train.amp=off",
        ],
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    state = {"model": model.trainable_state_dict(), "config": to_dict(cfg), "epoch": 1, "step": 3, "best": None}
    save_checkpoint(path, {**state, "versions": {}})
    if run_folder:
        save_config(cfg, path.parent / "config.yaml")
    return path


def test_checkpoint_mode_end_to_end(cli, tmp_path: Path, tiny_dinov3: Path, capsys) -> None:
    from scripts.make_synthetic_cod import generate

    data = tmp_path / "data"
    generate(data, n_train=0, n_test=5, size=72, seed=0)
    ckpt = make_checkpoint(tmp_path / "run" / "best.pth", tiny_dinov3, data, run_folder=True)

    # (a) evaluate: default output folder <run folder>/test/<ckpt name>/
    assert cli.main(["--ckpt", str(ckpt), "--workers", "1", "train.amp=off"]) == 0
    out = tmp_path / "run" / "test" / "best"
    results = json.loads((out / "results.json").read_text())
    bench = next(iter(results))
    assert list(results[bench]) == [*SCORED, "n_images"] and results[bench]["n_images"] == 5
    masks = sorted((data / "TestDataset" / bench / "GT").iterdir())
    for mask in masks:  # maps are at each mask's original size
        pred = cv2.imread(str(out / "preds" / bench / mask.name), cv2.IMREAD_UNCHANGED)
        assert pred.dtype == np.uint8 and pred.shape == cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE).shape
    assert (out / "results.md").is_file() and (out / "curves" / f"{bench}.png").is_file()
    assert "run/best" in capsys.readouterr().out

    # (b) the written maps scored through --preds give the same numbers
    assert (
        cli.main(
            [
                "--preds",
                str(out / "preds"),
                "--data-root",
                str(data),
                "--out",
                str(tmp_path / "again"),
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "again" / "results.json").read_text()) == results

    # (c) own images of any size; unreadable files are skipped with a message
    own = tmp_path / "photos"
    own.mkdir()
    for img in sorted((data / "TestDataset" / bench / "Imgs").iterdir())[:2]:
        shutil.copy(img, own / img.name)
    cv2.imwrite(str(own / "wide.png"), np.full((40, 130, 3), 90, np.uint8))
    (own / "empty.jpg").write_bytes(b"")
    (own / "text.png").write_text("not an image")
    assert cli.main(["--ckpt", str(ckpt), "--images", str(own), "--out", str(tmp_path / "pred"), "train.amp=off"]) == 0
    written = sorted(p.stem for p in (tmp_path / "pred" / "masks").iterdir())
    assert written == sorted(p.stem for p in own.iterdir() if p.stem not in ("empty", "text"))
    wide = cv2.imread(str(tmp_path / "pred" / "overlays" / "wide.jpg"))
    assert cv2.imread(str(tmp_path / "pred" / "masks" / "wide.png"), cv2.IMREAD_UNCHANGED).shape == (40, 130)
    assert wide.shape == (40, 260, 3)  # image | overlay


def write_any(path: Path, array: np.ndarray) -> None:
    """cv2.imwrite for every extension: PPM files hold colour, PGM files grey."""
    if path.suffix == ".ppm" and array.ndim == 2:
        array = cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
    elif path.suffix == ".pgm" and array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2GRAY)
    assert cv2.imwrite(str(path), array), path


def test_every_supported_format_is_seen_alike_by_ckpt_preds_and_images(
    cli, tmp_path: Path, tiny_dinov3: Path, monkeypatch
) -> None:
    """One benchmark holding every image extension (and every mask extension): --ckpt predicts
    them all, --preds scores them all (maps in every mask format too), and --images gives
    byte-identical maps from the same files. Outputs default to outputs/, not beside the code."""
    from cod_benchmarks import IMAGE_EXTS, MASK_EXTS

    rng = np.random.default_rng(0)
    bench = tmp_path / "data" / "TestDataset" / "ALL"
    (bench / "Imgs").mkdir(parents=True)
    (bench / "GT").mkdir()
    stems = []
    for i, ext in enumerate(IMAGE_EXTS):
        stem = f"img{i:02d}_{ext[1:]}"
        h, w = 150 + 7 * i, 170 - 5 * i  # large enough for a reduced JPEG decode at 64 px
        mask = np.zeros((h, w), np.uint8)
        cv2.circle(mask, (w // 2 + i, h // 2), 30 + i, 255, -1)
        image = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 2)
        image[mask > 0] //= 2
        write_any(bench / "Imgs" / f"{stem}{ext}", image)
        write_any(bench / "GT" / f"{stem}{MASK_EXTS[i % len(MASK_EXTS)]}", mask)
        stems.append(stem)
    ckpt = make_checkpoint(tmp_path / "best.pth", tiny_dinov3, tmp_path / "data", run_folder=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    # --ckpt: every format found; a checkpoint outside a run folder writes under outputs/
    assert cli.main(["--ckpt", str(ckpt), "--workers", "1", "eval.batch_size=1", "train.amp=off"]) == 0
    out = cwd / "outputs" / "test" / "best"
    assert json.loads((out / "results.json").read_text())["ALL"]["n_images"] == len(IMAGE_EXTS)
    assert sorted(p.stem for p in (out / "preds" / "ALL").iterdir()) == stems
    assert sorted(p.name for p in cwd.iterdir()) == ["outputs"]

    # --preds: the same masks found, and maps in every mask format
    maps = tmp_path / "maps" / "ALL"
    maps.mkdir(parents=True)
    for i, stem in enumerate(stems):
        pred = cv2.imread(str(out / "preds" / "ALL" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        write_any(maps / f"{stem}{MASK_EXTS[(i + 3) % len(MASK_EXTS)]}", pred)
    for folder in (out / "preds", tmp_path / "maps"):
        again = tmp_path / "scores" / folder.parent.name
        assert cli.main(["--preds", str(folder), "--data-root", str(tmp_path / "data"), "--out", str(again)]) == 0
        assert json.loads((again / "results.json").read_text())["ALL"]["n_images"] == len(IMAGE_EXTS)

    # --images: the same files give the same maps, byte for byte
    assert cli.main(["--ckpt", str(ckpt), "--images", str(bench / "Imgs"), "eval.batch_size=1", "train.amp=off"]) == 0
    own = cwd / "outputs" / "predict" / "Imgs" / "masks"
    for stem in stems:
        a = cv2.imread(str(own / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(out / "preds" / "ALL" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert a.shape == b.shape and np.array_equal(a, b), stem


def test_preds_mode_needs_masks_only_and_refuses_two_maps_for_one_image(cli, tmp_path: Path, capsys) -> None:
    gt = tmp_path / "data" / "TestDataset" / "CAMO" / "GT"  # no Imgs/: scoring maps never reads an image
    gt.mkdir(parents=True)
    maps = tmp_path / "maps" / "CAMO"
    maps.mkdir(parents=True)
    mask = np.zeros((24, 32), np.uint8)
    mask[6:18, 8:20] = 255
    for stem in ("a", "b"):
        cv2.imwrite(str(gt / f"{stem}.png"), mask)
        cv2.imwrite(str(maps / f"{stem}.png"), cv2.GaussianBlur(mask, (0, 0), 3))
    argv = ["--preds", str(tmp_path / "maps"), "--data-root", str(tmp_path / "data"), "--workers", "1"]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["CAMO"]["n_images"] == 2

    cv2.imwrite(str(maps / "b.jpg"), np.zeros((24, 32), np.uint8))  # a stale export beside b.png
    assert cli.main([*argv, "--out", str(tmp_path / "out2")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "two maps for one image" in err[0] and "b.png and b.jpg" in err[0]
    assert not (tmp_path / "out2" / "results.json").exists()
