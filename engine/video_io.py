"""Video in, masks out: the video benchmarks' maps for test.py, and a video file's masks and overlay.

Both predict each frame in the clip the model was trained on (``data.clip`` frames ``data.clip_stride``
apart, :func:`datasets.video.clip_indices`) and keep the clip's anchor frame (``models.temporal.AnchorFrames``);
an image model (``data.clip`` 1) predicts each frame alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import datasets
from cod_benchmarks import clip_anchor
from datasets.transforms import TestTransform
from engine.amp import Precision
from engine.predict import MapRule, final_maps, forward_probs, overlay, predict_loader, write_png
from evaluation.scoring import Pair
from models.temporal import AnchorFrames

log = logging.getLogger(__name__)


def predict_video_sets(
    model: nn.Module,
    video_sets: dict[str, Path],
    cfg,
    precision: Precision,
    device: torch.device,
    out: Path,
    distributed: bool = False,
) -> dict[str, tuple[list[Pair], dict[str, str]]]:
    """Maps of every annotated frame of each video benchmark, ``out/<benchmark>/<sequence>/<frame>.png``.
    Returns ``{benchmark: ([(<sequence>/<frame>, map path, mask path)], {<sequence>/<frame>: photo path})}``,
    each sequence's frames in order."""
    written = {}
    for bench, folder in video_sets.items():
        ds = datasets.video_test_set(folder, cfg, bench)
        sequences = {s.sequence.name for s in ds.samples}
        for seq in sequences:
            (out / bench / seq).mkdir(parents=True, exist_ok=True)
        loader = datasets.build_loader(ds, cfg, train=False, distributed=distributed)
        pairs = predict_loader(
            AnchorFrames(model), loader, precision, device, out / bench, desc=bench, rule=MapRule.of(cfg)
        )
        written[bench] = (pairs, {s.name: s.image_path for s in ds.samples})
        log.info("%s: %d maps of %d sequences written to %s", bench, len(pairs), len(sequences), out / bench)
    return written


def predict_video_file(trained, video: Path, out: Path) -> int:
    """``test.py --video``: a trained model (``engine.trained.Trained``) on a video file, see :func:`predict_frames`."""
    n = predict_frames(trained.model, trained.cfg, trained.precision, trained.device, video, out)
    log.info("%d frames: masks in %s, overlay video %s", n, out / "masks", out / "overlay.mp4")
    return n


@torch.no_grad()
def predict_frames(model: nn.Module, cfg, precision: Precision, device: torch.device, video: Path, out: Path) -> int:
    """``out/masks/<frame number>.png`` (one per frame, 00000.png first) and ``out/overlay.mp4`` (each frame
    beside its tinted copy) for a video file OpenCV can read. Frames are read once, keeping only the
    clip's reach in memory. Returns the number of frames."""
    temporal = getattr(model, "temporal", None) is not None
    clip, stride = (int(cfg.data.clip), int(cfg.data.clip_stride)) if temporal else (1, 1)
    ahead = (clip - 1 - clip_anchor(clip)) * stride  # frames after the anchor a clip reaches
    size, rule, net = int(cfg.data.image_size), MapRule.of(cfg), AnchorFrames(model).eval()
    transform = TestTransform(reduced_decode=bool(cfg.data.reduced_decode))
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise OSError(f"cannot open '{video}' as a video (OpenCV reads .mp4, .avi, .mov, ... with its FFmpeg)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    (out / "masks").mkdir(parents=True, exist_ok=True)
    frames: dict[int, tuple[np.ndarray, torch.Tensor]] = {}
    writer = None

    def predict(i: int, n: int) -> None:
        nonlocal writer
        idx = datasets.clip_indices(i, n, clip, stride)
        x = torch.stack([frames[k][1] for k in idx])[None] if clip > 1 else frames[i][1][None]
        x = x.to(device)
        _, prob = forward_probs(net, x, precision)
        rgb = frames[i][0]
        mask = final_maps(net, x, prob, [rgb.shape[:2]], precision, rule)[0]
        write_png(out / "masks" / f"{i:05d}.png", mask)
        side = cv2.cvtColor(overlay(rgb, mask), cv2.COLOR_RGB2BGR)
        if writer is None:
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            writer = cv2.VideoWriter(str(out / "overlay.mp4"), fourcc, fps, (side.shape[1], side.shape[0]))
        writer.write(side)

    read = done = 0
    bar = tqdm(desc=video.name, unit="frame", disable=None)
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        frames[read] = (rgb, transform.image(rgb, size))
        read += 1
        while done + ahead < read:  # every frame of its clip has been read
            predict(done, 10**9)
            done += 1
            bar.update()
            for k in [k for k in frames if k < done - clip_anchor(clip) * stride]:
                del frames[k]
    while done < read:  # the last frames: their clips repeat the last frame
        predict(done, read)
        done += 1
        bar.update()
    bar.close()
    capture.release()
    if writer is not None:
        writer.release()
    return read
