"""The package graph of ``src/mmlens`` drawn from its imports (every ``import`` statement, including those inside
functions), the layer each package belongs to, and the arrows that break the layering.

    python tools/import_graph.py                 # print the package graph and any violations
    python tools/import_graph.py --png FILE      # draw the layered graph (docs/images/architecture.png)

``tests/test_architecture.py`` asserts that :func:`violations` is empty.
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mmlens"

#: Bottom to top. A package may import packages of lower layers; siblings of one layer stand side by side and do
#: not import each other, except in the bottom layer (plain helpers that build on each other).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "enums", "io", "progress", "html", "answers"),
    ("models", "world"),
    ("influence", "shift", "concepts", "steer", "align"),
    ("zoo",),
    ("bench", "audit"),
    ("cli",),
    ("__main__",),
)
LAYER_NAMES = (
    "shared plumbing",
    "models and the world",
    "methods",
    "zoo",
    "benchmarks and audit",
    "command line",
    "python -m mmlens",
)


def layer_of(package: str) -> int:
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    raise KeyError(f"package {package!r} has no layer in tools/import_graph.py")


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def module_edges(src: Path = SRC) -> list[tuple[str, str, str]]:
    """(importing module, imported mmlens module, file:line) for every mmlens import in the source tree."""
    edges = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package_parts = module.split(".") if rel.name == "__init__" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package_parts[: len(package_parts) - node.level + 1]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                # `from mmlens import zoo` imports the subpackage zoo
                targets = [f"{name}.{a.name}" for a in node.names] if name == "mmlens" else [name]
            for target in targets:
                if target == "mmlens" or target.startswith("mmlens."):
                    edges.append((module, target, f"{path.relative_to(src.parent.parent)}:{node.lineno}"))
    return edges


def package_edges(src: Path = SRC) -> dict[tuple[str, str], list[str]]:
    """(package, package it imports) -> the places that import it."""
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for a, b, where in module_edges(src):
        pa, pb = _package(a), _package(b)
        if pa != pb and pb != "(root)":
            out[(pa, pb)].append(where)
    return dict(out)


def violations(src: Path = SRC) -> list[str]:
    """Every import that runs up the layers or sideways between siblings above the bottom layer."""
    bad = []
    for (a, b), places in sorted(package_edges(src).items()):
        if a == "(root)":
            continue
        la, lb = layer_of(a), layer_of(b)
        if lb > la or (lb == la and la > 0):
            kind = "up" if lb > la else "sideways"
            bad.append(f"{a} -> {b} ({kind}: layer {la} imports layer {lb}) at {', '.join(places[:3])}")
    return bad


def draw(path: Path, src: Path = SRC) -> None:
    """The packages in their layers (bottom at the bottom) with one arrow per package import."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    pos: dict[str, tuple[float, float]] = {}
    for i, layer in enumerate(LAYERS):
        shown = list(layer)
        for j, pkg in enumerate(shown):
            pos[pkg] = ((j + 1) / (len(shown) + 1), i)
    fig, ax = plt.subplots(figsize=(11, 7.5))
    for (a, b), _ in package_edges(src).items():
        if a not in pos or b not in pos:
            continue
        (x0, y0), (x1, y1) = pos[a], pos[b]
        bad = layer_of(b) > layer_of(a) or (layer_of(a) == layer_of(b) and layer_of(a) > 0)
        ax.annotate(
            "",
            xy=(x1, y1 + 0.12),
            xytext=(x0, y0 - 0.12),
            arrowprops={
                "arrowstyle": "->",
                "color": "#c0392b" if bad else "#8aa4bd",
                "lw": 1.6 if bad else 0.8,
                "alpha": 0.9 if bad else 0.5,
                "connectionstyle": "arc3,rad=0.08",
            },
        )
    for pkg, (x, y) in pos.items():
        ax.text(
            x,
            y,
            pkg,
            ha="center",
            va="center",
            fontsize=11,
            bbox={"boxstyle": "round,pad=0.35", "fc": "#f3f6f9", "ec": "#2e6f9e"},
        )
    for i, name in enumerate(LAYER_NAMES):
        ax.text(-0.02, i, name, ha="right", va="center", fontsize=10, color="#5a6672")
    ax.set_xlim(-0.35, 1.02)
    ax.set_ylim(-0.5, len(LAYERS) - 0.5)
    ax.axis("off")
    n_bad = len(violations(src))
    ax.set_title(f"mmlens package imports ({len(package_edges(src))} arrows, {n_bad} against the layering)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", type=Path, help="draw the graph into this PNG file")
    args = parser.parse_args()
    for (a, b), places in sorted(package_edges().items()):
        print(f"{a:>10} -> {b:<10} {len(places):3d} imports")
    bad = violations()
    print(f"{len(bad)} imports against the layering" + (":" if bad else "."))
    for line in bad:
        print("  " + line)
    if args.png:
        draw(args.png)
        print(f"written {args.png}")


if __name__ == "__main__":
    main()
