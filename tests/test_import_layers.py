"""The import rules between the top-level parts, read from the sources (every import, lazy ones included):
plugin may import model and sr_writer; trainer may import model and sr_writer; model imports neither plugin
nor trainer; sr_writer imports none of them; never trainer -> plugin nor plugin -> trainer. ``model`` is what
plugin and trainer share (the labeler, the text metrics, the draft/final pair table)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PARTS = ("plugin", "model", "sr_writer", "trainer", "orthanc")
ALLOWED = {
    "plugin": {"model", "sr_writer"},
    "trainer": {"model", "sr_writer"},
    "model": {"sr_writer"},
    "sr_writer": set(),
    "orthanc": {"plugin"},  # Orthanc's entry script registers the plugin's callbacks
}


def unirg_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, "unirg.<part>...")`` of every absolute ``unirg.*`` import in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("unirg.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("unirg."):
            out.append((node.lineno, node.module))
    return out


def test_the_checker_sees_lazy_and_plain_imports(tmp_path):
    src = tmp_path / "x.py"
    src.write_text("import unirg.model.chexpert\n\ndef f():\n    from unirg.trainer.cli import main\n"
                   "from . import sibling\nimport os\n")
    assert unirg_imports(src) == [(1, "unirg.model.chexpert"), (4, "unirg.trainer.cli")]


@pytest.mark.parametrize("part", PARTS)
def test_part_imports_only_what_the_layering_allows(part):
    files = sorted((REPO_ROOT / part).rglob("*.py"))
    assert files, f"no sources under {part}/"
    wrong = []
    for path in files:
        for line, module in unirg_imports(path):
            target = module.split(".")[1]
            if target != part and target not in ALLOWED[part]:
                wrong.append(f"{path.relative_to(REPO_ROOT)}:{line}: {module}")
    assert not wrong, f"{part} may import only {sorted(ALLOWED[part])} (and itself):\n" + "\n".join(wrong)
