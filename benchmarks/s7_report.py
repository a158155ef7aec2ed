"""S7's report, from the S7 part of a run's document: s7.md (a table per part
and the targets with PASS/FAIL) and s7.svg (cost against load, log axes).
report.py calls :func:`write`; the figures are explained in benchmarks/README.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import svg_chart
from report import MISSING, Check, Document, Row, fmt, pools_in_order, table

S7 = "S7"
OURS = ("ours", "ours-with")  # judged in part a
ASYNC_OURS, ASYNC_PEER, FLOOR = "ours", "psycopg_pool", "bare-fifo"  # parts b, c, d
THROUGHPUT_KEPT = 0.8  # ours at the most threads against ours at the fewest
TASK_TIMEOUT_LIMIT = 1.1  # seconds from asking to PoolTimeout, timeout=1
LOOP_LAG_LIMIT = 20.0  # ms
THREAD_TIMEOUT_FACTOR = 1.2  # part c, times the timeout


def results(doc: Document) -> dict[str, Row]:
    """The pools that ran S7 without an error, in the report's order."""
    found = doc["scenarios"].get(S7, {}).get("results", {})
    return {
        pool: found[pool]
        for pool in pools_in_order(doc)
        if pool in found and "error" not in found[pool]
    }


def _threads_row(found: Row, threads: int) -> Row | None:
    return next((row for row in found.get("threads", []) if row["threads"] == threads), None)


def _tasks_row(found: Row, tasks: int, start: str) -> Row | None:
    return next(
        (r for r in found.get("tasks", []) if r["tasks"] == tasks and r["start"] == start), None
    )


def _ms(us: Any) -> str:
    return MISSING if us is None else fmt(us / 1000)


# -- the targets -----------------------------------------------------------------------------


def throughput_kept(doc: Document, pool: str) -> Check:
    params = doc["scenarios"][S7]["params"]
    few, many = params["threads"][0], params["threads"][-1]
    label = doc["meta"]["labels"][pool]
    text = (
        f"S7a {label} throughput at {many:,} threads >= {THROUGHPUT_KEPT:.2f}x"
        f" its throughput at {few:,}"
    )
    found = results(doc)
    share = _kept(found.get(pool), few, many)
    if share is None:
        return Check(text, "not measured", None)
    high, low = (_threads_row(found[pool], n) for n in (many, few))
    assert high is not None and low is not None
    measured = f"{fmt(high['ops_per_s'], 0)} / {fmt(low['ops_per_s'], 0)} = {share:.3f}x"
    passed = share >= THROUGHPUT_KEPT
    if not passed:
        theirs = "psycopg_pool-with" if pool.endswith("-with") else ASYNC_PEER
        others = {
            other: f"{kept:.3f}x"
            for other in (FLOOR, theirs)
            if (kept := _kept(found.get(other), few, many)) is not None
        }
        measured += _beside(doc, others, asyncio=False)
    return Check(text, measured, passed)


def _kept(found: Row | None, few: int, many: int) -> float | None:
    """Throughput at ``many`` threads over that at ``few``."""
    low = _threads_row(found, few) if found else None
    high = _threads_row(found, many) if found else None
    if not low or not high or not low["ops_per_s"]:
        return None
    share: float = high["ops_per_s"] / low["ops_per_s"]
    return share


def ahead_of_peers(doc: Document, pool: str) -> Check:
    """At every thread count, at least the throughput of every peer that starved no thread."""
    labels, families = doc["meta"]["labels"], doc["meta"]["families"]
    text = f"S7a {labels[pool]} throughput >= every peer that starves no thread, at every size"
    found = results(doc)
    mine = found.get(pool)
    if mine is None:
        return Check(text, "not measured", None)
    parts, verdicts = [], []
    for threads in doc["scenarios"][S7]["params"]["threads"]:
        own = _threads_row(mine, threads)
        rivals = {
            other: row["ops_per_s"]
            for other, data in found.items()
            if families[other] == "peer"
            and (row := _threads_row(data, threads)) is not None
            and row["starved"] == 0
        }
        if own is None:
            parts.append(f"{threads:,}: not measured")
        elif not rivals:
            parts.append(f"{threads:,}: {fmt(own['ops_per_s'], 0)}, no peer served every thread")
        else:
            best = max(rivals, key=rivals.__getitem__)
            verdicts.append(own["ops_per_s"] >= rivals[best])
            parts.append(
                f"{threads:,}: {fmt(own['ops_per_s'], 0)} vs {fmt(rivals[best], 0)}"
                f" ({labels[best]})"
            )
    return Check(text, "; ".join(parts), all(verdicts) if verdicts else None)


def _beside(doc: Document, figures: dict[str, str], asyncio: bool) -> str:
    """The floor's and the peer's figures in this run, for a failed line."""
    found = results(doc)
    seen = [
        f"{found[pool]['async_label'] if asyncio else doc['meta']['labels'][pool]} {text}"
        for pool, text in figures.items()
        if pool in found
    ]
    return f" [in this run: {'; '.join(seen)}]" if seen else ""


def _tasks_check(doc: Document, start: str, key: str, limit: float, text: str) -> Check:
    found = results(doc)
    mine = found.get(ASYNC_OURS)
    label = mine.get("async_label", ASYNC_OURS) if mine else ASYNC_OURS
    text = f"S7b {label}, {start} start: {text}"
    sizes = doc["scenarios"][S7]["params"]["tasks"]
    rows = [_tasks_row(mine, tasks, start) for tasks in sizes] if mine else []
    if not rows or any(row is None or row[key] is None for row in rows):
        return Check(text, "not measured", None)
    values = [row[key] for row in rows if row is not None]
    measured = "; ".join(f"{tasks:,} tasks: {fmt(value)}" for tasks, value in zip(sizes, values))
    passed = all(value <= limit for value in values)
    if not passed:
        largest = sizes[-1]
        others = {
            pool: fmt(row[key])
            for pool in (FLOOR, ASYNC_PEER)
            if pool in found and (row := _tasks_row(found[pool], largest, start)) is not None
        }
        measured += _beside(doc, others, asyncio=True)
    return Check(text, measured, passed)


def task_timeouts(doc: Document, start: str) -> Check:
    return _tasks_check(
        doc,
        start,
        "slowest_s",
        TASK_TIMEOUT_LIMIT,
        f"every task's PoolTimeout <= {TASK_TIMEOUT_LIMIT:.2f} s after it asked (timeout=1), s",
    )


def loop_lag(doc: Document, start: str) -> Check:
    return _tasks_check(
        doc,
        start,
        "loop_lag_max_ms",
        LOOP_LAG_LIMIT,
        f"event loop never blocked > {LOOP_LAG_LIMIT:g} ms, worst ms",
    )


def threads_timing_out(doc: Document) -> Check:
    found = results(doc)
    params = doc["scenarios"][S7]["params"]
    limit = THREAD_TIMEOUT_FACTOR * params["timeout"]
    label = doc["meta"]["labels"][ASYNC_OURS]
    text = (
        f"S7c {label}: {params['timeout_threads']:,} threads timing out together"
        f" (timeout={params['timeout']:g}) all answered <= {limit:.2f} s"
    )
    mine = found.get(ASYNC_OURS, {}).get("timing_out")
    if not mine or mine["all_answered_s"] is None:
        return Check(text, "not measured", None)
    passed = mine["all_answered_s"] <= limit and not mine["unanswered"]
    measured = f"{fmt(mine['all_answered_s'])} s"
    if not passed:
        measured += _beside(
            doc,
            {
                pool: f"{fmt(found[pool]['timing_out']['all_answered_s'])} s"
                for pool in (FLOOR, ASYNC_PEER)
                if pool in found and found[pool].get("timing_out")
            },
            asyncio=False,
        )
    return Check(text, measured, passed)


def targets(doc: Document) -> list[Check]:
    checks = []
    for pool in OURS:
        checks += [throughput_kept(doc, pool), ahead_of_peers(doc, pool)]
    for start in doc["scenarios"][S7]["params"]["starts"]:
        checks += [task_timeouts(doc, start), loop_lag(doc, start)]
    checks.append(threads_timing_out(doc))
    return checks


# -- the tables ------------------------------------------------------------------------------


def summary_table(doc: Document) -> str:
    labels = doc["meta"]["labels"]
    sizes = doc["scenarios"][S7]["params"]["threads"]
    header = ["pool"] + [f"ops/s, {n:,} threads" for n in sizes]
    header += [
        f"{sizes[-1]:,} / {sizes[0]:,}",
        "starved (by size)",
        "pool CPU µs/request",
        "server conns (max)",
    ]
    rows = []
    for pool, found in results(doc).items():
        by_size = [_threads_row(found, n) for n in sizes]
        ops = [row["ops_per_s"] if row else None for row in by_size]
        kept = ops[-1] / ops[0] if ops[0] and ops[-1] is not None else None
        rows.append(
            [labels[pool]]
            + [fmt(value, 0) for value in ops]
            + [
                fmt(kept),
                " / ".join(fmt(row["starved"]) if row else MISSING for row in by_size),
                " / ".join(fmt(row.get("pool_cpu_us"), 1) if row else MISSING for row in by_size),
                fmt(found.get("server_connections_max")),
            ]
        )
    return table(header, rows)


def threads_table(doc: Document) -> str:
    labels = doc["meta"]["labels"]
    header = [
        "pool", "threads", "ops/s", "µs/request", "wait p50 ms", "wait p99 ms", "wait max ms",
        "starved", "errors", "client CPU µs/request", "pool CPU µs/request",
        "context switches/request",
    ]  # fmt: skip
    rows = []
    for pool, found in results(doc).items():
        for row in found.get("threads", []):
            errors = fmt(row["errors"])
            if row.get("retries") is not None:
                errors += f" (+{row['retries']:,} retried)"
            rows.append(
                [
                    labels[pool],
                    fmt(row["threads"]),
                    fmt(row["ops_per_s"], 0),
                    fmt(row["us_per_op"]),
                    _ms(row["wait_p50_us"]),
                    _ms(row["wait_p99_us"]),
                    _ms(row["wait_max_us"]),
                    fmt(row["starved"]),
                    errors,
                    fmt(row["cpu_us_per_op"], 1),
                    fmt(row.get("pool_cpu_us"), 1),
                    fmt(row.get("switches_per_op")),
                ]
            )
    return table(header, rows)


def driver_line(doc: Document) -> str:
    """The no-pool CPU per request of each driver, as measured in each pool's process."""
    by_driver: dict[str, list[float]] = {}
    for pool, found in results(doc).items():
        by_driver.setdefault(doc["meta"]["drivers"][pool], []).append(found["driver_cpu_us"])
    return "; ".join(
        f"{driver}: {fmt(min(values), 1)} to {fmt(max(values), 1)} µs"
        for driver, values in sorted(by_driver.items())
    )


def tasks_table(doc: Document) -> str:
    header = [
        "pool", "tasks", "start", "slowest ask → PoolTimeout s", "p50 s",
        "first ask → last PoolTimeout s", "asks spread over ms", "loop lag max ms",
        "loop lag p99 ms", "ticks late > 20 ms", "longest GC ms", "full GCs", "outcomes",
    ]  # fmt: skip
    rows = []
    for found in results(doc).values():
        for row in found.get("tasks", []):
            rows.append(
                [
                    found["async_label"],
                    fmt(row["tasks"]),
                    row["start"],
                    fmt(row["slowest_s"], 3),
                    fmt(row["p50_s"], 3),
                    fmt(row["last_answer_s"], 3),
                    fmt(row["asked_within_ms"], 0),
                    fmt(row["loop_lag_max_ms"], 1),
                    fmt(row["loop_lag_p99_ms"], 1),
                    fmt(row["ticks_over_20ms"]),
                    fmt(row["gc_pause_max_ms"], 1),
                    fmt(row["gc_full_collections"]),
                    ", ".join(f"{k} {v:,}" for k, v in sorted(row["outcomes"].items())),
                ]
            )
    return table(header, rows)


def timing_out_table(doc: Document) -> str:
    labels = doc["meta"]["labels"]
    header = [
        "pool", "threads", "release → last answer s", "slowest ask → answer s", "p50 s",
        "asks spread over ms", "outcomes",
    ]  # fmt: skip
    rows = []
    for pool, found in results(doc).items():
        row = found.get("timing_out")
        if not row:
            continue
        outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(row["outcomes"].items()))
        if row["unanswered"]:
            outcomes += f", no answer {row['unanswered']:,}"
        rows.append(
            [
                labels[pool],
                fmt(row["threads"]),
                fmt(row["all_answered_s"], 3),
                fmt(row["slowest_s"], 3),
                fmt(row["p50_s"], 3),
                fmt(row["asked_within_ms"], 0),
                outcomes,
            ]
        )
    return table(header, rows)


def memory_table(doc: Document) -> str:
    labels = doc["meta"]["labels"]
    header = [
        "pool", "bytes per idle connection", "driver's connection alone", "pool's own per idle",
        "asyncio pool", "bytes per waiting task", "task awaiting a bare future",
        "pool's own per waiter", "kept per cancelled waiter",
    ]  # fmt: skip
    rows = []
    for pool, found in results(doc).items():
        idle, waiting = found.get("idle_slot"), found.get("waiting")
        if not idle or not waiting:
            continue
        rows.append(
            [
                labels[pool],
                fmt(idle["idle_slot_bytes"], 0),
                fmt(idle["driver_connection_bytes"], 0),
                fmt(idle["pool_bytes_per_slot"], 0),
                found["async_label"],
                fmt(waiting["waiting_task_bytes"], 0),
                fmt(waiting["parked_task_bytes"], 0),
                fmt(waiting["pool_bytes_per_waiter"], 0),
                fmt(waiting["kept_after_cancel_bytes"], 0),
            ]
        )
    return table(header, rows)


# -- the chart -------------------------------------------------------------------------------

PALETTES = {
    "ours": ["#d62728", "#ff7f0e", "#8c564b", "#e377c2"],
    "peer": ["#1f77b4", "#17becf", "#2ca02c", "#9467bd", "#bcbd22", "#393b79", "#637939"],
    "baseline": ["#7f7f7f", "#444444"],
}


def colors(doc: Document) -> dict[str, str]:
    """A color per pool: reds for ours, blues and greens for peers, greys for baselines."""
    given: dict[str, str] = {}
    used = {family: 0 for family in PALETTES}
    for pool in results(doc):
        family = doc["meta"]["families"][pool]
        palette = PALETTES[family]
        given[pool] = palette[used[family] % len(palette)]
        used[family] += 1
    return given


def chart(doc: Document) -> str:
    labels, families = doc["meta"]["labels"], doc["meta"]["families"]
    params = doc["scenarios"][S7]["params"]
    found, color = results(doc), colors(doc)
    threads = [float(n) for n in params["threads"]]
    wall, cpu = [], []
    for pool, data in found.items():
        rows = data.get("threads", [])
        dashed = families[pool] == "baseline"
        wall.append(
            svg_chart.Series(
                labels[pool],
                color[pool],
                [(r["threads"], r["us_per_op"], not r["starved"]) for r in rows if r["us_per_op"]],
                dashed,
            )
        )
        cpu.append(
            svg_chart.Series(
                labels[pool],
                color[pool],
                [
                    (r["threads"], r["cpu_us_per_op"], not r["starved"])
                    for r in rows
                    if r["cpu_us_per_op"]
                ],
                dashed,
            )
        )
    drivers: dict[str, list[float]] = {}
    for pool, data in found.items():
        drivers.setdefault(doc["meta"]["drivers"][pool], []).append(data["driver_cpu_us"])
    no_pool = [
        svg_chart.Reference(min(values), f"{driver}, no pool, 1 thread")
        for driver, values in sorted(drivers.items())
    ]
    threads_row = svg_chart.Row(
        [
            svg_chart.Panel(
                f"a. threads on {params['size']} connections: cost",
                "client threads",
                "µs of wall time per request",
                wall,
                x_ticks=threads,
            ),
            svg_chart.Panel(
                "a. the client process's CPU per request",
                "client threads",
                "CPU µs per request",
                cpu,
                no_pool,
                x_ticks=threads,
            ),
        ],
        wall,
        "hollow point: some thread never served\nin the window; dashed: baseline",
    )
    timeouts, lags, legend = [], [], []
    for pool, data in found.items():
        if "tasks" not in data:
            continue
        for start in params["starts"]:
            rows = [r for r in data["tasks"] if r["start"] == start]
            series_label = f"{data['async_label']}, {start}"
            dashed = start != params["starts"][0]
            timeouts.append(
                svg_chart.Series(
                    series_label,
                    color[pool],
                    [(r["tasks"], r["slowest_s"], True) for r in rows if r["slowest_s"]],
                    dashed,
                )
            )
            lags.append(
                svg_chart.Series(
                    series_label,
                    color[pool],
                    [(r["tasks"], max(r["loop_lag_max_ms"], 0.1), True) for r in rows],
                    dashed,
                )
            )
            legend.append(timeouts[-1])
    tasks = [float(n) for n in params["tasks"]]
    tasks_row = svg_chart.Row(
        [
            svg_chart.Panel(
                f"b. tasks timing out on a full pool of {params['async_size']}",
                "asyncio tasks asking at once",
                "slowest ask → PoolTimeout, s",
                timeouts,
                [svg_chart.Reference(TASK_TIMEOUT_LIMIT, f"target {TASK_TIMEOUT_LIMIT:g} s")],
                x_ticks=tasks,
            ),
            svg_chart.Panel(
                "b. the event loop's worst lag meanwhile",
                "asyncio tasks asking at once",
                f"worst lag of a {params['tick'] * 1000:g} ms ticker, ms",
                lags,
                [svg_chart.Reference(LOOP_LAG_LIMIT, f"target {LOOP_LAG_LIMIT:g} ms")],
                x_ticks=tasks,
            ),
        ],
        legend,
        f"staggered: {params['batch']} new tasks per turn\nof the loop; burst: all in one",
    )
    mode = " (--quick)" if doc["meta"].get("quick") else ""
    return svg_chart.render(
        f"S7 many clients, psycopg2_pool and its peers{mode}",
        [threads_row, tasks_row],
        f"run {doc['meta']['date']}; {doc['meta']['pinning']}",
    )


# -- the document ----------------------------------------------------------------------------


def failures(doc: Document) -> str:
    labels = doc["meta"]["labels"]
    found = doc["scenarios"][S7]["results"]
    lines = [
        f"- {labels[pool]}: {data['error']}" for pool, data in found.items() if "error" in data
    ]
    return "\n\nFailed:\n" + "\n".join(lines) if lines else ""


def markdown(doc: Document) -> str:
    meta = doc["meta"]
    params = doc["scenarios"][S7]["params"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    mode = " (--quick)" if meta["quick"] else ""
    shown = ", ".join(f"{k}={v}" for k, v in params.items() if k != "dsn")
    tasks = ", ".join(f"{n:,}" for n in params["tasks"])
    return f"""# S7: many clients

Run {meta["date"]}{mode} on {meta["cpus"]} CPUs ({meta["machine"]}),
PostgreSQL {meta["server_version"]}; {versions}.

**Pinning:** {meta["pinning"]}. Each pool ran in a fresh process; compare
figures within this run. benchmarks/README.md explains every column.

_{shown}_

## Targets

```
{chr(10).join(check.line() for check in targets(doc))}
```

![S7 chart](s7.svg)

## a. {", ".join(f"{n:,}" for n in params["threads"])} threads on {params["size"]} connections

Closed loop of checkout, `SELECT 1`, return. Pool CPU per request = the
client process's CPU per request minus that of one thread running `SELECT 1`
on one connection of the same driver with no pool ({driver_line(doc)}).

{summary_table(doc)}

{threads_table(doc)}

## b. {tasks} asyncio tasks on a full pool of {params["async_size"]}, timeout={params["timeout"]:g}

{tasks_table(doc)}

## c. {params["timeout_threads"]:,} threads timing out together, timeout={params["timeout"]:g}

{timing_out_table(doc)}

## d. memory (tracemalloc)

{memory_table(doc)}{failures(doc)}
"""


def console(doc: Document) -> str:
    lines = [summary_table(doc), "", tasks_table(doc), "", timing_out_table(doc), ""]
    lines += [memory_table(doc), "", "S7 targets:"]
    lines += [check.line() for check in targets(doc)]
    return "\n".join(lines)


def write(doc: Document, out: Path) -> str:
    """Write s7.md and s7.svg into ``out``; return the text to print."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "s7.md").write_text(markdown(doc))
    (out / "s7.svg").write_text(chart(doc))
    return console(doc) + f"\n\nwrote {out / 's7.md'}, {out / 's7.svg'}"
