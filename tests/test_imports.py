"""Imports from the repo root: our top-level packages (e.g. datasets/) must not shadow what transformers needs."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

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


def background_steps(request, folder: Path, tests: set[str]) -> dict[str, str]:
    """The script from the repo root, in the session's background launches: ``python -c`` puts the
    working directory first on sys.path, as running a script from the root does."""
    if "test_transformers_dinov3_imports_from_repo_root" not in tests:
        return {}
    argv = [sys.executable, "-c", SCRIPT, str(request.getfixturevalue("tiny_dinov3"))]
    return {"imports_from_root": "env PYTHONPATH= " + shlex.join(argv)}


def test_transformers_dinov3_imports_from_repo_root(background) -> None:
    (code,), printed = background.result("imports_from_root")
    assert code == 0, printed[-3000:]
    assert re.search(r"^ok \d", printed, re.MULTILINE), printed[-3000:]
