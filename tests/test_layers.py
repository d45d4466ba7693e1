"""The package's layers, read from its source: every import points down (docs/design.md, "Layers").

    foundation  noisefast._dtypes, _checks, _layout, _scalars, _compile, _library, _dtensor, random (and
                the compiled _C): dtypes, argument checks, layouts, scalars on a device, backend choice,
                DTensor shards, seeds and stream numbers
    reference   noisefast.reference.*: the eager specification            -> foundation
    triton      noisefast.triton.*: the Triton kernels                      -> foundation
    ops         noisefast.ops.*: the custom ops                             -> foundation, ops
    api         every other module (ema, schedules, regularizers, ...)      -> foundation, ops, api
    package     noisefast/__init__.py, the public names                     -> anything

The ops reach their reference and Triton kernels only through ``_library.Kernels`` (by module name,
imported at first use), so no op imports noisefast.reference or noisefast.triton, and no public
function runs a reference. Also checked: no import inside a function (the way a cycle is usually
dodged), no private name imported from another module, no cycle among module-level imports.
"""
from __future__ import annotations

import ast
import pathlib
from typing import Dict, List, Set, Tuple

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "noisefast"

FOUNDATION = {"noisefast._dtypes", "noisefast._checks", "noisefast._list_operands", "noisefast._layout", "noisefast._scalars",
              "noisefast._compile", "noisefast._library", "noisefast._dtensor", "noisefast.random", "noisefast._C"}
ALLOWED = {
    "foundation": {"foundation"},
    "reference": {"foundation", "reference"},
    "triton": {"foundation", "triton"},
    "ops": {"foundation", "ops"},
    "api": {"foundation", "ops", "api"},
    "package": {"foundation", "reference", "triton", "ops", "api", "package"},
}
# The one import inside a function: loading the compiled extension, which may fail (the package then
# runs its reference kernels and says why).
FUNCTION_LEVEL_ALLOWED = {("noisefast._library", "noisefast._C")}


def layer_of(module: str) -> str:
    if module in FOUNDATION:
        return "foundation"
    if module == "noisefast":
        return "package"
    for layer in ("reference", "triton", "ops"):
        if module == f"noisefast.{layer}" or module.startswith(f"noisefast.{layer}."):
            return layer
    return "api"


def modules_of(package: pathlib.Path) -> Dict[str, Tuple[pathlib.Path, bool]]:
    """Dotted name -> (file, is a package __init__) of every module under ``package``."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        if is_init:
            parts = parts[:-1]
        found[".".join(parts)] = (path, is_init)
    return found


class Import:
    def __init__(self, target: str, names: List[str], line: int, in_function: bool):
        self.target, self.names, self.line, self.in_function = target, names, line, in_function


def internal_imports(module: str, path: pathlib.Path, is_init: bool, known: Set[str]) -> List[Import]:
    """The imports of noisefast modules in one file, each resolved to the module it loads."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if is_init else module.rpartition(".")[0]
    found: List[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                                                       ast.ClassDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == "noisefast" or alias.name.startswith("noisefast."):
                        found.append(Import(alias.name, [], child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                if source == "noisefast" or source.startswith("noisefast."):
                    plain = []
                    for alias in child.names:
                        submodule = f"{source}.{alias.name}"
                        if submodule in known or submodule == "noisefast._C":
                            found.append(Import(submodule, [], child.lineno, in_function))
                        else:
                            plain.append(alias.name)
                    if plain:
                        found.append(Import(source, plain, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def layer_violations(package: pathlib.Path) -> List[str]:
    """Every breach of the rules above in the package at ``package``, as readable lines."""
    modules = modules_of(package)
    known = set(modules)
    problems: List[str] = []
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for module, (path, is_init) in modules.items():
        where = path.relative_to(package.parent)
        for imp in internal_imports(module, path, is_init, known):
            if imp.target == module:
                continue
            if layer_of(imp.target) not in ALLOWED[layer_of(module)]:
                problems.append(f"{where}:{imp.line}: {module} ({layer_of(module)}) imports {imp.target} "
                                f"({layer_of(imp.target)}): an arrow up, or across to a backend")
            if imp.in_function and (module, imp.target) not in FUNCTION_LEVEL_ALLOWED:
                problems.append(f"{where}:{imp.line}: {module} imports {imp.target} inside a function")
            private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
            if private:
                problems.append(f"{where}:{imp.line}: {module} imports private {', '.join(private)} "
                                f"from {imp.target}")
            if not imp.in_function and imp.target in graph:
                graph[module].add(imp.target)
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return problems


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle through each strongly connected part of ``graph`` that has one (depth-first)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_every_import_points_down():
    problems = layer_violations(PACKAGE)
    assert not problems, "the layers of docs/design.md are broken:\n" + "\n".join(problems)


def test_every_module_has_a_layer():
    layers = {layer_of(m) for m in modules_of(PACKAGE)}
    assert layers == set(ALLOWED), layers


def _write(root: pathlib.Path, files: Dict[str, str]) -> pathlib.Path:
    for name, text in files.items():
        path = root / "noisefast" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "noisefast"


@pytest.mark.parametrize("files, expected", [
    ({"reference/__init__.py": "", "reference/x.py": "from ..ops import y\n", "ops/__init__.py": "",
      "ops/y.py": ""}, "an arrow up"),
    ({"ops/__init__.py": "", "ops/y.py": "from ..reference import x\n", "reference/__init__.py": "",
      "reference/x.py": ""}, "across to a backend"),
    ({"ops/__init__.py": "", "ops/y.py": "def f():\n    from .z import g\n", "ops/z.py": "def g(): pass\n"},
     "inside a function"),
    ({"ops/__init__.py": "", "ops/y.py": "from .z import _helper\n", "ops/z.py": "def _helper(): pass\n"},
     "imports private _helper"),
    ({"a.py": "from . import b\n", "b.py": "from .a import f\n"}, "import cycle"),
], ids=["upward", "op_to_reference", "lazy", "private", "cycle"])
def test_the_checker_catches_each_kind_of_breach(tmp_path, files, expected):
    package = _write(tmp_path, {"__init__.py": "", **files})
    problems = layer_violations(package)
    assert any(expected in p for p in problems), problems
