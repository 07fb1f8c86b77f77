"""Each stage of src/foalnet imports only the stages below it: data <- features <- model <- train
<- infer, with cli.py on top (config anywhere). Read from the source, so a backwards import in a
function body fails too."""
from __future__ import annotations

import ast
from pathlib import Path

import foalnet

STAGES = ["data", "features", "model", "train", "infer"]
PACKAGE = Path(foalnet.__file__).parent


def foalnet_imports(path: Path) -> list[tuple[str, int]]:
    """(imported foalnet module, line) of every import statement in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
    return [(name, line) for name, line in found if name.split(".")[0] == "foalnet"]


def backwards_imports(package: Path) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).parts
        if len(parts) < 2 or parts[0] not in STAGES:
            continue
        level = STAGES.index(parts[0])
        for name, line in foalnet_imports(path):
            target = name.split(".")[1] if "." in name else ""
            if target == "cli" or (target in STAGES and STAGES.index(target) > level):
                problems.append(f"{'/'.join(parts)}:{line} imports {name}")
    return problems


def test_no_stage_imports_a_stage_above_it():
    assert backwards_imports(PACKAGE) == []


def test_the_check_finds_a_backwards_import(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bad.py").write_text("def f():\n    from foalnet.train.run import train_fold\n")
    (tmp_path / "infer").mkdir()
    (tmp_path / "infer" / "fine.py").write_text("from foalnet.train.data import Collator\nimport foalnet.config\n")
    assert backwards_imports(tmp_path) == ["data/bad.py:2 imports foalnet.train.run"]
