"""tlfast.data is the bottom layer: it imports nothing of the model or run layers."""

import ast
import os

DATA = os.path.join(os.path.dirname(__file__), os.pardir, "tlfast", "data")
# What tlfast.data may import from outside itself: settings, atomic writes,
# locks and error helpers, none of which imports back.
ALLOWED = {"tlfast.config", "tlfast.atomic", "tlfast.locks", "tlfast.errors"}


def _imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "tlfast":
                yield from (f"tlfast.{alias.name}" for alias in node.names)
            else:
                yield node.module


def test_the_data_layer_imports_no_layer_above_it():
    upward = []
    for folder, _, names in os.walk(DATA):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                upward += [f"{os.path.relpath(path, DATA)}: {module}"
                           for module in _imports(path)
                           if module.startswith("tlfast.")
                           and not module.startswith("tlfast.data")
                           and module not in ALLOWED]
    assert not upward
