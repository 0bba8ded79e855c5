"""Checkpoints: what they hold, how they are written and read, and the weights put back from them.

    files.py     atomic write (temp file, fsync, ``os.replace``) and a read that never runs code
                 (``torch.load(weights_only=True)``, the archive's CRC-32s checked first)
    weights.py   a checkpoint's weights into a model: nothing non-finite, nothing frozen dropped;
                 the frozen encoder's fingerprint
    training.py  the training checkpoint: its keys (``RESUME_KEYS``, ``BEST_KEYS``), a training
                 state into one and back for an exact resume
    run.py       a run folder's last.pth / best.pth / final.pth, each saved by one call, and which
                 one ``train.resume`` continues from

Only files.py and weights.py are imported here: training.py and run.py gather across processes
(:mod:`engine.distributed`, which checks the frozen weights with :func:`tensors_hash`), so they are
imported by their own names. A trained model rebuilt from a checkpoint is :mod:`engine.trained`;
the Hugging Face-format folder, :mod:`engine.hub`.
"""

from engine.checkpoint.files import CheckpointError, library_versions, load_checkpoint, save_checkpoint, write_error
from engine.checkpoint.weights import (
    check_fingerprint,
    encoder_fingerprint,
    first_nonfinite,
    load_weights,
    tensors_hash,
)

__all__ = [
    "CheckpointError",
    "check_fingerprint",
    "encoder_fingerprint",
    "first_nonfinite",
    "library_versions",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
    "tensors_hash",
    "write_error",
]
