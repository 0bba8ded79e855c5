"""report.html: table, curves and gallery from test.py, offline; per-image scores are the scorer's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from evaluation.metrics import image_scores
from evaluation.report import gallery_rows, write_report
from evaluation.scoring import ImageResult
from helpers import load_test_cli


@pytest.fixture(scope="module")
def cli():
    return load_test_cli("e2net_test_cli_report")


def _blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4), rng.integers(h // 6, h // 3)
    return (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).astype(np.uint8) * 255


def make_benchmarks(root: Path, methods: tuple[str, ...], seed: int = 0) -> dict[str, Path]:
    """TestDataset/{CAMO,NC4K}/{Imgs,GT} with 3 and 4 images, and one maps folder per method
    (noisy versions of the masks; NC4K's last image has no map from the last method)."""
    rng = np.random.default_rng(seed)
    preds = {m: root / "maps" / m for m in methods}
    for bench, n in (("CAMO", 3), ("NC4K", 4)):
        for sub in ("Imgs", "GT"):
            (root / "data" / "TestDataset" / bench / sub).mkdir(parents=True)
        for i in range(n):
            h, w = int(rng.integers(300, 420)), int(rng.integers(300, 420))
            gt = _blob(rng, h, w)
            photo = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            cv2.imwrite(str(root / "data" / "TestDataset" / bench / "Imgs" / f"{bench}_{i}.jpg"), photo)
            cv2.imwrite(str(root / "data" / "TestDataset" / bench / "GT" / f"{bench}_{i}.png"), gt)
            for k, m in enumerate(methods):
                if bench == "NC4K" and i == n - 1 and k == len(methods) - 1:
                    continue
                noisy = np.clip(
                    gt.astype(np.float32) * (0.5 + 0.5 * rng.random()) + rng.normal(0, 60, gt.shape), 0, 255
                )
                (preds[m] / bench).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(preds[m] / bench / f"{bench}_{i}.png"), noisy.astype(np.uint8))
    return preds


def _page_data(page: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    match = re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S)
    assert match, "the gallery data is not embedded"
    return json.loads(match.group(1))


def test_preds_run_writes_an_offline_report_with_the_scorers_per_image_values(cli, tmp_path: Path) -> None:
    methods = ("MethodA", "MethodB")
    preds = make_benchmarks(tmp_path, methods)
    out = tmp_path / "out"
    argv = [x for m in methods for x in ("--preds", str(preds[m]))]
    assert cli.main(argv + ["--data-root", str(tmp_path / "data"), "--out", str(out), "--workers", "1"]) == 0

    page = out / "report.html"
    text = page.read_text(encoding="utf-8")
    # Offline: nothing is loaded from the network, every referenced file exists next to the page.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text) and "@import" not in text
    for rel in re.findall(r'src="([^"]+)"', text):
        assert (out / rel).is_file(), rel
    assert "curves/CAMO.png" in text and "curves/NC4K.png" in text
    assert text.count('<th class="run">') == 2  # the results table, one row per method

    data = _page_data(page)
    assert data["runs"] == list(methods) and data["benches"] == ["CAMO", "NC4K"]
    assert len(data["rows"]) == 7
    missing = [r for r in data["rows"] if "1" not in r["m"]]
    assert [(r["b"], r["n"]) for r in missing] == [("NC4K", "NC4K_3")]
    for row in data["rows"]:
        assert (out / row["i"]).is_file() and (out / row["g"]).is_file()
        gt = cv2.imread(str(tmp_path / "data" / "TestDataset" / row["b"] / "GT" / f"{row['n']}.png"), 0)
        for idx, (thumb, sm, mae) in row["m"].items():
            pred = cv2.imread(str(preds[methods[int(idx)]] / row["b"] / f"{row['n']}.png"), 0)
            ref = image_scores(pred, gt)
            assert abs(sm - ref.sm) < 1e-4 and abs(mae - ref.mae) < 1e-4
            with Image.open(out / thumb) as im:
                assert max(im.size) <= 176 and im.mode == "L"
    # The per-image Sm agrees with the table: their mean is the benchmark's Sm.
    results = json.loads((out / "MethodA" / "results.json").read_text())
    camo = [r["m"]["0"][1] for r in data["rows"] if r["b"] == "CAMO"]
    assert abs(np.mean(camo) - results["CAMO"]["Sm"]) < 1e-4


def test_thumbnails_are_written_once_and_redone_when_the_source_changes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    gt, pred, photo = tmp_path / "gt.png", tmp_path / "pred.png", tmp_path / "photo.jpg"
    cv2.imwrite(str(gt), _blob(rng, 200, 300))
    cv2.imwrite(str(pred), _blob(rng, 200, 300))
    cv2.imwrite(str(photo), rng.integers(0, 255, (200, 300, 3), dtype=np.uint8))
    result = ImageResult("x", str(pred), str(gt), 0.5, 0.1)
    rows = gallery_rows({"run/a": {"B": [result]}}, {"B": {"x": str(photo)}})
    runs = {
        "run/a": {
            "B": {
                "Sm": 0.5,
                "wFm": 0.1,
                "MAE": 0.1,
                "n_images": 1,
                **dict.fromkeys(("Em_adp", "Em_mean", "Em_max", "Fm_adp", "Fm_mean", "Fm_max"), 0.2),
            }
        }
    }
    out = tmp_path / "out"
    write_report(out, runs, [], rows, workers=1)
    thumbs = sorted(p for p in (out / "report").rglob("*") if p.is_file())
    assert len(thumbs) == 3 and all(".tmp" not in p.name for p in thumbs)
    before = {p: p.stat().st_mtime_ns for p in thumbs}
    write_report(out, runs, [], rows, workers=1)
    assert {p: p.stat().st_mtime_ns for p in thumbs} == before
    # A new map (a re-run of the checkpoint) replaces its thumbnail, and only that one.
    cv2.imwrite(str(pred), np.full((200, 300), 255, np.uint8))
    write_report(out, runs, [], rows, workers=1)
    changed = [p for p in thumbs if p.stat().st_mtime_ns != before[p]]
    assert len(changed) == 1 and np.asarray(Image.open(changed[0])).min() == 255


def test_map_thumbnails_show_what_was_scored(tmp_path: Path) -> None:
    """A 16-bit map is scored by its high byte (cv2.IMREAD_GRAYSCALE); its thumbnail shows the same grey levels."""
    ramp = (np.arange(64, dtype=np.uint16)[None, :].repeat(32, 0) * 1024 + 300).astype(np.uint16)
    pred, gt = tmp_path / "pred16.png", tmp_path / "gt.png"
    cv2.imwrite(str(pred), ramp)
    cv2.imwrite(str(gt), np.zeros((32, 64), np.uint8))
    rows = gallery_rows({"m": {"B": [ImageResult("x", str(pred), str(gt), 0.5, 0.1)]}}, {})
    write_report(tmp_path / "out", {"m": {}}, [], rows, workers=1)
    thumb = np.asarray(Image.open(tmp_path / "out" / "report" / "B" / "m0_m" / "x.png"))
    assert thumb.shape == (32, 64)
    assert np.abs(thumb.astype(int) - cv2.imread(str(pred), cv2.IMREAD_GRAYSCALE)).max() <= 2
    assert thumb.max() >= 250 and thumb.min() <= 2  # not clipped to white as a plain 16-to-8-bit cast would


def test_a_decompression_bomb_among_the_photos_is_an_empty_thumbnail(cli, tmp_path: Path, caplog) -> None:
    """--preds: a photo whose header declares 20000 x 20000 pixels is read as the test sets read photos
    (header checked first): its thumbnail is left out with one warning naming it, the report is written."""
    from test_hostile import _png_bomb

    preds = make_benchmarks(tmp_path, ("MethodA",))["MethodA"]
    photos = tmp_path / "data" / "TestDataset" / "CAMO" / "Imgs"
    (photos / "CAMO_1.jpg").unlink()
    _png_bomb(photos / "CAMO_1.png", side=20_000)
    out = tmp_path / "out"
    assert cli.main(["--preds", str(preds), "--data-root", str(tmp_path / "data"), "--out", str(out)]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "thumbnail" in r.getMessage()]
    assert len(warned) == 1 and "CAMO_1.png: decompression bomb" in warned[0], warned
    rows = {r["n"]: r for r in _page_data(out / "report.html")["rows"]}
    assert len(rows) == 6 and not (out / rows["CAMO_1"]["i"]).exists() and (out / rows["CAMO_0"]["i"]).is_file()
