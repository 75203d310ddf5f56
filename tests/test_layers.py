"""The package's import structure: no import cycles, and no module imports one from a
higher layer (imports inside functions count: they are cycles deferred, not avoided).

The layers, lowest first (docs/architecture.md, "Layout of the code"):

- base: errors, files (atomic writes, checksums), console, config, stats, precision, the
  package's __init__
- runs: run directories and what hangs off them (records: the typed run manifest, runs,
  tracking, scoring, strategy, report, explain)

- data: stores, sources, tf.data readers, each modality's preprocessing
- models: backbones, heads, pretext tasks
- learning: the training loop, semi-supervised training, frozen-feature arms, the
  classical baselines, exports, pruning
- stages: one module per verb, and sweeps
- interface: the CLI and the Python API
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pretrainer"

LAYERS = [
    ("base", ["errors", "files", "console", "config", "stats", "precision", ""]),
    ("runs", ["records", "runs", "tracking", "scoring", "strategy", "report", "explain"]),
    ("data", ["data"]),
    ("models", ["models", "pretext"]),
    ("learning", ["train", "semi", "frozen", "baselines", "exports", "prune"]),
    ("stages", ["stages", "sweep", "scaffold"]),
    ("interface", ["cli", "entry", "__main__", "api"]),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its body)."""
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".") if package else []
                    base = base[:len(base) - node.level + 1] + ([node.module] if node.module
                                                               else [])
                    base = ".".join(p for p in base if p)
                elif (node.module or "").split(".")[0] == "pretrainer":
                    base = node.module.partition(".")[2]
                else:
                    continue
                for alias in node.names:
                    target = f"{base}.{alias.name}".strip(".")
                    found.add(target if target in modules else base)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "pretrainer":
                        found.add(alias.name.partition(".")[2])
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for i, (_, tops) in enumerate(LAYERS):
        if top in tops:
            return i
    raise AssertionError(f"pretrainer.{module} is in no layer: add it to LAYERS")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_is_read():
    graph = _imports(_modules())
    # a few edges that must be seen, so the checks below cannot pass on an empty graph
    assert "runs" in graph["tracking"]
    assert "data.modalities.image" in graph["data.pipeline"]  # a top-level import
    assert "precision" in graph["stages.doctor"]  # an import inside a function
    assert "stages.finetune" in graph["cli"]


def test_no_import_cycles():
    assert _cycles(_imports(_modules())) == []


def test_no_module_imports_a_higher_layer():
    graph = _imports(_modules())
    upward = [f"pretrainer.{a} ({LAYERS[_layer(a)][0]}) imports pretrainer.{b} "
              f"({LAYERS[_layer(b)][0]})"
              for a in sorted(graph) for b in sorted(graph[a]) if _layer(b) > _layer(a)]
    assert upward == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_two_test_modules_share_a_name():
    """pytest imports test files by their base name: a second test_tracking.py (one in
    tests/, one in tests/e2e/) was a collection error in CI, not a test."""
    from collections import Counter

    names = Counter(p.name for p in (PACKAGE.parent / "tests").rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1]


MAX_MODULE_LINES = 420  # a module that grows past this holds two subjects: split it
MAX_FUNCTION_LINES = 80  # docstring included


def test_no_module_or_function_outgrows_one_subject():
    """Issue 26's size rule, checked: modules up to ~400 lines, functions up to 80."""
    long_modules, long_functions = [], []
    for name, path in sorted(_modules().items()):
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"pretrainer.{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long_functions.append(f"pretrainer.{name}.{node.name}: {size} lines")
    assert long_modules == [] and long_functions == []
