"""The video COD protocol (SLT-Net's ``eval/main_MoCA.m`` and ``main_CAD.m``) on PySODMetrics' numbers.

Each metric is computed per annotated frame (:func:`evaluation.metrics.image_scores`), averaged per
sequence, then over the sequences: S-measure, weighted F-measure and MAE as means of the sequence
means; the E-measure, F-measure, Dice and IoU curves over the 256 thresholds averaged the same way,
then their mean and max (``Em_mean``, ``Em_max``, ``mDice``, ``maxDice``, ...). The MoCA-Mask script
leaves out each sequence's last two annotated frames (``fileNUM - 2``, "to match the video results"
of methods that need the next frames); this is the default here too, ``eval.video_all_frames=true``
scores them all. CAD's script scores every annotated frame.
"""

from __future__ import annotations

from .metrics import CODMetrics, ImageScores
from .scoring import ImageResult, Pair, Scorer, log_issues

LEFT_OUT = {"MoCA-Mask": 2}  # annotated frames at the end of each sequence the published script leaves out


def protocol(benchmark: str, all_frames: bool) -> str:
    """The sentence results.json holds about how ``benchmark`` was scored."""
    published = LEFT_OUT.get(benchmark, 0)
    if all_frames and published:
        kept = f"every annotated frame (eval.video_all_frames=true; SLT-Net's script leaves out the last {published})"
    elif published:
        kept = f"each sequence's last {published} annotated frames left out, as SLT-Net's evaluation script"
    else:
        kept = "every annotated frame, as SLT-Net's evaluation script"
    return f"per annotated frame, mean per sequence, mean over sequences; {kept}"


def scored_frames(benchmark: str, pairs: list[Pair], all_frames: bool) -> list[Pair]:
    """The pairs of one sequence (annotated frames in order) that the protocol scores."""
    left = 0 if all_frames else LEFT_OUT.get(benchmark, 0)
    return pairs[: max(len(pairs) - left, 0)] if left else list(pairs)


class VideoMetrics:
    """Per-frame scores grouped by sequence; :meth:`results` and :meth:`curves` as
    :class:`~evaluation.metrics.CODMetrics`' (``n_images``: frames scored), by the video protocol."""

    def __init__(self) -> None:
        self.sequences: dict[str, CODMetrics] = {}

    def add(self, sequence: str, scores: ImageScores) -> None:
        self.sequences.setdefault(sequence, CODMetrics()).add(scores)

    def __len__(self) -> int:
        return sum(len(m) for m in self.sequences.values())

    def _over_sequences(self) -> CODMetrics:
        # One row per sequence (its frames' means): CODMetrics' reduction over them is the mean over sequences.
        per_sequence = CODMetrics()
        for m in self.sequences.values():
            per_sequence.add(m.mean_scores())
        return per_sequence

    def results(self) -> dict:
        return {**self._over_sequences().results(), "n_images": len(self)}

    def curves(self):
        return self._over_sequences().curves()

    def sequence_results(self) -> dict[str, dict]:
        """``{sequence: its frames' results}`` (the per-sequence rows of SLT-Net's result files)."""
        return {name: m.results() for name, m in self.sequences.items()}


def score_video(
    scorer: Scorer, benchmark: str, pairs: list[Pair], all_frames: bool, photos: dict[str, str] | None = None
) -> tuple[VideoMetrics, list[ImageResult]] | None:
    """Score one video benchmark's maps: ``pairs`` named ``<sequence>/<frame>``, each sequence's annotated
    frames in order. Returns the metrics and the per-frame results; None when nothing could be scored."""
    by_sequence: dict[str, list[Pair]] = {}
    for pair in pairs:
        by_sequence.setdefault(pair[0].split("/")[0], []).append(pair)
    kept = [p for seq in by_sequence.values() for p in scored_frames(benchmark, seq, all_frames)]
    metrics, issues, per_image = scorer.score_images(kept, benchmark, photos)
    log_issues(issues, benchmark)
    if not len(metrics):
        return None
    video = VideoMetrics()
    for row, scores in zip(per_image, metrics, strict=True):
        video.add(row.name.split("/")[0], scores)
    return video, per_image


def score_videos(
    scorer: Scorer,
    videos: dict[str, tuple[list[Pair], dict[str, str]]],
    all_frames: bool,
    scored: dict,
    images: dict[str, dict[str, str]],
) -> dict[str, dict]:
    """Score each video benchmark's maps (``{benchmark: (pairs, {name: photo path})}``) into ``scored``
    (``{benchmark: (metrics, per frame)}``) and its photos into ``images`` (the report's gallery).
    Returns the keys results.json adds per benchmark: ``protocol``, ``n_sequences`` and ``sequences``
    (``{sequence: its frames' results}``)."""
    details = {}
    for bench, (pairs, photos) in videos.items():
        result = score_video(scorer, bench, pairs, all_frames)
        if result is None:
            continue
        scored[bench], images[bench] = result, photos
        rows = result[0].sequence_results()
        details[bench] = {"protocol": protocol(bench, all_frames), "n_sequences": len(rows), "sequences": rows}
    return details
