"""COD datasets: the field's folder layouts, checked files, paired augmentation, seeded loaders.

Note: this package shadows Hugging Face's ``datasets`` when run from the repo root; nothing in
this project uses that library.
"""

from .build import build_test_sets, build_train_val, split_train_val
from .dataset import CODDataset, Sample, eval_input
from .device_augment import training_inputs
from .layout import find_benchmark_dirs
from .loader import build_loader, collate, set_epoch
from .problems import BadFile, DatasetError, Problem
from .reading import decode_image, probe
from .transforms import TestTransform, TrainTransform
from .video import ClipDataset, Sequence, clip_indices, find_sequences, split_test_sets, video_test_set

__all__ = [
    "BadFile",
    "ClipDataset",
    "CODDataset",
    "DatasetError",
    "Problem",
    "Sample",
    "TestTransform",
    "TrainTransform",
    "build_loader",
    "build_test_sets",
    "clip_indices",
    "build_train_val",
    "collate",
    "decode_image",
    "eval_input",
    "find_benchmark_dirs",
    "find_sequences",
    "probe",
    "Sequence",
    "set_epoch",
    "split_test_sets",
    "split_train_val",
    "training_inputs",
    "video_test_set",
]
