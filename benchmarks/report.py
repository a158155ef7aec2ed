"""Turn one run's results.json into results.md (tables and the targets) and
results.png (a chart of the main figures), and its s7.json into s7.md and
s7.svg (s7_report.py). ``python benchmarks/report.py`` redraws them."""

from __future__ import annotations

import json
import operator
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

Document = dict[str, Any]
Row = dict[str, Any]

MISSING = "-"


# -- reading the document ----------------------------------------------------------


def result(doc: Document, scenario: str, pool: str) -> Row | None:
    """One pool's figures in one scenario; None if it did not run or failed."""
    found = doc["scenarios"].get(scenario, {}).get("results", {}).get(pool)
    return None if found is None or "error" in found else found


def figure(doc: Document, scenario: str, pool: str, key: str) -> Any:
    found = result(doc, scenario, pool)
    return None if found is None else found.get(key)


def pools_in_order(doc: Document) -> list[str]:
    """Every pool that ran somewhere: ours first, then peers, then baselines."""
    labels: dict[str, str] = doc["meta"]["labels"]
    ran = {pool for s in doc["scenarios"].values() for pool in s["results"]}
    rank = {"ours": 0, "peer": 1, "baseline": 2}
    families = doc["meta"]["families"]
    order = list(labels)
    return sorted(ran, key=lambda pool: (rank[families[pool]], order.index(pool)))


NO_POOL = {"psycopg2": "no-pool", "psycopg": "no-pool-psycopg3"}  # baseline of each driver


def s2_ratio(doc: Document, pool: str) -> float | None:
    """S2 time over the no-pool baseline of the same driver."""
    mine = figure(doc, "S2", pool, "us_per_op")
    base = figure(doc, "S2", NO_POOL[doc["meta"]["drivers"][pool]], "us_per_op")
    return mine / base if mine and base else None


# -- formatting --------------------------------------------------------------------


def fmt(value: Any, digits: int | None = None) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        if digits is None:
            digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def cell(doc: Document, scenario: str, pool: str, key: str, digits: int | None = None) -> str:
    found = doc["scenarios"].get(scenario, {}).get("results", {}).get(pool)
    if found is None:
        return MISSING
    if "error" in found:
        return "failed"
    return fmt(found.get(key), digits)


def stalls_cell(doc: Document, scenario: str, pool: str) -> str:
    """How often, and how long at most, the machine stopped in the measured window."""
    found = result(doc, scenario, pool)
    if found is None or "machine_stalls" not in found:
        return MISSING
    return f"{found['machine_stalls']} ({fmt(found['machine_stall_max_ms'], 1)})"


def spread_cell(doc: Document, scenario: str, pool: str) -> str:
    """How much later than the typical client the unluckiest one was served (ms).

    In a closed loop p50 is fixed by throughput (Little's law: about
    (threads - connections) / ops per second), while this lateness comes from
    the interpreter and the machine; fairness is (p50 + this) / p50.
    """
    found = result(doc, scenario, pool)
    if found is None or not found.get("wait_max_us"):
        return MISSING
    return fmt((found["wait_max_us"] - found["wait_p50_us"]) / 1000, 2)


def errors_cell(doc: Document, scenario: str, pool: str) -> str:
    found = result(doc, scenario, pool)
    if found is None:
        return cell(doc, scenario, pool, "errors")
    text = fmt(found.get("errors"))
    if found.get("retries") is not None:
        text += f" (+{found['retries']:,} retried)"
    return text


def oversized(doc: Document, scenario: str, pool: str, text: str) -> str:
    """``text``, flagged with the connection count if the pool went over the scenario's size."""
    found = result(doc, scenario, pool)
    if found is None:
        return text
    most = found.get("server_connections_max", 0)
    size = doc["scenarios"][scenario]["params"]["size"]
    return f"{text} ({most} conns)" if most > size else text


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# -- the tables ----------------------------------------------------------------------


def main_table(doc: Document) -> str:
    labels = doc["meta"]["labels"]
    header = [
        "pool",
        "S1 µs/op",
        "S2 µs/op",
        "S2 x no pool",
        "S3 ops/s",
        "S3 errors",
        "S3 starved",
        "S3 fairness",
        "S4 % ideal",
        "S4 fairness",
        "S5 conns opened",
        "S6 new conns",
        "S6 ms",
    ]
    rows = []
    for pool in pools_in_order(doc):
        rows.append(
            [
                labels[pool],
                cell(doc, "S1", pool, "us_per_op"),
                cell(doc, "S2", pool, "us_per_op"),
                fmt(s2_ratio(doc, pool)),
                oversized(doc, "S3", pool, cell(doc, "S3", pool, "ops_per_s", 0)),
                errors_cell(doc, "S3", pool),
                cell(doc, "S3", pool, "starved"),
                cell(doc, "S3", pool, "fairness"),
                oversized(doc, "S4", pool, cell(doc, "S4", pool, "pct_of_ideal", 0)),
                cell(doc, "S4", pool, "fairness"),
                cell(doc, "S5", pool, "connections_opened"),
                cell(doc, "S6", pool, "connections_opened"),
                cell(doc, "S6", pool, "serve_ms", 0),
            ]
        )
    return table(header, rows)


Column = tuple[str, Callable[[Document, str, str], str]]


def _key(key: str, digits: int | None = None) -> Callable[[Document, str, str], str]:
    return lambda doc, scenario, pool: cell(doc, scenario, pool, key, digits)


DETAIL_COLUMNS: dict[str, list[Column]] = {
    "S1": [("µs/op (median)", _key("us_per_op")), ("ops per repeat", _key("ops_per_repeat"))],
    "S2": [
        ("µs/op (median)", _key("us_per_op")),
        ("x no pool (same driver)", lambda doc, s, pool: fmt(s2_ratio(doc, pool))),
    ],
    "S3": [
        ("ops/s", _key("ops_per_s", 0)),
        ("wait p50 µs", _key("wait_p50_us")),
        ("wait p99 µs", _key("wait_p99_us")),
        ("wait max µs", _key("wait_max_us")),
        ("max - p50 ms", spread_cell),
        ("fairness", _key("fairness")),
        ("machine stalls (longest ms)", stalls_cell),
        ("fairness outside stalls", _key("fairness_outside_stalls")),
        ("errors", errors_cell),
        ("starved", _key("starved")),
        ("server conns (max)", _key("server_connections_max")),
    ],
    "S5": [
        ("ops/s, 16 threads", _key("busy_ops_per_s", 0)),
        ("ops/s, 1 thread", _key("quiet_ops_per_s", 0)),
        ("conns opened", _key("connections_opened")),
        ("errors", _key("errors")),
        ("server conns (max)", _key("server_connections_max")),
    ],
    "S6": [
        ("time to serve all, ms", _key("serve_ms", 0)),
        ("new conns opened", _key("connections_opened")),
        ("new conns needed", _key("connections_needed")),
        ("errors", _key("errors")),
        ("server conns (max)", _key("server_connections_max")),
    ],
}
DETAIL_COLUMNS["S4"] = [
    ("ops/s", _key("ops_per_s", 0)),
    ("% of ideal", _key("pct_of_ideal", 0)),
    *DETAIL_COLUMNS["S3"][1:],
]


def detail_tables(doc: Document) -> str:
    labels = doc["meta"]["labels"]
    parts = []
    for scenario, data in doc["scenarios"].items():
        columns = DETAIL_COLUMNS[scenario]
        rows = [
            [labels[pool]] + [render(doc, scenario, pool) for _, render in columns]
            for pool in pools_in_order(doc)
            if pool in data["results"]
        ]
        params = ", ".join(f"{k}={v}" for k, v in data["params"].items())
        if "ceiling_pct" in data:
            params += (
                f"; one connection running the query back to back reaches"
                f" {data['ceiling_pct']:.1f}% of ideal: the ceiling for any pool"
            )
        parts.append(
            f"### {scenario}: {data['title']}\n\n_{params}_\n\n"
            + table(["pool"] + [c for c, _ in columns], rows)
        )
        failures = [
            f"- {labels[pool]}: {found['error']}"
            for pool, found in data["results"].items()
            if "error" in found
        ] + [
            f"- {labels[pool]}: {found['failed_rounds']} round(s) failed; see results.json"
            for pool, found in data["results"].items()
            if found.get("failed_rounds")
        ]
        if failures:
            parts.append("Failed:\n" + "\n".join(failures))
    return "\n\n".join(parts)


# -- the targets ---------------------------------------------------------------------
#
# Issue 19's targets, every one judged within one run. A failed line shows,
# beside the figure, what the floor baselines (or the ceiling) scored on the
# same line in the same run: how far any pool could have gone here.

COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "<=": operator.le,
    ">=": operator.ge,
}
NAMES = {
    "us_per_op": "time per op",
    "ops_per_s": "throughput",
    "errors": "errors",
    "starved": "threads starved",
    "fairness": "fairness",
    "pct_of_ideal": "% of ideal",
    "connections_opened": "connections opened",
    "wait_max_us": "longest wait",
    "wait_p99_us": "p99 wait",
    "wait_p50_us": "p50 wait",
}

#: The baselines that bound what any pool can score, shown beside a failed target.
FLOORS = {
    "S1": ["bare-fifo", "bare-fifo-handle"],
    "S2": ["bare-fifo", "bare-fifo-handle"],
    "S3": ["bare-fifo", "bare-fifo-handle"],
    "S4": ["bare-fifo", "bare-fifo-handle", "no-pool-8"],
}
#: The floor of a pool that hands out raw connections (our legacy pool).
RAW_FLOORS = ["bare-fifo"]

#: S2: the handle baseline whose share of a round trip ours is held to.
S2_FLOOR = "bare-fifo-handle"


@dataclass
class Check:
    text: str
    measured: str
    passed: bool | None  # None: not measured in this run

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[self.passed]
        return f"{verdict}  {self.text}: {self.measured}"


Shown = Callable[[str], "str | None"]  # a pool's figure as text, or None if not measured


def beside_floors(doc: Document, check: Check, floors: list[str], show: Shown) -> Check:
    """Add what the ``floors`` scored on this line in this run to a failed ``check``."""
    if check.passed is not False:
        return check
    labels = doc["meta"]["labels"]
    seen = [f"{labels[pool]} {text}" for pool in floors if (text := show(pool)) is not None]
    if seen:
        check.measured += f" [in this run: {'; '.join(seen)}]"
    return check


def shown(doc: Document, scenario: str, key: str) -> Shown:
    """A pool's own figure, as the floors' view of a :func:`bound` line."""

    def text(pool: str) -> str | None:
        value = figure(doc, scenario, pool, key)
        return None if value is None else fmt(value)

    return text


def shown_ratio(doc: Document, scenario: str, key: str, theirs: str) -> Shown:
    """A pool's figure over ``theirs``, as the floors' view of a :func:`ratio` line."""

    def text(pool: str) -> str | None:
        a, b = figure(doc, scenario, pool, key), figure(doc, scenario, theirs, key)
        return f"{a / b:.3f}x" if a and b else None

    return text


def ratio(
    doc: Document,
    scenario: str,
    mine: str,
    theirs: str,
    key: str,
    op: str,
    limit: float,
    floors: list[str] | None = None,
) -> Check:
    """``mine``'s figure over ``theirs`` compared with ``limit``; a failure
    shows the floors' figure over ``theirs`` (the scenario's floors by default)."""
    labels = doc["meta"]["labels"]
    text = f"{scenario} {labels[mine]} {NAMES[key]} vs {labels[theirs]} {op} {limit:.2f}x"
    a, b = figure(doc, scenario, mine, key), figure(doc, scenario, theirs, key)
    if not a or not b:
        return Check(text, "not measured", None)
    check = Check(text, f"{fmt(a)} / {fmt(b)} = {a / b:.3f}x", COMPARE[op](a / b, limit))
    floors = FLOORS.get(scenario, []) if floors is None else floors
    return beside_floors(doc, check, floors, shown_ratio(doc, scenario, key, theirs))


def bound(
    doc: Document,
    scenario: str,
    pool: str,
    key: str,
    op: str,
    limit: Any,
    floors: list[str] | None = None,
) -> Check:
    """``pool``'s figure compared with a fixed ``limit``; a failure shows the
    floors' (the scenario's by default)."""
    text = f"{scenario} {doc['meta']['labels'][pool]} {NAMES[key]} {op} {fmt(limit)}"
    value = figure(doc, scenario, pool, key)
    if value is None or limit is None:
        return Check(text, "not measured", None)
    check = Check(text, fmt(value), COMPARE[op](value, limit))
    floors = FLOORS.get(scenario, []) if floors is None else floors
    return beside_floors(doc, check, floors, shown(doc, scenario, key))


def no_pool_s2(doc: Document, pool: str) -> float | None:
    """S2's µs/op of the no-pool baseline of ``pool``'s driver."""
    found: float | None = figure(
        doc, "S2", NO_POOL[doc["meta"]["drivers"].get(pool, "psycopg2")], "us_per_op"
    )
    return found


def own_share(doc: Document, pool: str) -> float | None:
    """What ``pool`` adds to an S2 round trip: its µs/op less no-pool's (same driver)."""
    mine, base = figure(doc, "S2", pool, "us_per_op"), no_pool_s2(doc, pool)
    return mine - base if mine is not None and base is not None else None


def s2_share(doc: Document, pool: str, limit: float = 1.25) -> Check:
    """S2: ``pool``'s own share of a round trip at most ``limit`` times the
    handle floor's, both over the same no-pool baseline of the same run."""
    labels = doc["meta"]["labels"]
    text = (
        f"S2 {labels[pool]} own share of a round trip (µs/op over no pool)"
        f" vs {labels[S2_FLOOR]}'s <= {limit:.2f}x"
    )
    mine, floor = own_share(doc, pool), own_share(doc, S2_FLOOR)
    if mine is None or floor is None:
        return Check(text, "not measured", None)
    if floor > 0:
        measured = f"{fmt(mine)} / {fmt(floor)} µs = {mine / floor:.3f}x"
    else:  # noise: no pool can cost less than none; ours must then add nothing either
        measured = f"{fmt(mine)} µs against {fmt(floor)} µs: the floor added nothing measurable"
    measured += f" (no pool {fmt(no_pool_s2(doc, pool))} µs/op)"
    check = Check(text, measured, mine <= limit * max(floor, 0.0))

    def share(other: str) -> str | None:
        value = own_share(doc, other)
        return None if value is None else f"{fmt(value)} µs"

    return beside_floors(doc, check, ["bare-fifo"], share)


def own_spread(doc: Document, scenario: str, pool: str, limit: float = 2.5) -> Check:
    """A pool's p99 wait at most ``limit`` times its own p50 wait."""
    text = f"{scenario} {doc['meta']['labels'][pool]} p99 wait <= {limit:.2f}x its p50 wait"

    def spread(other: str) -> float | None:
        p99 = figure(doc, scenario, other, "wait_p99_us")
        p50 = figure(doc, scenario, other, "wait_p50_us")
        return p99 / p50 if p99 is not None and p50 else None

    value = spread(pool)
    if value is None:
        return Check(text, "not measured", None)
    p99, p50 = (
        figure(doc, scenario, pool, "wait_p99_us"),
        figure(doc, scenario, pool, "wait_p50_us"),
    )
    check = Check(text, f"{fmt(p99)} / {fmt(p50)} µs = {value:.3f}x", value <= limit)

    def text_of(other: str) -> str | None:
        found = spread(other)
        return None if found is None else f"{found:.3f}x"

    return beside_floors(doc, check, FLOORS.get(scenario, []), text_of)


def stalls(doc: Document, scenario: str, pool: str) -> str | None:
    """What the stall probe saw in ``pool``'s window, or None if it did not watch."""
    found = result(doc, scenario, pool)
    if found is None or "machine_stalls" not in found:
        return None
    if not found["machine_stalls"]:
        return "none"
    return f"{found['machine_stalls']}, up to {fmt(found['machine_stall_max_ms'], 1)} ms"


def longest_wait(doc: Document, scenario: str, pool: str, theirs: str) -> Check:
    """``pool``'s longest wait at most ``theirs``', with the machine stalls in both windows."""
    check = ratio(doc, scenario, pool, theirs, "wait_max_us", "<=", 1.0, floors=[])
    if check.passed is None:
        return check
    labels = doc["meta"]["labels"]
    seen = [f"{labels[p]} {text}" for p in (pool, theirs) if (text := stalls(doc, scenario, p))]
    if seen:
        check.measured += f" (machine stalls in the windows: {'; '.join(seen)})"
    floors = FLOORS.get(scenario, [])
    return beside_floors(doc, check, floors, shown_ratio(doc, scenario, "wait_max_us", theirs))


def fairness(doc: Document, scenario: str, pool: str) -> Check:
    """The fairness target, judged on every wait; the stall probe's view is shown beside it."""
    check = bound(doc, scenario, pool, "fairness", "<=", 2.0, floors=[])
    found = result(doc, scenario, pool)
    if check.passed is None or found is None or "machine_stalls" not in found:
        return beside_floors(doc, check, FLOORS[scenario], shown(doc, scenario, "fairness"))
    if found["machine_stalls"]:
        check.measured += (
            f" (the machine stopped {found['machine_stalls']} times in the window, up to"
            f" {fmt(found['machine_stall_max_ms'], 1)} ms; waits clear of those:"
            f" {fmt(found['fairness_outside_stalls'])})"
        )
    else:
        check.measured += " (the machine never stopped in the window)"
    if not found.get("stall_probe_realtime", True):
        check.measured += " [probe not real-time: run as root to trust it]"
    return beside_floors(doc, check, FLOORS[scenario], shown(doc, scenario, "fairness"))


def s4_share(doc: Document, pool: str, share: float = 0.97) -> Check:
    """S4's % of ideal at least ``share`` of the ceiling this run measured:
    one connection running the query back to back, with no pool in the way."""
    text = (
        f"S4 {doc['meta']['labels'][pool]} % of ideal >= {100 * share:.0f}% of the ceiling"
        " (one connection, back to back)"
    )
    value = figure(doc, "S4", pool, "pct_of_ideal")
    ceiling = doc["scenarios"].get("S4", {}).get("ceiling_pct")
    if value is None or not ceiling:
        return Check(text, "not measured", None)
    check = Check(
        text,
        f"{fmt(value, 1)} / {fmt(ceiling, 1)} = {100 * value / ceiling:.2f}%",
        value >= share * ceiling,
    )

    def of_ceiling(other: str) -> str | None:
        found = figure(doc, "S4", other, "pct_of_ideal")
        return None if found is None else f"{fmt(found, 1)} ({100 * found / ceiling:.1f}%)"

    return beside_floors(doc, check, FLOORS["S4"], of_ceiling)


#: The same form of psycopg_pool, each of our ConnectionPool's forms is held to.
PEER_FORM = {"ours": "psycopg_pool", "ours-with": "psycopg_pool-with"}


def targets(doc: Document) -> list[Check]:
    """Issue 19's figures asked of our pools, checked against this run."""
    s5_max = doc["scenarios"].get("S5", {}).get("params", {}).get("max_size")
    checks = [
        ratio(doc, "S1", "ours-legacy", "psycopg2-threaded", "us_per_op", "<=", 1.05, RAW_FLOORS),
        ratio(doc, "S1", "ours", "psycopg_pool", "us_per_op", "<=", 0.5),
        ratio(doc, "S1", "ours-with", "psycopg_pool-with", "us_per_op", "<=", 0.4),
        s2_share(doc, "ours"),
        s2_share(doc, "ours-with"),
        ratio(doc, "S2", "ours", "psycopg2-threaded", "us_per_op", "<=", 1.15),
    ]
    for pool, theirs in PEER_FORM.items():
        checks += [
            bound(doc, "S3", pool, "errors", "=", 0),
            bound(doc, "S3", pool, "starved", "=", 0),
            ratio(doc, "S3", pool, theirs, "ops_per_s", ">=", 1.5),
            longest_wait(doc, "S3", pool, theirs),
            own_spread(doc, "S3", pool),
        ]
    for pool in PEER_FORM:
        checks += [s4_share(doc, pool), fairness(doc, "S4", pool)]
    for pool in PEER_FORM:
        needed = figure(doc, "S6", pool, "connections_needed")
        checks += [
            bound(doc, "S5", pool, "connections_opened", "<=", s5_max),
            bound(doc, "S6", pool, "connections_opened", "<=", needed),
        ]
    return checks


# -- the chart -------------------------------------------------------------------------

CHARTS: list[tuple[str, str, str, bool]] = [
    # scenario, key, axis label, logarithmic
    ("S1", "us_per_op", "S1 acquire+release, µs/op (log)", True),
    ("S2", "us_per_op", "S2 acquire+SELECT 1+release, µs/op (log)", True),
    ("S3", "ops_per_s", "S3 32 threads / 8 conns, SELECT 1: ops/s", False),
    ("S4", "pct_of_ideal", "S4 hold 2 ms: % of ideal 4000 ops/s", False),
    ("S5", "connections_opened", "S5 churn: connections opened (log)", True),
    ("S6", "serve_ms", "S6 spike: ms to serve 50 requests (log)", True),
]
COLORS = {"ours": "#d62728", "peer": "#1f77b4", "baseline": "#7f7f7f"}


def chart(doc: Document, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    def short(value: float, _: object = None) -> str:
        return f"{value / 1000:g}k" if value >= 10_000 else f"{value:g}"

    labels, families = doc["meta"]["labels"], doc["meta"]["families"]
    pools = pools_in_order(doc)
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    for ax, (scenario, key, title, log) in zip(axes.flat, CHARTS):
        shown = [(pool, figure(doc, scenario, pool, key)) for pool in pools]
        shown = [(pool, value) for pool, value in shown if value]
        ax.set_title(title, fontsize=10)
        if not shown:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        names = [labels[pool] for pool, _ in shown][::-1]
        values = [value for _, value in shown][::-1]
        colors = [COLORS[families[pool]] for pool, _ in shown][::-1]
        ax.barh(names, values, color=colors)
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(FuncFormatter(short))
        if key == "pct_of_ideal":
            ax.axvline(100, color="black", linestyle="--", linewidth=0.8)
        ax.tick_params(axis="y", labelsize=8)
        for y, value in enumerate(values):
            ax.text(value, y, f" {fmt(value)}", va="center", fontsize=7)
    fig.suptitle(f"psycopg2_pool benchmarks; {doc['meta']['pinning']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- the document ------------------------------------------------------------------------


def markdown(doc: Document) -> str:
    meta = doc["meta"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    skipped = "".join(
        f"\n- not run: {meta['labels'][p]}: {why}" for p, why in meta["skipped"].items()
    )
    mode = " (--quick)" if meta["quick"] else ""
    return f"""# Benchmark results

Run {meta["date"]}{mode} on {meta["cpus"]} CPUs ({meta["machine"]}),
PostgreSQL {meta["server_version"]}; {versions}.

**Pinning:** {meta["pinning"]}. Each pool ran in a fresh process per scenario;
compare ratios within this run, not absolute times across machines.{skipped}

## Main figures

{main_table(doc)}

S1/S2: one thread, pool of 1, median of repeats (S2 x no pool: over one persistent
connection of the same driver). S3/S4: 32 threads on 8 connections, median ops/s of
the windows; fairness = max wait / p50 wait; starved = threads never served in a
window. S3/S4 machine stalls: times a real-time probe on the same CPU, sleeping 5 ms at
a time, overran its sleep by more than 0.5 ms in the window (longest overrun, ms), and
fairness over the waits clear of those moments; the fairness target is judged on every
wait. S5: connections opened in all (min 2, max 16; 16 threads with 1 ms think
time, then 1 thread). S6: 50 simultaneous 2 ms requests on min 5 max 50 whose
connections take 150 ms to open; new connections opened by the spike and time to
serve all. Raising pools (psycopg2.pool, psycopg2-pool 1.2, ours legacy) also run
behind a retry loop ("+ retry"); their PoolErrors are counted in "retried".

## Targets

```
{chr(10).join(check.line() for check in targets(doc))}
```

## Details

{detail_tables(doc)}
"""


#: S7 (many_clients.py) has files of its own: s7.json, s7.md, s7.svg.
OWN_FILES = {"S7": "s7"}


def split(doc: Document) -> dict[str, Document]:
    """A run's document by the files it is kept in: ``results`` (S1-S6) and ``s7``.

    So that ``run.py --only S7`` leaves results.md of the last full run alone,
    and the reverse.
    """
    parts: dict[str, dict[str, Any]] = {}
    for scenario, data in doc["scenarios"].items():
        parts.setdefault(OWN_FILES.get(scenario, "results"), {})[scenario] = data
    return {stem: {"meta": doc["meta"], "scenarios": found} for stem, found in parts.items()}


def write(doc: Document, out: Path) -> str:
    """Write every report of ``doc`` into ``out``; return the text to print."""
    texts = []
    for stem, part in split(doc).items():
        if stem == "results":
            texts.append(write_suite(part, out))
        else:
            import s7_report

            texts.append(s7_report.write(part, out))
    return "\n\n".join(texts)


def write_suite(doc: Document, out: Path) -> str:
    """Write results.md and results.png (S1-S6) into ``out``; return the text to print."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown(doc))
    chart(doc, out / "results.png")
    lines = [main_table(doc), "", f"Pinning: {doc['meta']['pinning']}", "", "Targets:"]
    lines += [check.line() for check in targets(doc)]
    if "ceiling_pct" in doc["scenarios"].get("S4", {}):
        ceiling = doc["scenarios"]["S4"]["ceiling_pct"]
        lines.append(f"(S4: one connection alone reaches {ceiling:.1f}% of ideal on this machine)")
    lines += ["", f"wrote {out / 'results.md'}, {out / 'results.png'}"]
    return "\n".join(lines)


if __name__ == "__main__":
    directory = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results"
    )
    for stem in ("results", *OWN_FILES.values()):
        if (directory / f"{stem}.json").exists():
            print(write(json.loads((directory / f"{stem}.json").read_text()), directory))
