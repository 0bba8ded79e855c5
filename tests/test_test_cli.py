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

from config import METRIC_KEYS
from helpers import load_test_cli

ROOT = Path(__file__).resolve().parents[1]
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
        assert list(ours) == [*METRIC_KEYS, "n_images"] and ours["n_images"] == 2
        ref = direct_scores([(DEMO / "FG" / f"{g}_{method}.png", DEMO / "GT" / f"{g}.png") for g in ("0021", "846")])
        for k in METRIC_KEYS:
            assert abs(ours[k] - ref[k]) <= 1e-12, (method, k, ours[k], ref[k])
    table = capsys.readouterr().out
    assert "DEMO (n=2)" in table and all(m in table for m in METHODS)
    md = (tmp_path / "out" / "results.md").read_text()
    assert sum(line.startswith(f"| {m} |") for line in md.splitlines() for m in METHODS) == 6
    assert (tmp_path / "out" / "results.csv").is_file() and (tmp_path / "out" / "curves" / "DEMO.png").is_file()
    # DISC's maps are 3-channel and mc's are 16-bit: said, by file name.
    assert "DISC/DEMO: 2 maps are colour images" in caplog.text and "mc/DEMO: 2 maps are 16-bit" in caplog.text


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
def test_checkpoint_mode_end_to_end(cli, tmp_path: Path, tiny_dinov3: Path, capsys) -> None:
    import torch

    import models
    from config import load_config, to_dict
    from engine.checkpoint import save_checkpoint
    from scripts.make_synthetic_cod import generate

    data = tmp_path / "data"
    generate(data, n_train=0, n_test=5, size=72, seed=0)
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
    model = models.build_model(cfg)
    ckpt = tmp_path / "run" / "best.pth"
    save_checkpoint(
        ckpt,
        {
            "model": model.trainable_state_dict(),
            "config": to_dict(cfg),
            "epoch": 1,
            "step": 3,
            "best": None,
            "versions": {},
        },
    )

    # (a) evaluate: default output folder <ckpt folder>/test/<ckpt name>/
    assert cli.main(["--ckpt", str(ckpt), "--workers", "1"]) == 0
    out = tmp_path / "run" / "test" / "best"
    results = json.loads((out / "results.json").read_text())
    bench = next(iter(results))
    assert list(results[bench]) == [*METRIC_KEYS, "n_images"] and results[bench]["n_images"] == 5
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
    assert cli.main(["--ckpt", str(ckpt), "--images", str(own), "--out", str(tmp_path / "pred")]) == 0
    written = sorted(p.stem for p in (tmp_path / "pred" / "masks").iterdir())
    assert written == sorted(p.stem for p in own.iterdir() if p.stem not in ("empty", "text"))
    wide = cv2.imread(str(tmp_path / "pred" / "overlays" / "wide.jpg"))
    assert cv2.imread(str(tmp_path / "pred" / "masks" / "wide.png"), cv2.IMREAD_UNCHANGED).shape == (40, 130)
    assert wide.shape == (40, 260, 3)  # image | overlay
