"""The evaluator: reference values, worker-count invariance, edge cases, file problems, tables, curves."""

from __future__ import annotations

import csv
import json
import logging
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import py_sod_metrics as sod
import pytest

from cod_benchmarks import select_benchmark_images
from evaluation.curves import plot_curves
from evaluation.maps import MapIssues
from evaluation.metrics import CODMetrics, image_scores
from evaluation.names import COD_KEYS, OVERLAP_KEYS
from evaluation.scoring import Scorer, pair_folder, score_folder
from evaluation.tables import format_markdown, format_table, write_results_json, write_tables

# What CODMetrics.results() holds when neither the photo (CCM) nor HCE was asked for.
SCORED = (*COD_KEYS, *OVERLAP_KEYS)
# PySODMetrics' example maps and the scores its own tests assert (MIT; tests/data/README.md).
EXAMPLES = Path(__file__).resolve().parent / "data" / "pysodmetrics-examples"
# results.json key -> the reference file's key
REFERENCE_KEYS = {
    "Sm": "Smeasure",
    "wFm": "wFmeasure",
    "MAE": "MAE",
    "Em_adp": "adpEm",
    "Em_mean": "meanEm",
    "Em_max": "maxEm",
    "Fm_adp": "adpFm",
    "Fm_mean": "meanFm",
    "Fm_max": "maxFm",
}


def library_scores(pairs: list[tuple[np.ndarray, np.ndarray]], clip_em: bool = False) -> dict:
    """The oracle: PySODMetrics' own classes over all pairs, reduced as its README does.

    ``clip_em`` (one pair only): the E-measure values clipped to 1, as ours are (the library
    gives N / (N - 1) where the map matches the mask exactly)."""
    assert not clip_em or len(pairs) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure's deprecation notice
        sm, em, wfm, fm, mae = sod.Smeasure(), sod.Emeasure(), sod.WeightedFmeasure(), sod.Fmeasure(), sod.MAE()
    overlap = sod.FmeasureV2(
        {
            "dice": sod.DICEHandler(with_dynamic=True, with_adaptive=False),
            "iou": sod.IOUHandler(with_dynamic=True, with_adaptive=False),
        }
    )
    for pred, gt in pairs:
        for m in (sm, em, wfm, fm, mae, overlap):
            m.step(pred, gt)
    e, f = em.get_results()["em"], fm.get_results()["fm"]
    dice, iou = (overlap.get_results()[k]["dynamic"] for k in ("dice", "iou"))
    if clip_em:
        e = {"adp": min(e["adp"], 1.0), "curve": np.minimum(e["curve"], 1.0)}
    return {
        "Sm": sm.get_results()["sm"],
        "wFm": wfm.get_results()["wfm"],
        "MAE": mae.get_results()["mae"],
        "Em_adp": e["adp"],
        "Em_mean": e["curve"].mean(),
        "Em_max": e["curve"].max(),
        "Fm_adp": f["adp"],
        "Fm_mean": f["curve"].mean(),
        "Fm_max": f["curve"].max(),
        "mDice": dice.mean(),
        "mIoU": iou.mean(),
        "maxDice": dice.max(),
        "maxIoU": iou.max(),
    }


def assert_close(ours: dict, ref: dict, tol: float = 1e-12) -> None:
    for k in ref:  # the published reference values hold the COD keys only
        assert abs(ours[k] - ref[k]) <= tol, (k, ours[k], ref[k])


def random_pairs(n: int, seed: int = 0, h: int = 48, w: int = 64) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        gt = np.zeros((h, w), np.uint8)
        if i % 7:  # some empty masks
            cv2.circle(gt, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(4, 20)), 255, -1)
        pred = np.clip(cv2.GaussianBlur(gt.astype(np.float32), (0, 0), 3) + rng.normal(0, 40, (h, w)), 0, 255)
        pairs.append((pred.astype(np.uint8), gt))
    return pairs


def write_pairs(pairs, pred_dir: Path, gt_dir: Path, names=None) -> None:
    pred_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    for i, (pred, gt) in enumerate(pairs):
        name = names[i] if names else f"{i:04d}"
        cv2.imwrite(str(pred_dir / f"{name}.png"), pred)
        cv2.imwrite(str(gt_dir / f"{name}.png"), gt)


# ---------------------------------------------------------------- reference values
def test_reproduces_pysodmetrics_reference_values() -> None:
    table = json.loads((EXAMPLES / "version_performance.json").read_text())
    # The newest version entry that holds the COD metrics (later entries add other metrics only).
    versions = [v for v in table if set(REFERENCE_KEYS.values()) <= set(table[v])]
    newest = max(versions, key=lambda v: tuple(int(x) for x in re.findall(r"\d+", v)))
    ref = {k: table[newest][r] for k, r in REFERENCE_KEYS.items()}
    names = sorted(p.name for p in (EXAMPLES / "masks").iterdir())
    metrics = CODMetrics()
    for name in names:
        metrics.step(
            cv2.imread(str(EXAMPLES / "preds" / name), cv2.IMREAD_GRAYSCALE),
            cv2.imread(str(EXAMPLES / "masks" / name), cv2.IMREAD_GRAYSCALE),
        )
    results = metrics.results()
    assert list(results) == [*SCORED, "n_images"] and results["n_images"] == 3
    assert_close(results, ref, 1e-12)
    # Reading the files ourselves gives the same numbers.
    assert score_folder(EXAMPLES / "preds", EXAMPLES / "masks", workers=1) == results


# ---------------------------------------------------------------- parallel scoring
def test_worker_count_gives_identical_results(tmp_path: Path) -> None:
    pairs = random_pairs(40, seed=1)
    write_pairs(pairs, tmp_path / "maps", tmp_path / "GT")
    items, _ = pair_folder(tmp_path / "maps", tmp_path / "GT", "bench")
    outcomes = []
    for workers in (1, 2, 3):
        with Scorer(workers, min_parallel=0) as scorer:
            metrics, issues = scorer.score(items)
        outcomes.append((metrics.results(), metrics.curves()))
    for results, curves in outcomes[1:]:
        assert results == outcomes[0][0]  # bit-identical, not merely close
        for field in ("precision", "recall", "fmeasure", "emeasure"):
            assert np.array_equal(getattr(curves, field), getattr(outcomes[0][1], field))
    assert_close(outcomes[0][0], library_scores(pairs))


# ---------------------------------------------------------------- edge cases
def _blob(h: int = 40, w: int = 50) -> np.ndarray:
    gt = np.zeros((h, w), np.uint8)
    cv2.rectangle(gt, (10, 8), (30, 25), 255, -1)
    return gt


EDGE_CASES = {
    "all-background mask, noisy map": (
        np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8),
        np.zeros((40, 50), np.uint8),
    ),
    "all-foreground mask, noisy map": (
        np.random.default_rng(1).integers(0, 256, (40, 50), dtype=np.uint8),
        np.full((40, 50), 255, np.uint8),
    ),
    "constant zero map": (np.zeros((40, 50), np.uint8), _blob()),
    "constant mid-grey map": (np.full((40, 50), 128, np.uint8), _blob()),
    "constant white map, all-background mask": (np.full((40, 50), 255, np.uint8), np.zeros((40, 50), np.uint8)),
    "grey-level mask (binarised at > 128)": (
        cv2.GaussianBlur(_blob(), (0, 0), 4),
        cv2.GaussianBlur(_blob(), (0, 0), 2),
    ),
}


@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_edge_cases_match_the_library(case: str) -> None:
    pred, gt = EDGE_CASES[case]
    m = CODMetrics()
    m.step(pred, gt)
    results = m.results()
    assert all(0.0 <= results[k] <= 1.0 for k in SCORED)
    assert_close(results, library_scores([(pred, gt)], clip_em=True))


def test_perfect_maps_score_perfectly() -> None:
    for gt in (_blob(), np.zeros((40, 50), np.uint8), np.full((40, 50), 255, np.uint8)):
        m = CODMetrics()
        m.step(gt.copy(), gt)
        r = m.results()
        # The library divides the E-measure sum by (N - 1), so it gives N / (N - 1); ours stays in range.
        assert r["Sm"] == pytest.approx(1.0) and r["MAE"] == 0.0 and r["Em_max"] == 1.0
    m = CODMetrics()
    m.step(_blob(), _blob())
    assert m.results()["Fm_max"] == pytest.approx(1.0) and m.results()["wFm"] == pytest.approx(1.0, abs=1e-6)


def test_curves_run_over_ascending_thresholds() -> None:
    pred, gt = random_pairs(2, seed=3)[1]  # [0] has an empty mask
    m = CODMetrics()
    m.step(pred, gt)
    c = m.curves()
    assert c.recall[0] == 1.0  # threshold 0: everything is foreground
    assert c.precision[0] == pytest.approx((gt > 128).mean())
    assert np.all(np.diff(c.recall) <= 0)  # recall falls as the threshold rises


def test_no_metric_leaves_its_range_and_tiny_images_are_refused(tmp_path: Path, caplog) -> None:
    from cod_benchmarks import MIN_SIDE

    with pytest.raises(ValueError, match="too small"):
        image_scores(np.full((1, 1), 255, np.uint8), np.full((1, 1), 255, np.uint8))
    dot = np.zeros((40, 50), np.uint8)
    dot[39, 20] = 255  # a one-pixel object on the bottom row: the library's S-measure is NaN
    with pytest.raises(ValueError, match="sm"):
        image_scores(np.zeros((40, 50), np.uint8), dot)
    # In a folder: both are listed and skipped, the rest is scored, everything stays in [0, 1].
    pairs = random_pairs(3, seed=5)
    write_pairs(pairs, tmp_path / "maps", tmp_path / "GT", ["a", "b", "c"])
    cv2.imwrite(str(tmp_path / "GT" / "tiny.png"), np.full((1, 1), 255, np.uint8))
    cv2.imwrite(str(tmp_path / "maps" / "tiny.png"), np.full((1, 1), 255, np.uint8))
    cv2.imwrite(str(tmp_path / "GT" / "thin.png"), np.full((MIN_SIDE - 1, 30), 255, np.uint8))
    cv2.imwrite(str(tmp_path / "maps" / "thin.png"), np.full((MIN_SIDE - 1, 30), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "GT" / "dot.png"), dot)
    cv2.imwrite(str(tmp_path / "maps" / "dot.png"), np.zeros((40, 50), np.uint8))
    with caplog.at_level(logging.WARNING):
        results = score_folder(tmp_path / "maps", tmp_path / "GT", workers=1, benchmark="bench")
    assert results["n_images"] == 3 and all(0.0 <= results[k] <= 1.0 for k in SCORED)
    assert "too small to score" in caplog.text and "tiny.png" in caplog.text and "thin.png" in caplog.text
    assert "not finite" in caplog.text and "dot.png" in caplog.text


def test_bad_inputs_are_refused_with_a_reason() -> None:
    m = CODMetrics()
    with pytest.raises(ValueError, match="differ in size"):
        m.step(np.zeros((4, 5), np.uint8), np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        m.step(np.zeros((4, 5), np.float32), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="no images"):
        m.results()


# ---------------------------------------------------------------- files: odd maps, COD10K
def test_odd_maps_are_reported_by_name_and_scored_like_the_reference(tmp_path: Path, caplog) -> None:
    pairs = random_pairs(6, seed=2)
    names = ["plain", "colour", "deep", "small", "missing", "broken"]
    write_pairs(pairs, tmp_path / "maps", tmp_path / "GT", names)
    pred_colour = np.dstack([pairs[1][0], pairs[1][0] // 2, 255 - pairs[1][0]])
    cv2.imwrite(str(tmp_path / "maps" / "colour.png"), pred_colour)
    cv2.imwrite(str(tmp_path / "maps" / "deep.png"), pairs[2][0].astype(np.uint16) * 257 + 100)
    cv2.imwrite(str(tmp_path / "maps" / "small.png"), cv2.resize(pairs[3][0], (32, 24)))
    (tmp_path / "maps" / "missing.png").unlink()
    (tmp_path / "maps" / "broken.png").write_bytes(b"not a png")
    cv2.imwrite(str(tmp_path / "maps" / "stray.png"), pairs[0][0])

    items, issues = pair_folder(tmp_path / "maps", tmp_path / "GT", "bench")
    with Scorer(1) as scorer:
        metrics, read_issues = scorer.score(items)
    issues.merge(read_issues)
    assert issues.missing == ["missing.png"] and issues.extra == ["stray.png"]
    assert issues.colour == ["colour.png"] and issues.high_depth == ["deep.png"]
    assert issues.unreadable == ["broken.png"] and issues.resized == ["small.png (24x32 -> 48x64)"]
    assert len(metrics) == 4
    # The reference reading: cv2.IMREAD_GRAYSCALE, then the map resized to the mask (bilinear).
    expected = []
    for name in ("colour", "deep", "plain", "small"):
        pred = cv2.imread(str(tmp_path / "maps" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        gt = cv2.imread(str(tmp_path / "GT" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        expected.append((cv2.resize(pred, gt.shape[::-1], interpolation=cv2.INTER_LINEAR), gt))
    assert_close(metrics.results(), library_scores(expected))

    with caplog.at_level(logging.WARNING):
        score_folder(tmp_path / "maps", tmp_path / "GT", workers=1, benchmark="bench")
    text = caplog.text
    for name in ("missing.png", "stray.png", "colour.png", "deep.png", "small.png", "broken.png"):
        assert name in text


def test_cod10k_scores_only_camouflaged_images(tmp_path: Path, caplog) -> None:
    names = [
        "COD10K-CAM-1-Aquatic-1-BatFish-1",
        "COD10K-CAM-2-Terrestrial-2-Cat-5",
        "COD10K-NonCAM-5-Background-1",
        "COD10K-NonCAM-3-Flying-7",
    ]
    pairs = random_pairs(4, seed=4)
    write_pairs(pairs, tmp_path / "maps", tmp_path / "COD10K" / "GT", names)
    assert select_benchmark_images("COD10K", names) == (names[:2], names[2:])
    assert select_benchmark_images("CAMO", names) == (names, [])
    assert select_benchmark_images("COD10K", ["a", "b"]) == (["a", "b"], [])  # not COD10K's naming
    with caplog.at_level(logging.WARNING):
        results = score_folder(tmp_path / "maps", tmp_path / "COD10K" / "GT", workers=1)
    assert results["n_images"] == 2
    assert_close(results, library_scores(pairs[:2]))
    assert "not camouflaged" in caplog.text and "COD10K-NonCAM-5-Background-1.png" in caplog.text


# ---------------------------------------------------------------- outputs
def _runs() -> dict:
    m1, m2 = CODMetrics(), CODMetrics()
    for pred, gt in random_pairs(3, seed=5):
        m1.step(pred, gt)
        m2.step(255 - pred, gt)
    return {"ours": {"COD10K": m1.results(), "CAMO": m1.results()}, "baseline": {"CAMO": m2.results()}}


def test_results_json_and_tables_have_the_papers_layout(tmp_path: Path) -> None:
    runs = _runs()
    write_results_json(runs["ours"], tmp_path / "results.json")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert list(saved) == ["CAMO", "COD10K"]  # the papers' benchmark order
    assert all(list(v) == [*SCORED, "n_images"] for v in saved.values())
    assert saved["CAMO"] == runs["ours"]["CAMO"]

    md, csv_path = write_tables(runs, tmp_path)
    rows = list(csv.reader(csv_path.open()))
    assert rows[0][:3] == ["method", "CAMO/Sm", "CAMO/wFm"] and "COD10K/Fm_max" in rows[0]
    assert [r[0] for r in rows[1:]] == ["ours", "baseline"]
    assert float(rows[1][1]) == runs["ours"]["CAMO"]["Sm"]  # full precision
    assert rows[2][rows[0].index("COD10K/Sm")] == ""  # baseline has no COD10K
    text = md.read_text()
    assert "| Method | CAMO Sm ↑ |" in text and "CAMO MAE ↓" in text
    best_sm = max(runs["ours"]["CAMO"]["Sm"], runs["baseline"]["CAMO"]["Sm"])
    assert f"**{best_sm:.3f}**" in text
    table = format_table(runs)
    assert "CAMO (n=3)" in table and "COD10K (n=3)" in table and "baseline" in table and "Em_mean" in table
    assert format_markdown({"only": runs["ours"]}).count("**") == 0  # nothing to compare with


def test_curves_are_written_per_benchmark(tmp_path: Path) -> None:
    m = CODMetrics()
    for pred, gt in random_pairs(3, seed=6):
        m.step(pred, gt)
    paths = plot_curves({"a": {"CAMO": m.curves(), "NC4K": m.curves()}, "b": {"CAMO": m.curves()}}, tmp_path)
    assert [p.name for p in paths] == ["CAMO.png", "NC4K.png"]
    image = cv2.imread(str(paths[0]))
    assert image is not None and image.shape[1] > image.shape[0] > 200


def test_map_issue_messages_name_files() -> None:
    issues = MapIssues(missing=[f"m{i}.png" for i in range(12)], colour=["c.png"])
    lines = issues.messages(limit=10)
    assert len(lines) == 2 and "12 masks have no prediction map" in lines[0] and "(2 more)" in lines[0]
    assert "c.png" in lines[1]


def test_image_scores_are_the_library_values_for_one_image() -> None:
    pred, gt = random_pairs(1, seed=7)[0]
    s = image_scores(pred, gt)
    ref = library_scores([(pred, gt)])
    assert (s.sm, s.wfm, s.mae, s.em_adp, s.fm_adp) == (ref["Sm"], ref["wFm"], ref["MAE"], ref["Em_adp"], ref["Fm_adp"])
    assert s.em_curve.shape == s.fm_curve.shape == s.precision.shape == (256,)


# ---------------------------------------------------------------- CCM, HCE and the registry
def test_ccm_and_hce_match_the_library_on_the_same_files(tmp_path: Path) -> None:
    """A COD folder (photos read for the CCM) and a DIS5K folder as it unpacks (im/, gt/)."""
    from datasets.layout import find_benchmark_dirs
    from evaluation.names import metrics_for

    rng = np.random.default_rng(3)
    for bench, folder in (("CAMO", "TestDataset/CAMO"), ("DIS-TE1", "DIS5K/DIS-TE1")):
        img_dir, gt_dir = ("Imgs", "GT") if bench == "CAMO" else ("im", "gt")
        for d in (img_dir, gt_dir):
            (tmp_path / folder / d).mkdir(parents=True)
        (tmp_path / "maps" / bench).mkdir(parents=True)
        for i, (pred, gt) in enumerate(random_pairs(2, seed=11, h=24, w=32)):
            photo = cv2.GaussianBlur(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), (5, 5), 2)
            cv2.imwrite(str(tmp_path / folder / img_dir / f"{i}.png"), photo)
            cv2.imwrite(str(tmp_path / folder / gt_dir / f"{i}.png"), gt)
            cv2.imwrite(str(tmp_path / "maps" / bench / f"{i}.png"), pred)
    found = find_benchmark_dirs(tmp_path)
    assert list(found) == ["CAMO", "DIS-TE1"]
    assert metrics_for("CAMO")[-1] == "CCM" and metrics_for("DIS-TE1")[-1] == "HCE"
    with Scorer(workers=1) as scorer:
        for bench, (img_dir, gt_dir) in found.items():
            pairs, _ = pair_folder(tmp_path / "maps" / bench, gt_dir, bench)
            photos = {n: str(img_dir / f"{n}.png") for n, _, _ in pairs}
            ours = scorer.score(pairs, photos=photos, hce=True)[0].results()
            ccm, hce = sod.CamouflageContextMeasure(), sod.HumanCorrectionEffortMeasure()
            for n, pred_path, gt_path in pairs:
                pred, gt = (cv2.imread(p, cv2.IMREAD_GRAYSCALE) for p in (pred_path, gt_path))
                ccm.step(pred, gt, img=cv2.cvtColor(cv2.imread(photos[n]), cv2.COLOR_BGR2RGB))
                hce.step(pred, gt)
            assert ours["CCM"] == ccm.get_results()["ccm"] and ours["HCE"] == hce.get_results()["hce"]
            assert ours["HCE"] > 0  # the random maps need correcting: a real count is compared


def test_registry_names_the_test_sets_with_their_published_counts() -> None:
    from cod_benchmarks import benchmark_info, field_of, sort_benchmarks

    assert benchmark_info("DIS-TE1").n_images == 500 and field_of("dis_te4") == "DIS"
    assert benchmark_info("dut-omron").n_images == 5168 and benchmark_info("CAMO").n_images == 250
    assert benchmark_info("CVC-300").field == "polyp" and benchmark_info("DIS-TR").split == "train"
    assert sort_benchmarks(["x", "DIS-TE1", "ECSSD", "NC4K"]) == ["NC4K", "ECSSD", "DIS-TE1", "x"]
