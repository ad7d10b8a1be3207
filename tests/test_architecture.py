"""The import graph of the package: layers run one way, no cycles, no private names
imported across modules, and every module placed in a layer.

Every ``.py`` under ``platform/mllm4wtal`` is parsed with ``ast``; every import counts,
at module level, inside functions and under ``TYPE_CHECKING``. ``from a import b`` is an
import of the module ``a.b`` when that module exists, else of ``a``. Imports by name
(``importlib.import_module("mllm4wtal.x")`` or a ``"mllm4wtal.x:Attr"`` string, as the
describe backends table holds) count for the layers, not for cycles: they run on demand.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "mllm4wtal"
ROOT = Path(__file__).resolve().parents[1] / "platform" / PACKAGE

# lowest first: a module may import modules of its own rank or lower ranks
LAYERS: dict[str, int] = {
    "mllm4wtal.errors": 0,
    "mllm4wtal.files": 0,  # the write policy: every file a command writes
    "mllm4wtal": 0,  # the package __init__ only
    "mllm4wtal.config": 1,
    "mllm4wtal.data": 2,
    "mllm4wtal.text": 3,
    "mllm4wtal.model": 4,
    "mllm4wtal.train": 5,
    "mllm4wtal.evaluation": 6,
    "mllm4wtal.inference": 7,
    "mllm4wtal.sweep": 8,
    "mllm4wtal.describe": 8,
    "mllm4wtal.ray_session": 8,
    "mllm4wtal.report": 9,
    "mllm4wtal.cli": 10,
}


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a module of the package (or a name there that is no module we know)
    names: tuple[str, ...]  # the names of ``from target import names``; () for ``import``
    line: int
    by_name: bool = False  # import_module("...") or a "module:Attr" string


BY_NAME = re.compile(rf"{PACKAGE}(\.\w+)*(:\w+)?")


def rank(module: str) -> int | None:
    """The layer of a module: the longest table entry that is it or a package above it;
    ``mllm4wtal`` itself covers only the package ``__init__``."""
    if module == PACKAGE:
        return LAYERS[PACKAGE]
    best = None
    for prefix, r in LAYERS.items():
        if prefix != PACKAGE and (module == prefix or module.startswith(prefix + ".")):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, r)
    return best[1] if best else None


def module_sources(root: Path = ROOT) -> dict[str, tuple[str, bool]]:
    """Module name -> (source, is_package) for every ``.py`` under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = (PACKAGE,) + path.relative_to(root).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        out[name] = (path.read_text(encoding="utf-8"), is_package)
    return out


def from_target(name: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module of ``from <module> import ...`` written in module ``name``."""
    if not node.level:
        return node.module or ""
    base = name if is_package else name.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{node.module}" if node.module else base


def imports_of(name: str, source: str, is_package: bool, known: set[str]) -> list[Import]:
    """Every import of a package module in ``source`` (all nesting levels)."""
    found = []
    tree = ast.parse(source, filename=name)
    import_module_args = {
        node.args[0].value for node in ast.walk(tree)
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
        and (getattr(node.func, "attr", None) == "import_module"
             or getattr(node.func, "id", None) in ("import_module", "__import__"))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    found.append(Import(name, alias.name, (), node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = from_target(name, is_package, node)
            if not (target == PACKAGE or target.startswith(PACKAGE + ".")):
                continue
            plain = []
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:  # ``from pkg import module``
                    found.append(Import(name, sub, (), node.lineno))
                else:
                    plain.append(alias.name)
            if plain:
                found.append(Import(name, target, tuple(plain), node.lineno))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            call_arg = text in import_module_args
            if BY_NAME.fullmatch(text) and (":" in text or call_arg):
                found.append(Import(name, text.partition(":")[0], (), node.lineno, True))
    return found


def graph(sources: dict[str, tuple[str, bool]]) -> list[Import]:
    known = set(sources)
    return [imp for name, (src, pkg) in sorted(sources.items())
            for imp in imports_of(name, src, pkg, known)]


def unplaced(sources: dict[str, tuple[str, bool]], imports: list[Import]) -> list[str]:
    out = [f"{m} is in no layer: add it to LAYERS in tests/test_architecture.py"
           for m in sorted(sources) if rank(m) is None]
    out += [f"{i.importer} imports {i.target}, which is in no layer (line {i.line})"
            for i in imports if rank(i.target) is None]
    return out


def upward(imports: list[Import]) -> list[str]:
    out = []
    for i in imports:
        a, b = rank(i.importer), rank(i.target)
        if a is not None and b is not None and b > a:
            out.append(f"{i.importer} imports {i.target} (rank {a} -> rank {b}), "
                       f"line {i.line}")
    return out


def private(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """``from x import _y`` with x a module of the package (a name or a submodule _y)."""
    out = []
    for name, (src, is_package) in sorted(sources.items()):
        for node in ast.walk(ast.parse(src, filename=name)):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = from_target(name, is_package, node)
            if not (target == PACKAGE or target.startswith(PACKAGE + ".")):
                continue
            out += [f"{name} imports private name {a.name} from {target}, line {node.lineno}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.endswith("__")]
    return out


def cycles(imports: list[Import]) -> list[str]:
    """One cycle per strongly connected component (Tarjan), as ``a -> b -> a``."""
    edges: dict[str, set[str]] = {}
    for i in imports:
        if not i.by_name:
            edges.setdefault(i.importer, set()).add(i.target)
            edges.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges[v]:
                components.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return ["import cycle: " + " -> ".join(shortest_cycle(c[0], edges, set(c)) + [c[0]])
            for c in components]


def shortest_cycle(start: str, edges: dict[str, set[str]], members: set[str]) -> list[str]:
    """The modules of a shortest cycle through ``start`` (breadth-first inside its
    strongly connected component)."""
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for v in frontier:
            for w in sorted(edges[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return path[::-1]
                if w not in prev:
                    prev[w] = v
                    nxt_frontier.append(w)
        frontier = nxt_frontier
    return [start]


def check(sources: dict[str, tuple[str, bool]]) -> dict[str, list[str]]:
    imports = graph(sources)
    return {"unplaced": unplaced(sources, imports), "upward": upward(imports),
            "private": private(sources), "cycles": cycles(imports)}


def report(kind: str, found: list[str]) -> str:
    return f"{len(found)} {kind} violation(s):\n  " + "\n  ".join(found)


# ---------------------------------------------------------------- the package itself

SOURCES = module_sources()
FOUND = check(SOURCES)


def test_the_package_is_found():
    assert len(SOURCES) > 20
    assert {"mllm4wtal", "mllm4wtal.errors", "mllm4wtal.model.csr"} <= set(SOURCES)


def test_every_module_is_in_a_layer():
    assert not FOUND["unplaced"], report("placement", FOUND["unplaced"])


def test_imports_run_down_the_layers():
    assert not FOUND["upward"], report("layer", FOUND["upward"])


def test_no_import_cycles():
    assert not FOUND["cycles"], report("cycle", FOUND["cycles"])


def test_no_private_names_imported_across_modules():
    assert not FOUND["private"], report("private-import", FOUND["private"])


# ---------------------------------------------------------------- the checker itself

def test_checker_reports_each_kind_of_violation():
    sources = {
        "mllm4wtal": ('"""doc"""\n__version__ = "1"\n', True),
        "mllm4wtal.errors": ("class UserError(ValueError): ...\n", False),
        "mllm4wtal.data": ("from .x import load\n", True),
        "mllm4wtal.data.x": ("from ..errors import UserError\n"
                             "def load():\n"
                             "    from ..train import loop\n", False),
        "mllm4wtal.model": ("", True),
        "mllm4wtal.model.a": ("from . import b\n", False),
        "mllm4wtal.model.b": ("def f():\n    from mllm4wtal.model import a\n", False),
        "mllm4wtal.train": ("", True),
        "mllm4wtal.train.loop": ("from typing import TYPE_CHECKING\n"
                                 "if TYPE_CHECKING:\n"
                                 "    import mllm4wtal.report.tables\n"
                                 "from mllm4wtal.data.x import _helper, load\n"
                                 "from mllm4wtal import __version__\n"
                                 "from ..model import _impl\n", False),
        "mllm4wtal.model._impl": ("", False),
        "mllm4wtal.report": ("", True),
        "mllm4wtal.report.tables": ("import mllm4wtal.extras\n", False),
        "mllm4wtal.plugins": ("", False),
        "mllm4wtal.text": ('import importlib\nPLUGINS = {"x": "mllm4wtal.sweep.x:X"}\n'
                           'def f():\n    return importlib.import_module("mllm4wtal.cli")\n'
                           'NOTE = "see mllm4wtal.report for details"\n', True),
        "mllm4wtal.sweep.x": ("import mllm4wtal.text\n", False),
    }
    found = check(sources)
    assert found["upward"] == [
        "mllm4wtal.data.x imports mllm4wtal.train.loop (rank 2 -> rank 5), line 3",
        "mllm4wtal.text imports mllm4wtal.sweep.x (rank 3 -> rank 8), line 2",
        "mllm4wtal.text imports mllm4wtal.cli (rank 3 -> rank 10), line 4",
        "mllm4wtal.train.loop imports mllm4wtal.report.tables (rank 5 -> rank 9), line 3",
    ]
    assert found["cycles"] == [  # the upward import closes a cycle too
        "import cycle: mllm4wtal.data.x -> mllm4wtal.train.loop -> mllm4wtal.data.x",
        "import cycle: mllm4wtal.model.a -> mllm4wtal.model.b -> mllm4wtal.model.a"]
    assert found["private"] == [
        "mllm4wtal.train.loop imports private name _helper from mllm4wtal.data.x, line 4",
        "mllm4wtal.train.loop imports private name _impl from mllm4wtal.model, line 6"]
    assert found["unplaced"] == [
        "mllm4wtal.plugins is in no layer: add it to LAYERS in tests/test_architecture.py",
        "mllm4wtal.report.tables imports mllm4wtal.extras, which is in no layer (line 1)",
    ]
    for kind in found:
        assert report(kind, found[kind]).count("\n  ") == len(found[kind])


def test_checker_passes_a_clean_tree_and_resolves_relative_imports():
    sources = {
        "mllm4wtal": ("", True),
        "mllm4wtal.errors": ("", False),
        "mllm4wtal.config": ("from .errors import UserError\n", False),
        "mllm4wtal.text": ("from .vocab import tokenize\nfrom . import vocab\n", True),
        "mllm4wtal.text.vocab": ("from ..config import load\nimport numpy\n", False),
        "mllm4wtal.cli": ("from mllm4wtal.text import vocab\n"
                          "def main():\n    import mllm4wtal.config\n", True),
        "mllm4wtal.cli.train": ("from .. import errors\nfrom . import main\n", False),
    }
    found = check(sources)
    assert found == {"unplaced": [], "upward": [], "private": [], "cycles": []}
    edges = {(i.importer, i.target) for i in graph(sources)}
    assert edges == {
        ("mllm4wtal.config", "mllm4wtal.errors"),
        ("mllm4wtal.text", "mllm4wtal.text.vocab"),
        ("mllm4wtal.text.vocab", "mllm4wtal.config"),
        ("mllm4wtal.cli", "mllm4wtal.text.vocab"),
        ("mllm4wtal.cli", "mllm4wtal.config"),
        ("mllm4wtal.cli.train", "mllm4wtal.errors"),
        ("mllm4wtal.cli.train", "mllm4wtal.cli"),
    }
    assert rank("mllm4wtal.config.schema") == 1 and rank("mllm4wtal.cli.sweep") == 10
    assert rank("mllm4wtal.describe") == 8 and rank("mllm4wtal.errorsx") is None
