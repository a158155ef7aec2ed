"""How the package's modules import each other: no import cycle (read from the
source by ``tools/import_graph.py``), every module importable first in a fresh
interpreter, and the tool itself (resolution of imports, cycles, the diagram)."""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tools.import_graph import (
    DEFAULT_ROLE,
    PACKAGE_DIR,
    describe_cycles,
    discover_modules,
    find_cycles,
    import_graph,
    import_sites,
    render_svg,
    role_of,
)

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "import_graph.py"
SVG = "{http://www.w3.org/2000/svg}"


def write_package(base: Path, files: dict[str, str]) -> Path:
    """A package ``pkg`` under ``base`` made of ``files`` (path in the package -> source)."""
    package = base / "pkg"
    for relative, source in files.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return package


def run_tool(*arguments: str, hash_seed: str = "0") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
    )


# ---------------------------------------------------------------- the package


def test_the_package_has_no_import_cycle() -> None:
    # Imports under `if TYPE_CHECKING:` and inside functions count: a cycle
    # through them still ties the modules together (issue 17).
    report, cycles = describe_cycles(PACKAGE_DIR)
    assert not cycles, report


def test_the_tool_exits_0_on_the_package_exactly_when_it_finds_no_cycle() -> None:
    result = run_tool()
    _report, cycles = describe_cycles(PACKAGE_DIR)
    assert result.returncode == (1 if cycles else 0), result.stdout + result.stderr
    assert result.stderr == ""


# Run once per module, in a fresh interpreter: for each order given, imports the
# modules in that order, then forgets every module of the package, so that the
# next order starts with none of them loaded (third-party modules stay loaded).
# Prints one JSON line: per order, the imports that failed and the package's file.
IMPORTER = r"""
import importlib, json, sys, traceback

def missing_third_party(error):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ModuleNotFoundError) and error.name:
            top = error.name.split(".")[0]
            if top != "psycopg2_pool":
                return top
        error = error.__cause__ or error.__context__
    return None

outcomes = []
for order in json.loads(sys.argv[1]):
    for name in [name for name in sys.modules if name.split(".")[0] == "psycopg2_pool"]:
        del sys.modules[name]
    failures = []
    for name in order:
        try:
            importlib.import_module(name)
        except BaseException as error:
            failures.append({"module": name, "missing": missing_third_party(error),
                             "error": traceback.format_exc()})
    package = sys.modules.get("psycopg2_pool")
    outcomes.append({"failures": failures, "package": getattr(package, "__file__", None)})
print(json.dumps(outcomes))
"""


@dataclass(frozen=True)
class Failure:
    """A module that failed to import, in one order."""

    order: tuple[str, ...]
    module: str
    missing: str | None  # the third-party module not installed, if that was why
    error: str

    def why(self) -> str:
        return self.missing or self.error.strip().splitlines()[-1]


def import_in_orders(orders: list[list[str]]) -> tuple[list[Failure], set[str | None]]:
    """The imports that fail when the modules are imported in each order, in one
    fresh interpreter, and the files the package was imported from."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", IMPORTER, json.dumps(orders)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        error = f"the interpreter exited {result.returncode}:\n{result.stdout}{result.stderr}"
        return [Failure(tuple(orders[0]), orders[0][0], None, error)], {None}
    failures = []
    packages = set()
    for order, outcome in zip(orders, json.loads(lines[-1])):
        packages.add(outcome["package"])
        failures += [
            Failure(tuple(order), failure["module"], failure["missing"], failure["error"])
            for failure in outcome["failures"]
        ]
    return failures, packages


def dev_extra() -> list[str]:
    """The distribution names in setup.cfg's ``dev`` extra, normalised."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    names = []
    for line in config["options.extras_require"]["dev"].splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)", line)
        if match and not line.lstrip().startswith("#"):
            names.append(match.group(1).lower().replace("-", "_"))
    return names


def explain(failures: list[Failure], orders: int) -> str:
    """One paragraph for a module that fails for one reason, in several orders."""
    first = failures[0]
    rest = "in sorted order" if list(first.order[1:]) == sorted(first.order[1:]) else "reversed"
    head = (
        f"{first.module} fails to import in {len(failures)} of {orders} orders,"
        f" first with {first.order[0]} imported first and the others {rest}"
    )
    if first.missing is None:
        return f"{head}:\n{first.error}"
    in_dev = any(name.startswith(first.missing.lower()) for name in dev_extra())
    return f"{head}: the third-party module {first.missing!r} is not installed. " + (
        "It comes with the dev extra, which CI installs: pip install -e '.[dev]'."
        if in_dev
        else "It is not in setup.cfg's dev extra either: add it there, so CI has it."
    )


def test_every_module_imports_first_in_a_fresh_interpreter_in_two_orders() -> None:
    # n! orders are out of reach. Each module is imported first (so each one is
    # once the way into any cycle), followed by all the others, in sorted order
    # in a fresh interpreter, then again in reverse order once the package's
    # modules are forgotten: one interpreter per module. Optional dependencies
    # are not skipped: the dev extra installs them all.
    modules = sorted(discover_modules(PACKAGE_DIR))
    batches = []
    for first in modules:
        rest = [name for name in modules if name != first]
        batches.append([[first, *rest], [first, *reversed(rest)]])
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(import_in_orders, batches))
    by_cause: dict[tuple[str, str], list[Failure]] = {}
    for failures, _packages in results:
        for failure in failures:
            by_cause.setdefault((failure.module, failure.why()), []).append(failure)
    orders = 2 * len(modules)
    assert not by_cause, "\n\n".join(explain(group, orders) for group in by_cause.values())
    # The copy imported is this checkout's, not another installed one.
    packages = set().union(*(packages for _failures, packages in results))
    assert packages == {str(PACKAGE_DIR / "__init__.py")}


# ---------------------------------------------------------------- finding imports


def test_imports_are_resolved_in_every_spelling_and_classified_by_when_they_run(
    tmp_path: Path,
) -> None:
    package = write_package(
        tmp_path,
        {
            "__init__.py": "from .a import A\nVERSION = '1'\n",
            "a.py": (
                "from __future__ import annotations\n"  # 1
                "import typing\n"
                "from typing import TYPE_CHECKING\n"
                "from . import b\n"  # 4
                "from .c import C\n"  # 5
                "import pkg.d\n"  # 6
                "import pkg.sub.e as e\n"  # 7
                "if TYPE_CHECKING:\n"
                "    from .f import F\n"  # 9
                "else:\n"
                "    from . import g\n"  # 11
                "if not typing.TYPE_CHECKING:\n"
                "    import pkg.h\n"  # 13
                "else:\n"
                "    from pkg import j\n"  # 15
                "def later():\n"
                "    from .i import I\n"  # 17
                "    import importlib\n"
                "    return importlib.import_module('pkg.k')\n"  # 19
                "import os, json\n"
                "from pkg import VERSION\n"  # 21
                "A = 1\n"
            ),
            "sub/__init__.py": "from .. import VERSION\nfrom . import e\n",
            "sub/e.py": "from ..b import x\nfrom .. import c\nfrom . import e\n",
            **{f"{name}.py": "x = 1\n" for name in "bcdfghijk"},
            "notes/loose.py": "import pkg.a\n",  # no __init__.py: not part of the package
        },
    )
    modules = discover_modules(package)
    assert "pkg.notes.loose" not in modules
    assert {"pkg", "pkg.a", "pkg.sub", "pkg.sub.e"} <= set(modules)
    sites = {(s.source, s.target, s.line, s.kind) for s in import_sites(package)}
    assert {site for site in sites if site[0] == "pkg.a"} == {
        ("pkg.a", "pkg.b", 4, "runtime"),
        ("pkg.a", "pkg.c", 5, "runtime"),
        ("pkg.a", "pkg.d", 6, "runtime"),
        ("pkg.a", "pkg.sub.e", 7, "runtime"),
        ("pkg.a", "pkg.f", 9, "typing"),
        ("pkg.a", "pkg.g", 11, "runtime"),
        ("pkg.a", "pkg.h", 13, "runtime"),
        ("pkg.a", "pkg.j", 15, "typing"),
        ("pkg.a", "pkg.i", 17, "deferred"),
        ("pkg.a", "pkg.k", 19, "deferred"),
        ("pkg.a", "pkg", 21, "runtime"),  # a name from __init__: an import of the package
    }
    graph = import_graph(package)
    assert graph["pkg"] == {"pkg.a"}
    assert graph["pkg.sub"] == {"pkg", "pkg.sub.e"}
    assert graph["pkg.sub.e"] == {"pkg.b", "pkg.c"}  # its import of itself is no edge
    assert graph["pkg.b"] == set()
    assert set(graph) == set(modules)


def test_a_cycle_through_type_checking_fails_the_tool_with_file_and_line(tmp_path: Path) -> None:
    package = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "x.py": "from .y import Y\nX = 1\n",
            "y.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .x import X\nY = 1\n"
            ),
        },
    )
    result = run_tool("--package", str(package))
    assert result.returncode == 1
    assert "1 import cycle among the modules of pkg" in result.stdout
    assert "x -> y -> x" in result.stdout
    assert "pkg/x.py:1: from .y import Y" in result.stdout
    assert "pkg/y.py:3 (under TYPE_CHECKING): from .x import X" in result.stdout

    (package / "y.py").write_text("Y = 1\n", encoding="utf-8")
    result = run_tool("--package", str(package))
    assert result.returncode == 0
    assert "No import cycle among the 3 modules of pkg." in result.stdout


def test_find_cycles_names_every_module_of_each_knot_as_closed_paths() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"a"}}) == [["a", "a"]]
    assert find_cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    assert find_cycles({"d": {"a"}, "a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    # Two loops through a: both are named, so neither b nor c goes unmentioned.
    graph = {"a": {"b", "c"}, "b": {"a"}, "c": {"a"}, "e": {"f"}, "f": {"e"}}
    cycles = find_cycles(graph)
    assert cycles == [["a", "b", "a"], ["c", "a", "c"], ["e", "f", "e"]]
    for cycle in cycles:
        assert all(after in graph[before] for before, after in zip(cycle, cycle[1:]))


# ---------------------------------------------------------------- the diagram


def test_the_svg_is_the_same_bytes_whatever_the_hash_seed(tmp_path: Path) -> None:
    first, second = tmp_path / "first.svg", tmp_path / "second.svg"
    run_tool("--svg", str(first), hash_seed="1")
    run_tool("--svg", str(second), hash_seed="2")
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() == render_svg(PACKAGE_DIR).encode("utf-8")


def test_the_svg_has_a_box_per_module_and_an_arrow_per_import() -> None:
    root = ET.fromstring(render_svg(PACKAGE_DIR))
    modules = discover_modules(PACKAGE_DIR)
    boxes = {g.get("data-module", ""): g for g in root.iter(f"{SVG}g") if g.get("data-module")}
    assert set(boxes) == set(modules)
    for name, box in boxes.items():
        texts = [t.text for t in box.iter(f"{SVG}text")]
        lines = len(modules[name].read_text(encoding="utf-8").splitlines())
        assert texts[1] == f"{lines} lines"
    arrows = {
        (path.get("data-from"), path.get("data-to"))
        for path in root.iter(f"{SVG}path")
        if path.get("data-from")
    }
    graph = import_graph(PACKAGE_DIR)
    assert arrows == {(source, target) for source, targets in graph.items() for target in targets}


def test_the_svg_draws_unknown_modules_and_subpackages_in_the_default_colour(
    tmp_path: Path,
) -> None:
    package = write_package(
        tmp_path,
        {
            "__init__.py": "from .brand_new import thing\n",
            "brand_new.py": "from .deep.inner import x\nthing = 1\n",
            "deep/__init__.py": "",
            "deep/inner.py": "x = 1\n",
        },
    )
    assert role_of("brand_new") == DEFAULT_ROLE
    root = ET.fromstring(render_svg(package))
    labels = {
        g.get("data-module"): next(g.iter(f"{SVG}text")).text
        for g in root.iter(f"{SVG}g")
        if g.get("data-module")
    }
    assert labels == {
        "pkg": "__init__",
        "pkg.brand_new": "brand_new",
        "pkg.deep": "deep/__init__",
        "pkg.deep.inner": "deep/inner",
    }


def test_the_architecture_page_draws_the_package_as_it_is() -> None:
    """docs/architecture.svg shows the modules and imports the code has now: a
    module added, renamed or given a new import fails here until the command
    in its title is run. (Line counts may lag behind: they change with every
    edit.)"""
    committed = ET.parse(PACKAGE_DIR.parent / "docs" / "architecture.svg").getroot()
    boxes = {g.get("data-module") for g in committed.iter(f"{SVG}g") if g.get("data-module")}
    arrows = {
        (path.get("data-from"), path.get("data-to"))
        for path in committed.iter(f"{SVG}path")
        if path.get("data-from")
    }
    graph = import_graph(PACKAGE_DIR)
    redraw = "redraw it: python tools/import_graph.py --svg docs/architecture.svg"
    assert boxes == set(discover_modules(PACKAGE_DIR)), redraw
    assert arrows == {(a, b) for a, targets in graph.items() for b in targets}, redraw
