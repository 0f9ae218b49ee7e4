"""The package's imports run one way, with no cycle, function-level imports included.

errors, runs, helpers, checkpoints, resume <- data <- models <- training, callbacks, serve, summary <- forecast <- tools <- cli
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "imdb_lightning"
LAYERS = [
    {"errors", "runs", "helpers", "checkpoints", "resume"},
    {"data"},
    {"models"},
    {"training", "callbacks", "serve", "summary"},
    {"forecast"},
    {"tools"},
    {"cli", "__main__", "__init__"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """The package modules `name` imports, anywhere in its file."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `from .x import Name`: the module is .x
                target = target.rpartition(".")[0]
            if target and target != name and target != "imdb_lightning":
                found.add(target)
    return found


GRAPH = {name: imports(name) for name in MODULES}


def layer(name: str) -> int:
    top = name.split(".")[1] if "." in name else "__init__"
    return next(i for i, members in enumerate(LAYERS) if top in members)


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_one_way(name):
    upward = [target for target in GRAPH[name] if layer(target) > layer(name)]
    assert not upward, f"{name} (layer {layer(name)}) imports {upward}, a later layer"


def test_no_import_cycle():
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(GRAPH[name]):
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path + [name, target]))
            if target not in state:
                visit(target, path + [name])
        state[name] = "done"

    for name in sorted(MODULES):
        if name not in state:
            visit(name, [])


def test_the_walk_sees_relative_and_function_level_imports():
    assert "imdb_lightning.errors" in GRAPH["imdb_lightning.data.sources"]  # from ..errors import DataError
    assert "imdb_lightning.serve.predictor" in GRAPH["imdb_lightning.serve.predict"]  # imported inside main()
    assert "imdb_lightning.serve.runtime" in GRAPH["imdb_lightning.serve.export"]  # from . import runtime


def test_the_exported_runtime_stands_alone():
    # classify.py travels with exported models: it may not import the package at all
    assert not GRAPH["imdb_lightning.serve.runtime"]
    from imdb_lightning.data.tokenizer import PAD_ID, UNK_ID
    from imdb_lightning.serve import runtime

    assert (runtime.PAD_ID, runtime.UNK_ID) == (PAD_ID, UNK_ID)


def test_every_command_is_a_function_of_its_module():
    import importlib

    from imdb_lightning.cli import COMMANDS

    for name, (target, about) in COMMANDS.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function or "main")), name
        assert about and "\n" not in about


def test_the_readme_names_only_registered_encoders():
    from imdb_lightning.models.encoders import ENCODERS

    readme = (PACKAGE.parent / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if "encoders.py" in ln and "registry:" in ln)
    listed = [name.strip() for name in line.split("registry:")[1].split("(")[0].split(",")]
    assert listed and set(listed) <= set(ENCODERS), set(listed) - set(ENCODERS)
