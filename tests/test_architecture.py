"""The layer rule of docs/architecture.md, checked on every module's imports (module level and inside functions):
no module imports from a higher layer, no modules import each other in a cycle, and the heavy libraries stay in the
layers that need them."""
from __future__ import annotations

import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lower imports nothing higher; the most specific prefix decides a module's layer.
LAYERS = {
    "ptray": 0, "ptray.config": 0, "ptray.layout": 0, "ptray.stats": 0,
    "ptray.core": 1,
    "ptray.tracking": 2,
    "ptray.analysis": 3,
    "ptray.distributed": 4,
    "ptray.cli": 5,
}
# The lowest layer that may import each library.
LIBRARIES = {"torch": 1, "transformers": 1, "deepspeed": 1, "safetensors": 1, "peft": 1, "mlflow": 2, "ray": 4}

# Upward imports tolerated, one line per edge (importer, imported), each with its reason.
ALLOWED = {
    # Each method's, perturbation's and task's part of the schema lives with it (HF PEFT's tuners/<method>/config.py),
    # and the config reads their registries; those modules import no torch (test_config_imports_no_torch below).
    ("ptray.config", "ptray.core.tasks"),
    ("ptray.config", "ptray.core.methods"),
    ("ptray.config", "ptray.core.perturbations"),
    ("ptray.config_view", "ptray.core.methods"),
    ("ptray.config_view", "ptray.core.perturbations"),
}


def modules() -> dict[str, Path]:
    found = {}
    for f in sorted((ROOT / "ptray").rglob("*.py")):
        parts = f.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return found


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, wherever it is; `from a import b` names a.b when b is
    a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    # Imports under `if TYPE_CHECKING:` never run: annotations only, no dependency.
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out += [(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base, node.lineno) for a in node.names]
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def layer(module: str) -> int:
    owner = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    assert owner is not None, f"{module} is in no layer: add it to LAYERS here and to docs/architecture.md"
    return LAYERS[owner]


def edges() -> list[tuple[str, str, str]]:
    """(importer, imported, file:line) for every import of one ptray module by another."""
    found = modules()
    out = []
    for name, path in found.items():
        for target, line in imports(name, path, set(found)):
            if target.split(".")[0] == "ptray" and target != name:
                out.append((name, target, f"{path.relative_to(ROOT)}:{line}"))
    return out


def test_no_upward_imports():
    upward = [f"{where}: {a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, b, where in edges() if layer(b) > layer(a) and (a, b) not in ALLOWED]
    assert not upward, "imports against the layers of docs/architecture.md:\n" + "\n".join(upward)


def test_allowed_edges_still_exist():
    # An allowance nobody needs any more would hide the next upward import of that kind: remove it.
    stale = ALLOWED - {(a, b) for a, b, _ in edges()}
    assert not stale, f"remove from ALLOWED, nothing imports this way any more: {sorted(stale)}"


def test_no_import_cycles():
    graph: dict[str, set[str]] = {name: set() for name in modules()}
    where: dict[tuple[str, str], str] = {}
    for a, b, loc in edges():
        if (a, b) not in ALLOWED:
            graph[a].add(b)
            where.setdefault((a, b), loc)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        cycle = e.args[1]  # [n0, n1, ..., n0], each node depending on the one before it
        steps = [f"{where[b, a]}: {b} imports {a}" for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("import cycle:\n" + "\n".join(steps)) from None


def test_libraries_stay_in_their_layers():
    wrong = []
    for name, path in modules().items():
        for target, line in imports(name, path, set()):
            library = target.split(".")[0]
            if library in LIBRARIES and layer(name) < LIBRARIES[library]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {name} (layer {layer(name)}) imports {library} "
                             f"(from layer {LIBRARIES[library]} up)")
    assert not wrong, "libraries against the layers of docs/architecture.md:\n" + "\n".join(wrong)


def test_config_imports_no_torch():
    """What the upward edges above allow: reading and showing a config loads no torch (nor Ray, nor MLflow)."""
    import subprocess
    import sys

    code = ("import sys, ptray.config, ptray.config_view; "
            "print(sorted(m for m in ('torch', 'ray', 'mlflow', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
