"""The package's import graph, read from its source with ``ast``: its cycles, and an SVG diagram.

``python tools/import_graph.py`` prints the import cycles among the modules of
``psycopg2_pool`` and exits 1 if there is any (0 otherwise);
``python tools/import_graph.py --svg docs/architecture.svg`` also draws the
modules in layers, each above the modules it imports. Every import counts,
including those under ``if TYPE_CHECKING:`` and those inside functions. The
modules are found by walking the package directory, never listed here, and
nothing is imported: the package need not be importable to be checked.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape, quoteattr

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "psycopg2_pool"

# When an import runs: as its module is imported, when a function that holds it
# is called, or never (under ``if TYPE_CHECKING:``, for type checkers only).
Kind = Literal["runtime", "deferred", "typing"]
KINDS: tuple[Kind, ...] = ("runtime", "deferred", "typing")
_KIND_NOTE: dict[Kind, str] = {
    "runtime": "",
    "deferred": " (inside a function)",
    "typing": " (under TYPE_CHECKING)",
}

Graph = Mapping[str, "set[str] | frozenset[str]"]


@dataclass(frozen=True, order=True)
class Import:
    """One import of a package module by another, and where it is written."""

    source: str
    target: str
    line: int
    kind: Kind
    statement: str


# ---------------------------------------------------------------- discovery


def discover_modules(package_dir: Path) -> dict[str, Path]:
    """Every module of the package, subpackages included: dotted name -> file."""
    package_dir = Path(package_dir).resolve()
    modules: dict[str, Path] = {}

    def walk(directory: Path, dotted: str) -> None:
        for path in sorted(directory.iterdir()):
            if path.is_dir():
                if (path / "__init__.py").is_file():
                    walk(path, f"{dotted}.{path.name}")
            elif path.suffix == ".py" and path.stem.isidentifier():
                name = dotted if path.name == "__init__.py" else f"{dotted}.{path.stem}"
                modules[name] = path

    walk(package_dir, package_dir.name)
    return modules


def labels(package_dir: Path) -> dict[str, str]:
    """Each module's short name: its path in the package without ``.py``
    (``pool``, ``__init__``, ``django/base``)."""
    package_dir = Path(package_dir).resolve()
    return {
        name: path.relative_to(package_dir).with_suffix("").as_posix()
        for name, path in discover_modules(package_dir).items()
    }


# ---------------------------------------------------------------- imports


def _type_checking_branch(test: ast.expr) -> bool | None:
    """True for ``TYPE_CHECKING``, False for ``not TYPE_CHECKING``, else None."""

    def named(expr: ast.expr) -> bool:
        return (isinstance(expr, ast.Name) and expr.id == "TYPE_CHECKING") or (
            isinstance(expr, ast.Attribute) and expr.attr == "TYPE_CHECKING"
        )

    if named(test):
        return True
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and named(test.operand):
        return False
    return None


_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _walk(node: ast.AST, kind: Kind) -> Iterator[tuple[ast.AST, Kind]]:
    """Every node under ``node`` with the kind an import there would have."""
    yield node, kind
    if isinstance(node, ast.If):
        branch = _type_checking_branch(node.test)
        if branch is not None:
            typing_part, runtime_part = (
                (node.body, node.orelse) if branch else (node.orelse, node.body)
            )
            for statement in typing_part:
                yield from _walk(statement, "typing")
            for statement in runtime_part:
                yield from _walk(statement, kind)
            return
    inner: Kind = "deferred" if isinstance(node, _FUNCTIONS) and kind == "runtime" else kind
    for child in ast.iter_child_nodes(node):
        yield from _walk(child, inner)


def _known_prefix(dotted: str, modules: Mapping[str, Path]) -> str | None:
    """The longest prefix of ``dotted`` that is a module of the package."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _targets(node: ast.AST, source: str, modules: Mapping[str, Path]) -> list[str]:
    """The package modules an import statement (or import call) names."""
    package = next(iter(modules)).split(".")[0] if modules else ""
    found: list[str | None] = []
    if isinstance(node, ast.Import):
        found = [_known_prefix(alias.name, modules) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            parts = source.split(".")
            if modules[source].name != "__init__.py":
                parts = parts[:-1]  # a module's relative imports start at its package
            if node.level - 1 >= len(parts):
                return []  # beyond the top of the package: not ours
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            found.append(submodule if submodule in modules else _known_prefix(base, modules))
    elif isinstance(node, ast.Call) and node.args:
        # importlib.import_module("psycopg2_pool.x") and __import__("psycopg2_pool.x").
        function = node.func
        name = (
            function.id
            if isinstance(function, ast.Name)
            else function.attr
            if isinstance(function, ast.Attribute)
            else ""
        )
        argument = node.args[0]
        if (
            name in ("import_module", "__import__")
            and isinstance(argument, ast.Constant)
            and isinstance(argument.value, str)
            and argument.value.split(".")[0] == package
        ):
            found = [_known_prefix(argument.value, modules)]
    return sorted({target for target in found if target is not None and target != source})


def import_sites(package_dir: Path) -> list[Import]:
    """Every import of a package module by another, sorted; a module naming
    itself is left out (importing yourself is not a cycle between modules)."""
    modules = discover_modules(package_dir)
    sites: set[Import] = set()
    for source, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, kind in _walk(tree, "runtime"):
            if not isinstance(node, (ast.Import, ast.ImportFrom, ast.Call)):
                continue
            targets = _targets(node, source, modules)
            if not targets:
                continue
            statement = " ".join(ast.unparse(node).split())
            if len(statement) > 90:
                statement = statement[:87] + "..."
            line = getattr(node, "lineno", 0)
            sites.update(Import(source, target, line, kind, statement) for target in targets)
    return sorted(sites)


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Which package modules each module of the package imports (every module
    is a key, importing nothing or not)."""
    graph: dict[str, set[str]] = {name: set() for name in discover_modules(package_dir)}
    for site in import_sites(package_dir):
        graph[site.source].add(site.target)
    return graph


# ---------------------------------------------------------------- cycles


def _successors(graph: Graph) -> dict[str, list[str]]:
    nodes = set(graph).union(*graph.values()) if graph else set()
    return {node: sorted(graph.get(node, ())) for node in sorted(nodes)}


def strongly_connected(graph: Graph) -> list[list[str]]:
    """The graph's strongly connected components, each sorted, in sorted order
    (Tarjan's algorithm, without recursion)."""
    successors = _successors(graph)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def enter(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)

    for root in successors:
        if root in index:
            continue
        enter(root)
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, position = work[-1]
            if position < len(successors[node]):
                work[-1] = (node, position + 1)
                after = successors[node][position]
                if after not in index:
                    enter(after)
                    work.append((after, 0))
                elif after in on_stack:
                    low[node] = min(low[node], index[after])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return sorted(components)


def _shortest_cycle(successors: Mapping[str, list[str]], start: str, within: set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside ``within`` (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for after in successors[node]:
                if after == start:
                    path = [start, node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    path.reverse()
                    return path if node != start else [start, start]
                if after in within and after not in came_from:
                    came_from[after] = node
                    following.append(after)
        frontier = following
    raise ValueError(f"{start} is on no cycle")


def find_cycles(graph: Graph) -> list[list[str]]:
    """The graph's cycles, each a closed path ``[a, b, ..., a]``: for every
    strongly connected component of more than one module (or a module that
    imports itself), the shortest cycles through its members until each member
    is on one, so every module caught in a cycle is named."""
    successors = _successors(graph)
    cycles: list[list[str]] = []
    for component in strongly_connected(graph):
        members = set(component)
        if len(component) == 1 and component[0] not in successors[component[0]]:
            continue
        covered: set[str] = set()
        for start in component:
            if start not in covered:
                cycle = _shortest_cycle(successors, start, members)
                covered.update(cycle)
                cycles.append(cycle)
    return cycles


def describe_cycles(package_dir: Path) -> tuple[str, list[list[str]]]:
    """A report of the package's import cycles, naming each import on them
    with its file and line, and the cycles themselves."""
    package_dir = Path(package_dir).resolve()
    modules = discover_modules(package_dir)
    short = labels(package_dir)
    sites = import_sites(package_dir)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for site in sites:
        graph[site.source].add(site.target)
    cycles = find_cycles(graph)
    package = package_dir.name
    if not cycles:
        return f"No import cycle among the {len(modules)} modules of {package}.", cycles
    lines = [
        f"{len(cycles)} import cycle{'s' if len(cycles) > 1 else ''} among the modules of {package}"
        " (an import under `if TYPE_CHECKING:` or inside a function counts too):"
    ]
    for cycle in cycles:
        lines.append("")
        lines.append("  " + " -> ".join(short[name] for name in cycle))
        for source, target in zip(cycle, cycle[1:]):
            for site in sites:
                if site.source == source and site.target == target:
                    where = modules[source].relative_to(package_dir.parent).as_posix()
                    lines.append(
                        f"    {where}:{site.line}{_KIND_NOTE[site.kind]}: {site.statement}"
                    )
    return "\n".join(lines), cycles


# ---------------------------------------------------------------- diagram

# Roles, to colour the boxes: the first pattern (fnmatch, on the short name)
# that matches wins; a module no pattern matches gets the default colour.
ROLES: tuple[tuple[str, str], ...] = (
    ("__init__", "public API"),
    ("__main__", "command line"),
    ("cli", "command line"),
    ("django/*", "integrations"),
    ("otel", "integrations"),
    ("prometheus", "integrations"),
    ("_exported", "integrations"),
    ("*pool*", "pools"),
    ("legacy", "pools"),
    ("core", "shared base"),
    ("connecting", "shared base"),
    ("health", "shared base"),
    ("upkeep", "shared base"),
    ("base", "shared base"),
    ("async_base", "shared base"),
    ("null_policy", "shared base"),
    ("slot", "shared base"),
    ("roles", "shared base"),
    ("hosts", "shared base"),
    ("async_waiting", "engine"),
    ("*connection*", "connections"),
    ("wrapper", "connections"),
    ("transaction", "connections"),
    ("engine", "engine"),
    ("decisions", "engine"),
    ("workers", "engine"),
    ("errors", "helpers"),
    ("stats", "helpers"),
    ("_*", "helpers"),
)
DEFAULT_ROLE = "other"
# role -> (fill, outline), in the legend's order.
ROLE_COLOURS: dict[str, tuple[str, str]] = {
    "public API": ("#fff3c4", "#a67c00"),
    "pools": ("#dcedc8", "#558b2f"),
    "shared base": ("#f1f8e9", "#7cb342"),
    "connections": ("#d6eaf8", "#1f6fa8"),
    "engine": ("#ffe0cc", "#c05a12"),
    "integrations": ("#ecdcf5", "#7b3fa0"),
    "command line": ("#e3e6f5", "#3949ab"),
    "helpers": ("#efefef", "#777777"),
    DEFAULT_ROLE: ("#ffffff", "#444444"),
}
CYCLE_COLOUR = "#c62828"
EDGE_COLOUR = "#5a5a5a"
_DASHES: dict[Kind, str] = {"runtime": "", "deferred": "2 3", "typing": "7 4"}
_STRENGTH: dict[Kind, int] = {"runtime": 0, "deferred": 1, "typing": 2}
_KIND_CAPTION: dict[Kind, str] = {
    "runtime": "import",
    "deferred": "inside a function",
    "typing": "TYPE_CHECKING",
}

_BOX_HEIGHT = 40.0
_ROW_GAP = 64.0
_BOX_GAP = 22.0
_WAYPOINT_GAP = 10.0
_MARGIN = 24.0
_CHAR = 7.9  # width of a character of the 13 px monospace font
_SMALL_CHAR = 6.7  # of the 11 px one
_FONT = "DejaVu Sans Mono, Menlo, Consolas, monospace"


def role_of(label: str) -> str:
    """The role a module's short name falls under, by the first matching pattern."""
    for pattern, role in ROLES:
        if fnmatch.fnmatchcase(label, pattern):
            return role
    return DEFAULT_ROLE


def _layers(
    nodes: Sequence[str], edges: Sequence[tuple[str, str, Kind]]
) -> tuple[dict[str, int], set[tuple[str, str]]]:
    """Each module's layer (the longest import path down to a module that imports
    nothing) and the edges left out to make that possible: edges are taken
    strongest first (runtime, deferred, typing), and one that would close a
    cycle is left out, to be drawn upwards."""
    below: dict[str, set[str]] = {node: set() for node in nodes}

    def reaches(start: str, goal: str) -> bool:
        seen = {start}
        todo = [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            for after in below[node]:
                if after not in seen:
                    seen.add(after)
                    todo.append(after)
        return False

    upward: set[tuple[str, str]] = set()
    for source, target, _kind in sorted(edges, key=lambda e: (_STRENGTH[e[2]], e[0], e[1])):
        if reaches(target, source):
            upward.add((source, target))
        else:
            below[source].add(target)
    layer: dict[str, int] = {}

    def depth(node: str) -> int:
        if node not in layer:
            layer[node] = 1 + max((depth(after) for after in below[node]), default=-1)
        return layer[node]

    for node in nodes:
        depth(node)
    return layer, upward


def _crossings(upper: Sequence[str], lower: Sequence[str], links: set[tuple[str, str]]) -> int:
    where_up = {node: i for i, node in enumerate(upper)}
    where_low = {node: i for i, node in enumerate(lower)}
    pairs = sorted(
        (where_up[a], where_low[b]) for a, b in links if a in where_up and b in where_low
    )
    return sum(
        1
        for i, (a1, b1) in enumerate(pairs)
        for a2, b2 in pairs[i + 1 :]
        if (a1 - a2) * (b1 - b2) < 0
    )


def _isotonic(desired: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest (least squares) to ``desired``."""
    blocks: list[tuple[float, int]] = []  # (mean, size)
    for value in desired:
        blocks.append((value, 1))
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, n2), (m1, n1) = blocks.pop(), blocks.pop()
            blocks.append(((m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2))
    return [mean for mean, size in blocks for _ in range(size)]


def _number(value: float) -> str:
    text = f"{value:.1f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


@dataclass
class _Node:
    """A box (a module) or a waypoint of a long arrow, in one row of the diagram."""

    name: str
    width: float
    row: int
    x: float = 0.0
    waypoint: bool = False


@dataclass
class _Layout:
    """Where everything goes: rows of nodes (top first), and each import as the
    chain of nodes its arrow runs through, from the upper end to the lower."""

    nodes: dict[str, _Node]
    rows: list[list[str]]
    ups: dict[str, list[str]]
    downs: dict[str, list[str]]
    chains: dict[tuple[str, str], list[str]]
    upward: set[tuple[str, str]]


def _layout(kinds: Mapping[tuple[str, str], Kind], widths: Mapping[str, float]) -> _Layout:
    """Rows by layer, a waypoint in every row a long arrow crosses, then order
    within rows and horizontal positions."""
    layer, upward = _layers(sorted(widths), sorted((s, t, k) for (s, t), k in kinds.items()))
    top = max(layer.values(), default=0)
    nodes = {name: _Node(name, width, top - layer[name]) for name, width in widths.items()}
    links: set[tuple[str, str]] = set()
    chains: dict[tuple[str, str], list[str]] = {}
    for source, target in sorted(kinds):
        upper, lower = (target, source) if (source, target) in upward else (source, target)
        chain = [upper]
        for row in range(nodes[upper].row + 1, nodes[lower].row):
            waypoint = f"{source}>{target}@{row}"
            nodes[waypoint] = _Node(waypoint, 0.0, row, waypoint=True)
            chain.append(waypoint)
        chain.append(lower)
        links.update(zip(chain, chain[1:]))
        chains[(source, target)] = chain
    ups: dict[str, list[str]] = {name: [] for name in nodes}
    downs: dict[str, list[str]] = {name: [] for name in nodes}
    for upper, lower in sorted(links):
        downs[upper].append(lower)
        ups[lower].append(upper)
    rows: list[list[str]] = [[] for _ in range(top + 1)]
    for name in sorted(nodes, key=lambda name: (nodes[name].waypoint, name)):
        rows[nodes[name].row].append(name)
    rows = _order(rows, ups, downs, links)
    _place(rows, nodes, ups, downs)
    return _Layout(nodes, rows, ups, downs, chains, upward)


def _order(
    rows: list[list[str]],
    ups: Mapping[str, list[str]],
    downs: Mapping[str, list[str]],
    links: set[tuple[str, str]],
) -> list[list[str]]:
    """Rows reordered to cross fewer arrows: each node moved to the mean position
    of its neighbours in the row above (or below, every other sweep); the order
    with the fewest crossings seen wins."""

    def crossings(rows: list[list[str]]) -> int:
        return sum(_crossings(upper, lower, links) for upper, lower in zip(rows, rows[1:]))

    rows = [list(row) for row in rows]
    best, fewest = [list(row) for row in rows], crossings(rows)
    for sweep in range(16):
        downward = sweep % 2 == 0
        for r in range(1, len(rows)) if downward else range(len(rows) - 2, -1, -1):
            reference = {name: i for i, name in enumerate(rows[r - 1 if downward else r + 1])}
            current = {name: i for i, name in enumerate(rows[r])}
            neighbours = ups if downward else downs
            scale = len(reference) / max(len(current), 1)

            def barycentre(
                name: str,
                reference: dict[str, int] = reference,
                current: dict[str, int] = current,
                neighbours: Mapping[str, list[str]] = neighbours,
                scale: float = scale,
            ) -> tuple[float, int]:
                places = [reference[other] for other in neighbours[name]]
                if not places:
                    return (current[name] * scale, current[name])
                return (sum(places) / len(places), current[name])

            rows[r].sort(key=barycentre)
        count = crossings(rows)
        if count < fewest:
            best, fewest = [list(row) for row in rows], count
    return best


def _place(
    rows: list[list[str]],
    nodes: Mapping[str, _Node],
    ups: Mapping[str, list[str]],
    downs: Mapping[str, list[str]],
) -> None:
    """Horizontal positions: rows packed and centred, then, row after row and
    back, each node pulled to the mean position of its neighbours, order and
    spacing kept (a least-squares fit)."""

    def spacing(left: str, right: str) -> float:
        a, b = nodes[left], nodes[right]
        gap = _WAYPOINT_GAP if a.waypoint or b.waypoint else _BOX_GAP
        return (a.width + b.width) / 2 + gap

    for row in rows:
        offsets = [0.0]
        for left, right in zip(row, row[1:]):
            offsets.append(offsets[-1] + spacing(left, right))
        for name, offset in zip(row, offsets):
            nodes[name].x = offset - offsets[-1] / 2
    for sweep in range(24):
        for r in range(len(rows)) if sweep % 2 == 0 else range(len(rows) - 1, -1, -1):
            row = rows[r]
            desired = []
            for name in row:
                others = ups[name] + downs[name]
                if others:
                    desired.append(sum(nodes[other].x for other in others) / len(others))
                else:
                    desired.append(nodes[name].x)
            offsets = [0.0]
            for left, right in zip(row, row[1:]):
                offsets.append(offsets[-1] + spacing(left, right))
            fitted = _isotonic([want - offset for want, offset in zip(desired, offsets)])
            for name, base, offset in zip(row, fitted, offsets):
                nodes[name].x = base + offset


def _ports(layout: _Layout, name: str, others: list[str]) -> dict[str, float]:
    """Where the arrows to ``others`` leave or reach a box: spread along its
    edge in the order of where they go, so they do not start from one point."""
    node = layout.nodes[name]
    if node.waypoint:
        return {other: node.x for other in others}
    ordered = sorted(others, key=lambda other: (layout.nodes[other].x, other))
    span = node.width * 0.7
    return {
        other: node.x - span / 2 + span * (i + 0.5) / len(ordered)
        for i, other in enumerate(ordered)
    }


def _legend(roles: Sequence[str], x: float, y: float) -> tuple[list[str], float]:
    """The legend's SVG elements, in one line from (x, y), and its width."""
    # (shape, colour, outline or dashes, caption)
    entries: list[tuple[str, str, str, str]] = [
        ("box", *ROLE_COLOURS[role], role) for role in roles
    ]
    entries += [("arrow", EDGE_COLOUR, _DASHES[kind], _KIND_CAPTION[kind]) for kind in KINDS]
    entries.append(("arrow", CYCLE_COLOUR, "", "on an import cycle"))
    n = _number
    out: list[str] = []
    start = x
    for shape, colour, style, caption in entries:
        if shape == "box":
            out.append(
                f'<rect x="{n(x)}" y="{n(y)}" width="18" height="14" rx="3" fill="{colour}"'
                f' stroke="{style}"/>'
            )
            x += 24
        else:
            dashes = f' stroke-dasharray="{style}"' if style else ""
            marker = "arrow-cycle" if colour == CYCLE_COLOUR else "arrow"
            out.append(
                f'<path d="M{n(x)},{n(y + 7)} L{n(x + 26)},{n(y + 7)}" stroke="{colour}"'
                f' stroke-width="1.4" fill="none"{dashes} marker-end="url(#{marker})"/>'
            )
            x += 32
        out.append(
            f'<text x="{n(x)}" y="{n(y + 11)}" font-size="11" fill="#333333">'
            f"{escape(caption)}</text>"
        )
        x += len(caption) * _SMALL_CHAR + 16
    return out, x - 16 - start


def render_svg(package_dir: Path) -> str:
    """An SVG diagram of the package's modules and imports, the same bytes for
    the same source: every module a box (short name, line count, colour by
    role) in layers, each above what it imports; an arrow per import, dashed
    under TYPE_CHECKING, dotted inside a function, red on a cycle."""
    package_dir = Path(package_dir).resolve()
    package = package_dir.name
    modules = discover_modules(package_dir)
    short = labels(package_dir)
    line_counts = {
        name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules.items()
    }
    kinds: dict[tuple[str, str], Kind] = {}
    for site in import_sites(package_dir):
        edge = (site.source, site.target)
        if edge not in kinds or _STRENGTH[site.kind] < _STRENGTH[kinds[edge]]:
            kinds[edge] = site.kind
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for source, target in kinds:
        graph[source].add(target)
    component_of = {
        name: i
        for i, component in enumerate(strongly_connected(graph))
        if len(component) > 1
        for name in component
    }
    widths = {name: max(len(short[name]), 9) * _CHAR + 20 for name in modules}
    layout = _layout(kinds, widths)
    nodes = layout.nodes

    roles = sorted({role_of(label) for label in short.values()}, key=list(ROLE_COLOURS).index)
    legend_top = 60.0
    legend, legend_width = _legend(roles, _MARGIN, legend_top)
    left = min((node.x - node.width / 2 for node in nodes.values()), default=0.0)
    right = max((node.x + node.width / 2 for node in nodes.values()), default=0.0)
    width = max(right - left, legend_width, 560.0) + 2 * _MARGIN
    shift = _MARGIN - left + (width - 2 * _MARGIN - (right - left)) / 2
    rows_top = legend_top + 48
    rows = len(layout.rows)
    height = rows_top + rows * _BOX_HEIGHT + (rows - 1) * _ROW_GAP + _MARGIN

    def row_y(row: int) -> float:
        return rows_top + row * (_BOX_HEIGHT + _ROW_GAP)

    n = _number
    title = f"{package}: imports between its modules"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{n(width)}" height="{n(height)}"'
        f' viewBox="0 0 {n(width)} {n(height)}" font-family={quoteattr(_FONT)}>',
        f"<title>{escape(title)}</title>",
        "<defs>",
    ]
    for marker, colour in (("arrow", EDGE_COLOUR), ("arrow-cycle", CYCLE_COLOUR)):
        out.append(
            f'<marker id="{marker}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7"'
            f' markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{colour}"/>'
            "</marker>"
        )
    out += [
        "</defs>",
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        f'<text x="{n(_MARGIN)}" y="30" font-size="17" font-weight="bold" fill="#222222">'
        f"{escape(title)}</text>",
        f'<text x="{n(_MARGIN)}" y="48" font-size="11" fill="#555555">Each module sits'
        " above the modules it imports. Redraw: python tools/import_graph.py --svg"
        " docs/architecture.svg</text>",
        *legend,
    ]

    bottom_ports = {name: _ports(layout, name, layout.downs[name]) for name in nodes}
    top_ports = {name: _ports(layout, name, layout.ups[name]) for name in nodes}
    out.append('<g fill="none">')
    for (source, target), chain in sorted(layout.chains.items()):
        kind = kinds[(source, target)]
        points: list[tuple[float, float]] = []
        for i, name in enumerate(chain):
            node = nodes[name]
            y = row_y(node.row)
            if node.waypoint:
                points += [(node.x + shift, y), (node.x + shift, y + _BOX_HEIGHT)]
                continue
            if i > 0:
                points.append((top_ports[name][chain[i - 1]] + shift, y))
            if i < len(chain) - 1:
                points.append((bottom_ports[name][chain[i + 1]] + shift, y + _BOX_HEIGHT))
        if (source, target) in layout.upward:
            points.reverse()
        path = [f"M{n(points[0][0])},{n(points[0][1])}"]
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            if x0 == x1:
                path.append(f"L{n(x1)},{n(y1)}")
            else:
                middle = (y0 + y1) / 2
                path.append(f"C{n(x0)},{n(middle)} {n(x1)},{n(middle)} {n(x1)},{n(y1)}")
        on_cycle = source in component_of and component_of[source] == component_of.get(target)
        colour, marker = (CYCLE_COLOUR, "arrow-cycle") if on_cycle else (EDGE_COLOUR, "arrow")
        dashes = f' stroke-dasharray="{_DASHES[kind]}"' if _DASHES[kind] else ""
        out.append(
            f'<path class="import {kind}" data-from="{source}" data-to="{target}"'
            f' d="{" ".join(path)}" stroke="{colour}" stroke-width="{1.8 if on_cycle else 1.1}"'
            f'{dashes} marker-end="url(#{marker})"><title>{escape(short[source])} imports'
            f" {escape(short[target])}{escape(_KIND_NOTE[kind])}</title></path>"
        )
    out.append("</g>")

    for name in sorted(modules):
        node = nodes[name]
        fill, outline = ROLE_COLOURS[role_of(short[name])]
        stroke = (
            f'stroke="{CYCLE_COLOUR}" stroke-width="2.4"'
            if name in component_of
            else f'stroke="{outline}" stroke-width="1.2"'
        )
        x = node.x + shift
        y = row_y(node.row)
        imported = ", ".join(short[other] for other in sorted(graph[name]))
        out.append(
            f'<g class="module" data-module="{name}">'
            f"<title>{escape(name)}, {line_counts[name]} lines, imports"
            f" {escape(imported or 'nothing from the package')}</title>"
            f'<rect x="{n(x - node.width / 2)}" y="{n(y)}" width="{n(node.width)}"'
            f' height="{n(_BOX_HEIGHT)}" rx="5" fill="{fill}" {stroke}/>'
            f'<text x="{n(x)}" y="{n(y + 17)}" text-anchor="middle" font-size="13"'
            f' font-weight="bold" fill="#1a1a1a">{escape(short[name])}</text>'
            f'<text x="{n(x)}" y="{n(y + 32)}" text-anchor="middle" font-size="11"'
            f' fill="#555555">{line_counts[name]} lines</text></g>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_svg(package_dir: Path, path: Path) -> None:
    """Write :func:`render_svg` to ``path``, in UTF-8 with ``\\n`` line ends."""
    Path(path).write_bytes(render_svg(package_dir).encode("utf-8"))


def main(argv: Sequence[str] | None = None) -> int:
    """Print the package's import cycles (and write the diagram if asked);
    1 if there is a cycle, 0 otherwise."""
    parser = argparse.ArgumentParser(
        description="Check a package for import cycles and draw its module graph."
    )
    parser.add_argument(
        "--package",
        type=Path,
        default=PACKAGE_DIR,
        help="the package directory (default: %(default)s)",
    )
    parser.add_argument(
        "--svg", type=Path, metavar="PATH", help="also write a diagram of the modules to PATH"
    )
    args = parser.parse_args(argv)
    if args.svg is not None:
        write_svg(args.package, args.svg)
        print(f"wrote {args.svg}")
    report, cycles = describe_cycles(args.package)
    print(report)
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
