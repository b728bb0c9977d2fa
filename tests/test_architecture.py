"""The layering of the package (docs/architecture.md), checked over the source: no import runs up the layers or
sideways between methods, front doors list their names for type checkers, and no public name means two things."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import import_graph  # noqa: E402

import mmlens  # noqa: E402

METHODS = ("influence", "shift", "concepts", "steer", "align")


def test_no_import_runs_against_the_layering():
    assert import_graph.violations() == []


def test_methods_import_neither_the_zoo_nor_benchmarks_nor_the_audit():
    edges = import_graph.package_edges()
    for method in METHODS:
        for above in ("zoo", "bench", "audit", "cli"):
            assert (method, above) not in edges, edges.get((method, above))
        for other in METHODS:
            assert other == method or (method, other) not in edges, edges.get((method, other))


def test_the_checker_sees_a_planted_upward_import(tmp_path):
    """The layering test would fail: an import of the zoo inside a function of a method is found."""
    tree = tmp_path / "mmlens"
    for pkg in ("steer", "zoo"):
        (tree / pkg).mkdir(parents=True)
        (tree / pkg / "__init__.py").write_text("")
    (tree / "steer" / "bench.py").write_text("def f():\n    from mmlens.zoo import world_of\n")
    assert any(v.startswith("steer -> zoo (up") for v in import_graph.violations(tree))


def _front_doors() -> list[Path]:
    return sorted(p for p in (ROOT / "src" / "mmlens").glob("*/__init__.py"))


@pytest.mark.parametrize("init", _front_doors(), ids=lambda p: p.parent.name)
def test_every_front_door_names_its_exports_for_type_checkers(init):
    """A lazy front door (``__getattr__``) has a stub with explicit imports; the others import explicitly."""
    source = init.read_text()
    if "attach_stub" in source or "__getattr__" in source:
        stub = init.with_suffix(".pyi")
        assert stub.is_file(), f"{init} is lazy but has no {stub.name}"
        names = [
            a.asname or a.name
            for node in ast.parse(stub.read_text()).body
            if isinstance(node, ast.ImportFrom)
            for a in node.names
        ]
        package = importlib.import_module(f"mmlens.{init.parent.name}")
        assert sorted(package.__all__) == sorted(names)
        for name in names:  # every listed name resolves (the stub and the modules agree)
            assert getattr(package, name) is not None
    else:
        assert "import" in source or init.parent.name in ("bench", "cli"), f"{init} exports nothing"


def test_importing_a_front_door_does_not_import_torch():
    """What the CLI relies on to start fast: the lazy packages import their submodules on first use only."""
    import subprocess

    code = (
        "import sys, mmlens.models, mmlens.influence, mmlens.shift, mmlens.concepts, mmlens.steer, mmlens.align, "
        "mmlens.zoo, mmlens.audit; print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False"


def test_no_public_name_is_defined_twice():
    """A name exported (``__all__``) by two modules is the same object (a re-export), never two definitions."""
    seen: dict[str, tuple[str, object]] = {}
    clashes = []
    for info in pkgutil.walk_packages(mmlens.__path__, "mmlens."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if isinstance(obj, (int, float, str, tuple, frozenset)):  # constants may share a name and a value
                continue
            if name in seen and seen[name][1] is not obj:
                clashes.append(f"{name}: {seen[name][0]} and {info.name}")
            seen.setdefault(name, (info.name, obj))
    assert clashes == []
