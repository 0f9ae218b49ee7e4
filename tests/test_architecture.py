"""The package's imports run one way, with no cycle, function-level imports included.

errors, runs, arguments, machine, standard_error, checkpoints, pretrained, resume <- data <- models
<- callbacks, checks, experiment, training, serve, summary <- tools
<- the lab (imdb_lightning_lab: bench, memory, forecast) <- cli.
The lab imports the package, never the reverse (the CLI's table names its commands as strings, imported when used).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE, LAB = ROOT / "imdb_lightning", ROOT / "imdb_lightning_lab"
LAYERS = [
    {"errors", "runs", "arguments", "machine", "standard_error", "checkpoints", "pretrained", "resume"},
    {"data"},
    {"models"},
    {"training", "callbacks", "experiment", "checks", "serve", "summary"},
    {"tools"},
    {"imdb_lightning_lab"},  # the lab: on the package, below the CLI that names its commands
    {"cli", "__main__", "__init__"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


MODULES = {module_name(p): p for folder in (PACKAGE, LAB) for p in sorted(folder.rglob("*.py"))}


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
            if target and target != name and target not in ("imdb_lightning", "imdb_lightning_lab"):
                found.add(target)
    return found


GRAPH = {name: imports(name) for name in MODULES}


def layer(name: str) -> int:
    package, _, rest = name.partition(".")
    top = package if package == LAB.name else rest.split(".")[0] or "__init__"
    return next(i for i, members in enumerate(LAYERS) if top in members)


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_one_way(name):
    upward = [target for target in GRAPH[name] if layer(target) > layer(name)]
    assert not upward, f"{name} (layer {layer(name)}) imports {upward}, a later layer"


def test_the_package_never_imports_the_lab():
    package = [name for name in MODULES if name.split(".")[0] == PACKAGE.name]
    into_lab = {name: sorted(t for t in GRAPH[name] if t.split(".")[0] == LAB.name) for name in package}
    assert not any(into_lab.values()), {name: found for name, found in into_lab.items() if found}
    assert "imdb_lightning.models.base" in GRAPH["imdb_lightning_lab.forecast.regressor"]  # the walk sees the lab's imports


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


def test_the_map_of_the_code_names_only_registered_encoders():
    from imdb_lightning.models.encoders import ENCODERS

    design = (PACKAGE.parent / "docs" / "design.md").read_text()  # (the file-by-file map)
    line = next(ln for ln in design.splitlines() if "encoders.py" in ln and "registry:" in ln)
    listed = [name.strip() for name in line.split("registry:")[1].split("(")[0].split(",")]
    assert listed and set(listed) <= set(ENCODERS), set(listed) - set(ENCODERS)
