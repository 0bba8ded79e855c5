"""The training machinery train.py composes: checkpoints, DDP setup, AMP, optimizer, logging, RNG."""
