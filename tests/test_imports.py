"""Imports from the repo root: our top-level packages (e.g. datasets/) must not shadow what transformers needs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

SCRIPT = """
import sys
import transformers
from transformers import AutoModel, DINOv3ViTConfig, DINOv3ViTModel
# These consult transformers' is_datasets_available(), which a local datasets/ folder can fool.
import transformers.modelcard, transformers.integrations.integration_utils
model = AutoModel.from_pretrained(sys.argv[1])
assert isinstance(model, DINOv3ViTModel), type(model)
import dinov3_encoder
dinov3_encoder.build_dinov3_encoder(pretrained_path=sys.argv[1])
# transformers must never have imported our datasets/ package in its place.
assert not [m for m in sys.modules if m == "datasets" or m.startswith("datasets.")], "datasets was imported"
print("ok", transformers.__version__)
"""


def test_transformers_dinov3_imports_from_repo_root(tiny_dinov3: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH="")
    # `python -c` puts the working directory first on sys.path, as running a script from the root does.
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_dinov3)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("ok")
