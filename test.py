"""Evaluate a checkpoint on the COD benchmarks, score other methods' maps, or predict your own images.

  python test.py --ckpt checkpoint/e2net_dinov3/best.pth [--config FILE] [key=value ...]
      Every test benchmark under data.root (CAMO, CHAMELEON, COD10K, NC4K by default; the
      config stored in the checkpoint unless --config is given; key=value overrides either,
      e.g. data.root=/data/COD eval.batch_size=16). Maps are predicted at data.image_size,
      resized to each mask's original size (bilinear) and written as 8-bit PNGs to
      <out>/preds/<benchmark>/, then scored. Default --out: <run folder>/test/<checkpoint name>/
      when the checkpoint is in train.py's run folder (beside its config.yaml), else
      outputs/test/<checkpoint name>/. --ckpt also takes a model folder written by
      scripts/export.py --hf (config.json, model.safetensors).

  torchrun --standalone --nproc-per-node=4 test.py --ckpt best.pth [...]
      The same on several GPUs: the images are shared out among the processes, rank 0 receives
      every map, writes them and scores them once (the other ranks write nothing); the numbers
      are the same as with one process.

  python test.py --preds maps/SINetV2 [--preds maps/Ours ...] --data-root data/COD
      Scores saved maps, no model: each DIR holds one folder of maps per benchmark
      (DIR/CAMO/*.png, ...) named like the masks (only the masks are read: GT/ without Imgs/
      is enough; two maps for one image, e.g. x.jpg and x.png, are an error). Missing, extra, colour, 16-bit and
      wrongly sized maps are reported by file name. Several --preds make one comparison.
      Default --out: outputs/scores/.

  python test.py --ckpt best.pth --video clip.mp4 [--out DIR]
      One mask per frame (masks/00000.png, ...) and overlay.mp4, each frame predicted in its clip
      when the model has a temporal module (model.temporal). Video benchmarks (MoCA-Mask, CAD) in
      --ckpt mode: per sequence, SLT-Net's protocol (evaluation/video.py; results.json says which).

  python test.py --ckpt best.pth --images my_photos/ [--out DIR]
      Masks and side-by-side overlays for images of any size and format, no metrics.
      Default --out: <run folder>/predict/<images folder name>/ (outputs/predict/... as above).

  --metrics Sm,mDice,CCM (any mode that scores) picks the metrics to compute and report. Default:
      Sm, wFm, MAE, Em_*, Fm_*, mDice, mIoU, maxDice, maxIoU on every benchmark, plus CCM (reads
      the photos; ~0.2-0.4 s per image) on the COD benchmarks and HCE on the DIS ones (names as
      in cod_benchmarks.REGISTRY). A named CCM or HCE is computed on every benchmark.

Outputs of a scoring run in --out: results.json ({benchmark: {metric: value, ..., n_images}}, the
metrics in evaluation/names.py's column order), results.md and results.csv (rows: runs, columns:
benchmark x metric; also printed), curves/<benchmark>.png (precision-recall, F-measure, Dice and IoU
against the threshold), report.html (the table, the curves and a per-image gallery, sortable worst
first; opens from disk). With several --preds, each run's results.json is in <out>/<run name>/.
Metrics are PySODMetrics' (maps min-max scaled per image, masks binarised at > 128), identical for
any number of --workers scoring processes.

Config keys (key=value, eval.tta.* for test-time augmentation, eval.batch_size, data.root, ...):
config_schema.py holds the schema with a comment on every key; the README's "Config reference" lists them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from cod_benchmarks import IMAGE_EXTS, list_images
from engine.cli import LOG_FORMAT, add_config_arguments, error_line
from evaluation.discovery import EvaluationError, find_pred_dirs, match_benchmarks
from evaluation.maps import MapIssues
from evaluation.names import METRIC_KEYS, metrics_for, parse_metrics
from evaluation.outputs import Scored, default_out, run_names, write_outputs
from evaluation.scoring import Scorer, pair_folder, score_benchmark
from evaluation.video import score_videos

# torch, the model and the data are imported inside the functions that need them: the scoring
# worker processes re-import this file (multiprocessing does so with the main script), and
# must start light.
log = logging.getLogger("test")


def is_model_folder(path: Path) -> bool:
    """A folder written by scripts/export.py --hf."""
    from engine.hub import is_hf_folder

    return is_hf_folder(path)


def metric_list(text: str) -> list[str]:
    try:
        return parse_metrics(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--ckpt", type=Path, help="checkpoint written by train.py (best.pth / last.pth), or an export.py --hf folder"
    )
    p.add_argument(
        "--preds",
        type=Path,
        action="append",
        help="folder of saved maps, one sub-folder per benchmark (repeat to compare methods)",
    )
    p.add_argument(
        "--data-root",
        type=Path,
        help="folder holding TestDataset/<Benchmark>/{Imgs,GT} (needed with "
        "--preds; with --ckpt the same as data.root=...)",
    )
    p.add_argument("--images", type=Path, help="with --ckpt: predict these images instead of the benchmarks")
    p.add_argument(
        "--video", type=Path, help="with --ckpt: a video file's masks and overlay video (engine/video_io.py)"
    )
    p.add_argument("--out", type=Path, help="output folder (defaults above)")
    p.add_argument("--workers", type=int, help="scoring processes (default eval.workers; 0 = all cores)")
    p.add_argument("--no-report", action="store_true", help="skip report.html and its thumbnails")
    p.add_argument(
        "--metrics",
        type=metric_list,
        help=f"comma-separated metrics to compute ({','.join(METRIC_KEYS)}); default: the COD set, Dice and "
        "IoU everywhere, CCM on COD benchmarks, HCE on DIS benchmarks",
    )
    add_config_arguments(p)  # with --ckpt: a config instead of the checkpoint's own, key=value overrides
    args = p.parse_args(argv)
    if bool(args.ckpt) == bool(args.preds):
        p.error("give either --ckpt PATH (evaluate a checkpoint) or --preds DIR --data-root ROOT (score saved maps)")
    if args.ckpt and not args.ckpt.is_file() and not is_model_folder(args.ckpt):
        p.error(
            f"--ckpt '{args.ckpt}': no such file (give a checkpoint written by train.py, e.g. "
            "checkpoint/e2net_dinov3/best.pth, or a folder written by scripts/export.py --hf)"
        )
    if args.video and not args.video.is_file():
        p.error(f"--video '{args.video}': no such file")
    if args.images:
        if not args.images.is_dir():
            p.error(f"--images '{args.images}' is not a folder")
        if not list_images(args.images):
            p.error(f"--images '{args.images}' holds no images ({' '.join(IMAGE_EXTS)})")
    if args.preds:
        if args.data_root is None:
            p.error("--preds needs --data-root ROOT, the folder holding TestDataset/<Benchmark>/GT")
        if args.overrides or args.config or args.images or args.video:
            p.error("key=value overrides, --config, --images and --video apply to --ckpt only")
        for folder in args.preds:
            try:
                find_pred_dirs(folder)
            except EvaluationError as err:
                p.error(str(err))
    if args.workers is not None and args.workers < 0:
        p.error(f"--workers must be >= 0 (0 = all cores), got {args.workers}")
    return args


def score_saved_maps(args: argparse.Namespace) -> None:
    """--preds mode: pair each folder's maps with the benchmark masks and score them."""
    import datasets

    # Maps are scored against masks only: a benchmark with GT/ and no Imgs/ is enough.
    bench_dirs = datasets.find_benchmark_dirs(args.data_root, need_images=False)
    gt_dirs = {b: mask_dir for b, (_, mask_dir) in bench_dirs.items()}
    photos = {
        b: {name: str(files[0]) for name, files in list_images(img_dir).items()} if img_dir else {}
        for b, (img_dir, _) in bench_dirs.items()
    }
    scored: Scored = {}
    with Scorer(args.workers or 0) as scorer:
        for run, folder in run_names(args.preds).items():
            matched, unmatched, no_maps = match_benchmarks(find_pred_dirs(folder), gt_dirs)
            if unmatched:
                log.warning(
                    "%s: no benchmark named %s under %s (it has %s): not scored",
                    folder,
                    ", ".join(unmatched),
                    args.data_root,
                    ", ".join(gt_dirs),
                )
            if no_maps:
                log.warning("%s: no maps for %s", folder, ", ".join(no_maps))
            for bench, (pred_dir, gt_dir) in matched.items():
                pairs, issues = pair_folder(pred_dir, gt_dir, bench)
                chosen = metrics_for(bench, args.metrics)
                result = score_benchmark(scorer, pairs, issues, f"{run}/{bench}", photos[bench], chosen)
                if result is not None:
                    scored.setdefault(run, {})[bench] = result
    if not scored:
        raise EvaluationError(
            f"none of the --preds folders holds maps named like the masks under {args.data_root} "
            "(maps must be DIR/<Benchmark>/<mask file stem>.png)"
        )
    images = {b: photos[b] for b in bench_dirs if any(b in per_run for per_run in scored.values())}
    write_outputs(scored, args.out or Path("outputs/scores"), images, report=not args.no_report, metrics=args.metrics)


def load_model(args: argparse.Namespace, device=None):
    """--ckpt (and --config, key=value, --data-root) -> the trained model, see :mod:`engine.trained`."""
    from engine.trained import load_trained

    overrides = list(args.overrides) + ([f"data.root={args.data_root}"] if args.data_root else [])
    return load_trained(args.ckpt, args.config, overrides, device=device)


def evaluate_checkpoint(args: argparse.Namespace) -> None:
    """--ckpt mode: predict every test benchmark, write the maps, score them. Under torchrun the
    ranks share the prediction; rank 0 writes and scores."""
    import torch

    import datasets
    from engine.distributed import cleanup_distributed, finish_collectives, setup_distributed
    from engine.predict import MapRule, predict_loader
    from engine.tta import for_test
    from engine.video_io import predict_video_sets

    env = setup_distributed()
    try:
        trained = load_model(args, env.device)
        cfg, device, precision = trained.cfg, trained.device, trained.precision
        model, tta = for_test(trained.model, cfg)
        del trained
        out = args.out or default_out(args.ckpt, "test", "_".join(filter(None, (args.ckpt.stem, tta))))
        image_sets, video_sets = datasets.split_test_sets(cfg.data.root, list(cfg.data.test_sets))
        test_sets = datasets.build_test_sets(cfg, image_sets) if image_sets is not None else {}
        videos = predict_video_sets(model, video_sets, cfg, precision, device, out / "preds", env.distributed)
        predicted = {}
        for bench, ds in test_sets.items():
            loader = datasets.build_loader(ds, cfg, train=False, distributed=env.distributed)
            predicted[bench] = predict_loader(
                model, loader, precision, device, out / "preds" / bench, desc=bench, rule=MapRule.of(cfg)
            )
            log.info("%s: %d maps written to %s", bench, len(predicted[bench]), out / "preds" / bench)
        finish_collectives()
    finally:
        cleanup_distributed()  # scoring is rank 0's alone
    if not env.is_main:
        return
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()

    run = f"{args.ckpt.parent.name}/{args.ckpt.stem}" if args.ckpt.parent.name else args.ckpt.stem
    run += f"+{tta}" if tta else ""
    scored = {}
    images = {b: {s.name: s.image_path for s in ds.samples} for b, ds in test_sets.items()}
    # The data package already holds each benchmark to its definition (COD10K: camouflaged images only).
    with Scorer(cfg.eval.workers if args.workers is None else args.workers) as scorer:
        for bench, written in predicted.items():
            chosen = metrics_for(bench, args.metrics)
            result = score_benchmark(scorer, written, MapIssues(), bench, images[bench], chosen)
            if result is not None:
                scored[bench] = result
        details = score_videos(scorer, videos, cfg.eval.video_all_frames, scored, images)
    if not scored:
        raise EvaluationError("no benchmark could be scored (see the warnings above)")
    extra = {"tta": {"hflip": bool(cfg.eval.tta.hflip), "scales": list(cfg.eval.tta.scales) or [1.0]}} if tta else None
    write_outputs({run: scored}, out, images, not args.no_report, extra, args.metrics, details)


def predict_own_images(args: argparse.Namespace) -> None:
    """--ckpt --images mode: masks and overlays, no metrics."""
    from engine.predict import predict_folder
    from engine.tta import for_test

    trained = load_model(args)
    model, _ = for_test(trained.model, trained.cfg)
    predict_folder(
        trained, model, args.images, args.out or default_out(args.ckpt, "predict", args.images.resolve().name)
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK") or 0)  # set by torchrun
    logging.basicConfig(level=logging.WARNING if rank else logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S")
    if rank and (args.preds or args.images or args.video):
        return 0  # one process does these: under torchrun, rank 0
    from engine.errors import USER_ERRORS

    try:
        if args.preds:
            score_saved_maps(args)
        elif args.video:
            from engine.video_io import predict_video_file

            predict_video_file(
                load_model(args), args.video, args.out or default_out(args.ckpt, "predict", args.video.stem)
            )
        elif args.images:
            predict_own_images(args)
        else:
            evaluate_checkpoint(args)
    except (*USER_ERRORS, OSError) as err:
        print(f"test.py: error: {error_line(err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
