"""The package's shape: data flow one way, so no module imports one that imports it back."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "polarmap"


def imports_of(path: Path) -> set[str]:
    """polarmap modules a module imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("polarmap"):
            names = [node.module] if node.module != "polarmap" else [f"polarmap.{alias.name}" for alias in node.names]
            found.update(name.split(".")[1] for name in names if "." in name)
    return found - {"__init__"}


def test_no_import_circles_and_leaf_modules_know_no_files():
    graph = {path.stem: imports_of(path) for path in PACKAGE.glob("*.py") if path.stem != "__init__"}

    def reaches(start, target, seen=()):
        return any(step == target or (step not in seen and reaches(step, target, (*seen, step))) for step in graph.get(start, ()))

    circles = sorted(name for name in graph if reaches(name, name))
    assert not circles, circles
    # the maths of a pattern, a scan or a lattice, and the atomic writers, import nothing of the
    # package but each other
    leaves = {"pattern", "virtual", "atomic", "classes", "disc", "orientation", "ood", "cells", "columns", "quantities", "dataset_kind", "blocks", "seeds", "splines"}
    for leaf in leaves:
        assert graph[leaf] <= leaves, (leaf, graph[leaf])
    assert "io" not in graph["models"] and "preprocessing" not in graph["io"]
    # evaluation applies predictors (polarmap.predictors), it does not train them
    assert "training" not in graph["evaluation"] and "training" not in graph["predictors"], (graph["evaluation"], graph["predictors"])
    # readers only read: they know no data set format, no preprocessing, no model (the leaf of
    # physical quantities gives them the electron wavelength)
    assert graph["readers"] <= {"quantities"}, graph["readers"]
