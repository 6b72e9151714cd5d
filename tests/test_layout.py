"""The package's layers: imports flow downward only, at module level, with no circle and no way
around it; the run-store fingerprint covers every module that computes y."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import headflow
from headflow.method import experiment, study
from headflow.store import fingerprint
from headflow.store.runstore import RunStore

PKG = Path(headflow.__file__).resolve().parent
# dependencies that are optional extras (pyproject) and heavy: the only imports allowed inside functions
OPTIONAL_HEAVY = {"ray", "nnsight"}
# calls that import by name, bypassing the import statements this test reads
DYNAMIC_IMPORTS = {"import_module", "__import__", "spec_from_file_location", "exec_module", "find_spec", "load_module"}


# ------------------------------------------------------------------------------------ the checker
def module_of(path: Path, pkg: Path = PKG) -> str:
    rel = path.relative_to(pkg.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def layer_of(module: str, layers=headflow.LAYERS, entries=headflow.ENTRY_POINTS) -> int:
    """Rank of a module's layer: the layers in :data:`headflow.LAYERS` order, the entry-point modules
    above them all, and the package's own ``__init__`` on top: it re-exports the public calls
    (``headflow.rank_heads`` ...), so no module of the package may import it."""
    parts = module.split(".")
    if len(parts) == 1:
        return len(layers) + 1
    if parts[1] in layers:
        return layers.index(parts[1])
    if len(parts) == 2 and parts[1] in entries:
        return len(layers)
    raise AssertionError(f"{module} is in no layer: move it into one of {layers} (or list it as an entry point)")


def _module_level(tree: ast.Module) -> set[int]:
    """ids of statements that run at import time (the module body, and the bodies of its top-level
    ``if``/``try`` blocks)."""
    out: set[int] = set()

    def mark(nodes):
        for n in nodes:
            out.add(id(n))
            if isinstance(n, (ast.If, ast.Try)):
                mark(n.body), mark(n.orelse), mark(getattr(n, "finalbody", []))
                for h in getattr(n, "handlers", []):
                    mark(h.body)
    mark(tree.body)
    return out


def _targets(node, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The project modules an import statement binds (submodules where a name is one)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "headflow"]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        src = ".".join(base + ([node.module] if node.module else []))
    else:
        src = node.module or ""
    if src.split(".")[0] != "headflow":
        return []
    return [f"{src}.{a.name}" if f"{src}.{a.name}" in known else src for a in node.names]


def check(pkg: Path = PKG, layers=headflow.LAYERS, entries=headflow.ENTRY_POINTS) -> list[str]:
    """Every breach of the layer rules in the package at ``pkg``, as messages (empty: none)."""
    files = sorted(pkg.rglob("*.py"))
    known = {module_of(p, pkg) for p in files}
    problems, graph = [], {m: set() for m in known}
    for path in files:
        module = module_of(path, pkg)
        own = layer_of(module, layers, entries)
        tree = ast.parse(path.read_text(), filename=str(path))
        top = _module_level(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = _targets(node, module, path.name == "__init__.py", known)
                if getattr(node, "level", 0) == 0 and not targets and id(node) not in top:
                    dep = (node.module if isinstance(node, ast.ImportFrom) else node.names[0].name).split(".")[0]
                    if dep not in OPTIONAL_HEAVY:
                        problems.append(f"{module}:{node.lineno}: function-level import of {dep!r} (only optional "
                                        f"heavy dependencies {sorted(OPTIONAL_HEAVY)} may be imported inside functions)")
                for t in targets:
                    if id(node) not in top:
                        problems.append(f"{module}:{node.lineno}: function-level import of the project module {t}")
                    if layer_of(t, layers, entries) > own:
                        problems.append(f"{module}:{node.lineno}: upward import of {t} "
                                        f"({(t.split('.') + ['the package'])[1]} is above "
                                        f"{(module.split('.') + ['the package'])[1]})")
                    if t != module:
                        graph[module].add(t)
            elif isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
                if name in DYNAMIC_IMPORTS:
                    problems.append(f"{module}:{node.lineno}: dynamic import {name}() (import modules by statement)")
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in ("__getattr__", "__dir__"):
                problems.append(f"{module}:{node.lineno}: module-level {node.name} (lazy attributes hide imports)")
    problems += [f"import circle: {' -> '.join(c)}" for c in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One representative circle per strongly connected component of more than one module."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v), on.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(comp) + [sorted(comp)[0]])
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# ------------------------------------------------------------------------------------ the package
def test_package_holds_only_layers_and_entry_points():
    top = sorted(p.name for p in PKG.iterdir() if not p.name.startswith(("_", ".")) or p.name == "__init__.py")
    expected = sorted([*headflow.LAYERS, *(f"{e}.py" for e in headflow.ENTRY_POINTS), "__init__.py"])
    assert [t for t in top if t != "__pycache__"] == expected


def test_entry_points_are_thin():
    for name in headflow.ENTRY_POINTS:
        src = (PKG / f"{name}.py").read_text()
        code = [ln for ln in src.splitlines() if ln.strip() and not ln.startswith(('"""', "(", "#"))]
        assert len(src.splitlines()) <= 8 and "def " not in src, f"headflow/{name}.py should only delegate"
        assert any(ln.startswith("from headflow.") and ln.endswith(" import main") for ln in code), name


def test_imports_flow_downward_at_module_level_without_circles():
    assert check() == []


def test_figure_modules_are_short():
    for p in (PKG / "book" / "figures").glob("*.py"):
        assert len(p.read_text().splitlines()) < 250, p.name


# ------------------------------------------------------------------------------------ the checker fails
def _plant(tmp_path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "headflow"
    for rel, text in {"__init__.py": "", "util/__init__.py": "", "util/a.py": "", "models/__init__.py": "",
                      "models/b.py": "", "run.py": "", **files}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


@pytest.mark.parametrize("files, needle", [
    ({"util/a.py": "from headflow.models import b\n"}, "upward import of headflow.models.b"),
    ({"models/b.py": "def f():\n    from headflow.util import a\n"}, "function-level import of the project module"),
    ({"models/b.py": "def f():\n    import pandas\n"}, "function-level import of 'pandas'"),
    ({"util/a.py": "from . import c\n", "util/c.py": "from headflow.util import a\n"}, "import circle"),
    ({"models/b.py": "import importlib\nm = importlib.import_module('headflow.util.a')\n"}, "dynamic import"),
    ({"models/b.py": "x = __import__('headflow.util.a')\n"}, "dynamic import"),
    ({"util/a.py": "def __getattr__(name):\n    return 1\n"}, "module-level __getattr__"),
    ({"models/b.py": "from ..run import main\n"}, "upward import of headflow.run"),
])
def test_checker_catches_each_breach(tmp_path, files, needle):
    pkg = _plant(tmp_path, files)
    problems = check(pkg, layers=("util", "models"), entries=("run",))
    assert any(needle in p for p in problems), problems


def test_checker_accepts_a_clean_package(tmp_path):
    pkg = _plant(tmp_path, {"models/b.py": "from headflow.util import a\nfrom . import c\n", "models/c.py": "",
                            "run.py": "from headflow.models.b import a\n",
                            "util/a.py": "def f():\n    import ray\n"})
    assert check(pkg, layers=("util", "models"), entries=("run",)) == []


# ------------------------------------------------------------------------------------ the cache key
def test_fingerprint_covers_the_computing_layers():
    mods = set(fingerprint.compute_modules())
    for layer in fingerprint.COMPUTE_LAYERS:
        on_disk = {module_of(p) for p in (PKG / layer).rglob("*.py")}
        assert on_disk and on_disk <= mods, layer
    assert not any(m.split(".")[1] in ("findings", "book", "scale", "organism") for m in mods)
    assert fingerprint.module_path("headflow.mechanism.interventions") == PKG / "mechanism" / "interventions.py"


def test_fingerprint_changes_with_any_computing_module():
    before = fingerprint.code_sha256()
    target = PKG / "mechanism" / "prefix_attention.py"
    original = target.read_bytes()
    try:
        target.write_bytes(original + b"\n# touched\n")
        assert fingerprint.code_sha256() != before
    finally:
        target.write_bytes(original)
    assert fingerprint.code_sha256() == before


def test_every_module_reached_by_an_attribution_run_is_in_the_fingerprint(tmp_path):
    """Trace the Python functions a real ``run_attribution`` executes on the organism (the study's
    dataset-mean baseline); each project module among them must be one the run-store key hashes."""
    st = study.setup("organism", per_class=1, n_reference=4, keep="all")
    reached: set[str] = set()

    def profile(frame, event, arg):
        if event == "call":
            name = frame.f_globals.get("__name__", "")
            if name.startswith("headflow."):
                reached.add(name)
    sys.setprofile(profile)
    try:
        experiment.run_attribution(st.model, st.tasks[:1], st.baseline, RunStore(tmp_path / "s", {"t": 1}),
                                   n_masks=10, ablation_rate=0.5, seed=0, target="logit", batch_size=5, progress=False)
    finally:
        sys.setprofile(None)
    assert {"headflow.method.experiment", "headflow.mechanism.interventions", "headflow.mechanism.prefix_reuse",
            "headflow.mechanism.prefix_attention", "headflow.store.runstore"} <= reached
    outside = reached - set(fingerprint.compute_modules())
    assert not outside, f"modules that compute a stored y but are not in the fingerprint: {sorted(outside)}"
