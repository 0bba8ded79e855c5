"""Every entry point and script starts: its imports resolve and --help answers.

``--help`` runs in this process (``runpy``, as ``python SCRIPT --help`` would run it): a fresh
interpreter per script would spend seconds importing torch and transformers again each time. What
a fresh interpreter adds, that ``python scripts/x.py`` finds the project's modules, is checked on
the source: a script that imports the project puts the repository root on ``sys.path`` first.
"""

from __future__ import annotations

import ast
import contextlib
import io
import runpy
import sys

import pytest

from helpers import ROOT

ENTRY_POINTS = [
    "train.py",
    "test.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scripts").glob("*.py") if p.name != "__init__.py"),
]
PROJECT = {p.stem for p in ROOT.glob("*.py")} | {p.parent.name for p in ROOT.glob("*/__init__.py")}


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help(script: str, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    monkeypatch.chdir(ROOT)
    with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    assert done.value.code in (0, None)
    assert "usage" in out.getvalue().lower()


@pytest.mark.parametrize("script", [s for s in ENTRY_POINTS if s.startswith("scripts/")])
def test_script_finds_the_project_when_run_from_its_folder(script: str) -> None:
    """``python scripts/x.py`` puts scripts/ on sys.path, not the root: the root must be added
    before the first import of a project module."""
    tree = ast.parse((ROOT / script).read_text())
    inserted = False
    for node in sorted((n for n in ast.walk(tree) if hasattr(n, "lineno")), key=lambda n: (n.lineno, n.col_offset)):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "sys.path.insert":
            inserted = True
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        project = [n for n in names if n.split(".")[0] in PROJECT]
        assert not project or inserted, f"{script} imports {project} before putting the repository root on sys.path"
