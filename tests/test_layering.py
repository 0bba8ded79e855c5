"""The code's own import statements keep every arrow pointing down: a part imports only the parts
on floors below it (or itself), and no module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

# Floors, bottom up (docs: README "Repository map"). A part may import a lower floor or itself.
FLOORS = {
    "cod_benchmarks": 1,  # facts about the benchmarks
    "evaluation": 2,  # metrics and their names
    "config_schema": 3,  # every key, its default, range and meaning
    "config": 3.2,  # loading and checking a config
    "encoders": 4,  # trunk families, loading, LoRA, adapters, pyramids, the encoder's rules and check
    "datasets": 4,
    "models": 4,  # decoder heads and losses
    "config_checks": 4.5,  # keys that contradict each other (an encoder section's: encoders.rules)
    "dinov3_encoder": 5,
    "caem": 5,
    "build": 6,  # the one builder
    "engine": 7,  # what train.py and test.py share
    "train": 8,
    "test": 8,
    "scripts": 9,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in FLOORS or rel.stem in FLOORS and len(rel.parts) == 1:
            name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
            out[name] = path
    return out


def _imports(path: Path, name: str) -> set[str]:
    """Project modules ``path`` imports, wherever the statement stands (top level or in a function)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in FLOORS}


def test_every_import_points_down() -> None:
    modules = _modules()
    assert {"build", "train", "test", "config", "engine.step"} <= set(modules)
    upward = []
    for name, path in modules.items():
        part = name.split(".")[0]
        for imported in _imports(path, name):
            other = imported.split(".")[0]
            if other != part and FLOORS[other] >= FLOORS[part]:
                upward.append(f"{path.relative_to(ROOT)} imports {imported} ({other} is not below {part})")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {n: {m for m in _imports(p, n) if m in modules and m != n} for n, p in modules.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(n: str, path: list[str]) -> list[str] | None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return [*path, n, m]
            if m not in state and (cycle := visit(m, [*path, n])):
                return cycle
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            cycle = visit(n, [])
            assert cycle is None, " -> ".join(cycle)


def test_the_layering_test_sees_an_upward_import(tmp_path) -> None:
    """The checker itself: a module importing a higher floor is reported."""
    path = tmp_path / "x.py"
    path.write_text("import train\nfrom engine.step import optimisation_step\n\ndef f():\n    import build\n")
    assert _imports(path, "config") == {"train", "engine.step", "build", "engine.step.optimisation_step"}


def test_model_code_takes_the_config_values_as_plain_strings() -> None:
    """Model code never imports the config's enums; the plain strings it accepts are the enums' values."""
    from caem import ALIGNS
    from config import CaemAlign, Fusion, Norm, Pyramid
    from encoders.pyramids import PYRAMIDS
    from models.blocks import NORMS
    from models.fusion import FUSIONS

    for accepted, values in ((PYRAMIDS, Pyramid), (NORMS, Norm), (ALIGNS, CaemAlign), (FUSIONS, Fusion)):
        assert sorted(accepted) == sorted(v.value for v in values)
    modules = _modules()
    model_code = [n for n in modules if n.split(".")[0] in ("encoders", "models", "caem", "dinov3_encoder")]
    importing = [
        n for n in model_code if {"config", "config_schema"} & _imports(modules[n], n) and n != "encoders.checks"
    ]
    assert not importing, importing
