"""Video COD: clips trained from an image checkpoint, the temporal module's identity start, SLT-Net's
per-sequence protocol recomputed with PySODMetrics from the maps test.py wrote, and a video file in."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import py_sod_metrics as sod
import pytest
import torch

from build import build_model
from config import load_config
from engine.checkpoint import load_checkpoint, load_weights
from helpers import ROOT, SCORE_ARGS, load_test_cli, run_train, tiny_model_args
from scripts.parts.synthetic_video import generate_video

FRAMES = 16  # masks on frames 0, 5, 10, 15 of each sequence


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory, tiny_run, tiny_dinov3_factory) -> tuple[Path, Path]:
    """(data root of 2 training and 2 test sequences in MoCA-Mask's and CAD's layouts, the run folder of
    configs/vcod_dinov3.yaml trained 1 epoch on 3-frame clips from the shared image run's best.pth)."""
    data = tmp_path_factory.mktemp("vcod")
    generate_video(data, n_train=2, n_test=2, frames=FRAMES, size=48, seed=0)
    run = tmp_path_factory.mktemp("vcod_run") / "run"
    args = tiny_model_args(data, tiny_dinov3_factory(layers=4))[2:]  # the model of the image run
    overrides = ["model.temporal.heads=2", "data.clip_stride=2", "data.val_fraction=0", "train.best_metric=train_loss"]
    common = ["train.batch_size=4", "train.num_workers=0", "train.epochs=1", f"train.run_dir={run}"]
    init = f"train.init_from={tiny_run.straight / 'best.pth'}"
    assert run_train(["--config", str(ROOT / "configs/vcod_dinov3.yaml"), *args, *overrides, *common, init]) == 0
    return data, run


def test_temporal_module_starts_as_the_identity(tiny_run, tiny_dinov3_factory) -> None:
    """A clip model given an image checkpoint's weights predicts each frame of a clip exactly as that image
    model predicts the frames alone: its temporal weights are absent from the file and start at zero."""
    args = tiny_model_args(Path("unused"), tiny_dinov3_factory(layers=4))[2:]
    image_model = build_model(load_config(ROOT / "e2net_dinov3.yaml", args)).eval()
    clip_model = build_model(load_config(ROOT / "e2net_dinov3.yaml", [*args, "model.temporal.levels=2"])).eval()
    best = tiny_run.straight / "best.pth"
    weights = load_checkpoint(best, required=("model",))["model"]
    load_weights(image_model, weights, best)
    load_weights(clip_model, weights, best, optional=("temporal.",))
    assert any(k.startswith("temporal.") for k in clip_model.trainable_state_dict())
    x = torch.rand(2, 3, 3, 32, 32)
    with torch.no_grad():
        alone, together = image_model(x.flatten(0, 1)), clip_model(x)
    assert len(alone) == len(together)
    for a, b in zip(alone, together):
        assert torch.equal(a, b)


def _protocol(preds: Path, gts: dict[str, list[Path]], names) -> dict[str, float]:
    """SLT-Net's protocol with PySODMetrics' classes: per frame, mean per sequence, mean over sequences."""
    per_seq = {"Sm": [], "MAE": [], "dice": [], "iou": []}
    for seq, masks in gts.items():
        frames = {"Sm": [], "MAE": [], "dice": [], "iou": []}
        for mask in masks:
            gt = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
            pred = cv2.imread(str(preds / seq / f"{names(seq, mask)}.png"), cv2.IMREAD_GRAYSCALE)
            sm, mae = sod.Smeasure(), sod.MAE()
            fm = sod.FmeasureV2(
                metric_handlers={
                    "dice": sod.DICEHandler(with_dynamic=True, with_adaptive=False),
                    "iou": sod.IOUHandler(with_dynamic=True, with_adaptive=False),
                }
            )
            for m in (sm, mae, fm):
                m.step(pred, gt)
            frames["Sm"].append(sm.get_results()["sm"])
            frames["MAE"].append(mae.get_results()["mae"])
            frames["dice"].append(fm.get_results()["dice"]["dynamic"])
            frames["iou"].append(fm.get_results()["iou"]["dynamic"])
        for k, v in frames.items():
            per_seq[k].append(np.mean(np.array(v, dtype=np.float64), axis=0))
    over = {k: np.mean(np.array(v), axis=0) for k, v in per_seq.items()}
    return {"Sm": over["Sm"], "MAE": over["MAE"], "mDice": over["dice"].mean(), "mIoU": over["iou"].mean()}


def test_clip_model_scores_moca_and_cad_by_the_protocol(clip_run, tmp_path) -> None:
    data, run = clip_run
    ckpt = load_checkpoint(run / "best.pth", required=("model", "config"))
    assert ckpt["config"]["data"]["clip"] == 3 and any(k.startswith("temporal.") for k in ckpt["model"])
    cli = load_test_cli("test_cli_video")
    assert cli.main(["--ckpt", str(run / "best.pth"), "--out", str(tmp_path), *SCORE_ARGS]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results) == ["MoCA-Mask", "CAD"]
    moca_root, cad_root = data / "MoCA-Mask" / "TestDataset_per_sq", data / "CamouflagedAnimalDataset"
    # MoCA-Mask: each sequence's last two annotated frames left out, as eval/main_MoCA.m; maps named as the masks
    moca = {s.name: sorted((s / "GT").glob("*.png"))[:-2] for s in sorted(moca_root.iterdir())}
    expected = _protocol(tmp_path / "preds" / "MoCA-Mask", moca, lambda seq, m: m.stem)
    # CAD: every annotated frame (main_CAD.m); maps named <sequence>_NNN after the frames
    cad = {s.name: sorted((s / "groundtruth").glob("*.png")) for s in sorted(cad_root.iterdir())}
    expected_cad = _protocol(tmp_path / "preds" / "CAD", cad, lambda seq, m: f"{seq}_{m.stem.removesuffix('_gt')}")
    for bench, want, gts in (("MoCA-Mask", expected, moca), ("CAD", expected_cad, cad)):
        got = results[bench]
        for k, v in want.items():
            assert got[k] == pytest.approx(float(v), rel=1e-9, abs=1e-12), (bench, k)
        assert got["n_sequences"] == 2 and list(got["sequences"]) == list(gts)
    assert (
        results["MoCA-Mask"]["n_images"] == 4 and "last 2 annotated frames left out" in results["MoCA-Mask"]["protocol"]
    )
    assert results["CAD"]["n_images"] == 8 and results["CAD"]["sequences"]["synth00"]["n_images"] == 4


def test_video_file_gives_one_mask_per_frame(clip_run, tmp_path) -> None:
    """--video: a mask per frame and the overlay video; --images on a folder of frames still works."""
    data, run = clip_run
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (40, 32))
    rng = np.random.default_rng(0)
    for _ in range(5):
        writer.write(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8))
    writer.release()
    out = tmp_path / "out"
    cli = load_test_cli("test_cli_video_file")
    assert cli.main(["--ckpt", str(run / "best.pth"), "--video", str(video), "--out", str(out), "train.amp=off"]) == 0
    masks = sorted((out / "masks").glob("*.png"))
    assert [m.name for m in masks] == [f"{i:05d}.png" for i in range(5)]
    assert cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED).shape == (32, 40)
    overlay = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert int(overlay.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    frames = data / "MoCA-Mask" / "TestDataset_per_sq" / "synth_00" / "Imgs"
    args = [
        "--ckpt",
        str(run / "best.pth"),
        "--images",
        str(frames),
        "--out",
        str(tmp_path / "frames"),
        "train.amp=off",
    ]
    assert cli.main(args) == 0
    assert len(list((tmp_path / "frames" / "masks").glob("*.png"))) == FRAMES


def test_clips_are_centred_and_read_only_annotated_frames() -> None:
    """A clip's anchor is its centre frame, repeated at the sequence's ends; the loss on a clip is the
    loss on its annotated frames alone; MoCA-Mask's protocol drops a sequence's last two annotated
    frames unless all are asked for, CAD's keeps them."""
    from datasets import clip_indices
    from evaluation.video import scored_frames
    from models.losses import CODLoss
    from models.temporal import ClipLoss

    assert clip_indices(5, 20, 3, 5) == [0, 5, 10] and clip_indices(0, 20, 3, 2) == [0, 0, 2]
    assert clip_indices(19, 20, 5, 1) == [17, 18, 19, 19, 19] and clip_indices(4, 9, 1, 3) == [4]
    pairs = [(f"s/{i:05d}", "", "") for i in range(0, 20, 5)]
    assert scored_frames("MoCA-Mask", pairs, False) == pairs[:2] and scored_frames("MoCA-Mask", pairs, True) == pairs
    assert scored_frames("CAD", pairs, False) == pairs
    torch.manual_seed(0)
    outputs = [torch.randn(6, 1, 16, 16) for _ in range(2)]  # 2 clips of 3 frames
    masks = (torch.rand(2, 3, 1, 16, 16) > 0.5).float()
    masks[0, 2] = masks[1, 0] = -1.0  # frames without annotation
    keep = [0, 1, 4, 5]
    loss = CODLoss(weights={"bce": 1.0, "iou": 1.0})
    got, _ = ClipLoss(loss)(outputs, masks)
    want, _ = loss([o[keep] for o in outputs], masks.flatten(0, 1)[keep])
    assert torch.equal(got, want)


def test_init_from_refuses_the_weights_of_another_model_naming_a_tensor(tiny_run, tiny_dinov3_factory) -> None:
    from engine.checkpoint import CheckpointError
    from engine.trained import init_from

    args = tiny_model_args(Path("unused"), tiny_dinov3_factory(layers=4))[2:]  # the image run's, at width 16
    init = f"train.init_from={tiny_run.straight / 'best.pth'}"
    cfg = load_config(ROOT / "configs/vcod_dinov3.yaml", [*args, "model.channels=24", init])
    with pytest.raises(
        CheckpointError, match=r"another shape, e\.g\. '.+': \(16, .*\) in it, \(24, .*\) here\); train"
    ):
        init_from(build_model(cfg), cfg)
