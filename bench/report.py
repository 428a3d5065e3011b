"""The bench's derived figures, its markdown and its chart: Tollway ÷ bare relay, the openai translation cost,
Tollway against LiteLLM, the time to first byte each hop adds, and issue 7's goals met or not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Cells = list[dict[str, Any]]
Figures = dict[str, dict[str, float | None]]


def _pairs(cells: Cells, target: str, baseline: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(`mode c=N`, target's cell, baseline's cell) for every mode and concurrency both were measured at."""
    by_key = {(c["target"], c["mode"], c["concurrency"]): c for c in cells}
    return [
        (f"{mode} c={conc}", cell, by_key[(baseline, mode, conc)])
        for (name, mode, conc), cell in by_key.items()
        if name == target and (baseline, mode, conc) in by_key
    ]


def _div(num: dict[str, Any], den: dict[str, Any], key: str) -> float | None:
    a, b = num.get(key), den.get(key)
    return round(a / b, 2) if a is not None and b else None


def _sub(num: dict[str, Any], den: dict[str, Any], key: str) -> float | None:
    a, b = num.get(key), den.get(key)
    return round(a - b, 1) if a is not None and b is not None else None


def ratios(cells: Cells) -> Figures:
    """Tollway ÷ bare relay, per mode and concurrency."""
    return {
        key: {
            "cpu_per_req": _div(gw, relay, "cpu_us_per_req"),
            "cpu_sched_per_req": _div(gw, relay, "cpu_sched_us_per_req"),
            "p50": _div(gw, relay, "p50_ms"),
            "rps": _div(gw, relay, "rps"),
        }
        for key, gw, relay in _pairs(cells, "tollway", "relay")
    }


def _extra(cells: Cells, target: str, baseline: str) -> Figures:
    """What ``target`` costs over ``baseline`` (both Tollway rows): µs/req difference and ratios."""
    return {
        key: {
            "cpu_us_per_req_extra": _sub(t, b, "cpu_us_per_req"),
            "cpu_sched_us_per_req_extra": _sub(t, b, "cpu_sched_us_per_req"),
            "cpu_per_req": _div(t, b, "cpu_us_per_req"),
            "cpu_sched_per_req": _div(t, b, "cpu_sched_us_per_req"),
            "p50": _div(t, b, "p50_ms"),
            "rps": _div(t, b, "rps"),
        }
        for key, t, b in _pairs(cells, target, baseline)
    }


def translation(cells: Cells) -> Figures:
    """What the openai route costs Tollway over its anthropic passthrough."""
    return _extra(cells, "tollway-openai", "tollway")


def metering(cells: Cells) -> Figures:
    """What a key with rate limits costs Tollway over one without (issue 5's figure)."""
    return _extra(cells, "tollway-limited", "tollway")


def scale_out(cells: Cells) -> Figures:
    """What PostgreSQL and Redis cost a replica over SQLite and in-process limits, for the same limited key."""
    return _extra(cells, "tollway-shared", "tollway-limited")


FULL = "tollway-limited"
"""The Tollway row issue 7 compares: auth, validation, rate limits, a balance, metering and usage rows all on."""


def versus_litellm(cells: Cells) -> Figures:
    """LiteLLM ÷ Tollway (everything on) for CPU per request and latency; Tollway ÷ LiteLLM for req/s."""
    return {
        key: {
            "litellm_cpu_us_per_req": lite.get("cpu_us_per_req"),
            "tollway_cpu_us_per_req": gw.get("cpu_us_per_req"),
            "cpu_per_req": _div(lite, gw, "cpu_us_per_req"),
            "cpu_sched_per_req": _div(lite, gw, "cpu_sched_us_per_req"),
            "rps": _div(gw, lite, "rps"),
            "p50": _div(lite, gw, "p50_ms"),
            "peak_rss": _div(lite, gw, "peak_rss_mb"),
        }
        for key, gw, lite in _pairs(cells, FULL, "litellm")
    }


def goals(cells: Cells, ttfb: dict[str, Any], side: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 7's targets, each with what was measured and whether it is met (None: not measured)."""
    found: list[dict[str, Any]] = []

    def add(goal: str, measured: str, met: bool | None) -> None:
        found.append({"goal": goal, "measured": measured, "met": met})

    for name in ("tollway", FULL):
        rows = _pairs(cells, name, "relay")
        values = [(key, _div(gw, relay, "cpu_us_per_req")) for key, gw, relay in rows]
        known = [v for _, v in values if v is not None]
        add(f"{name} CPU/request ≤ 1.5 x bare relay's",
            ", ".join(f"{key}: {v}" for key, v in values) or "not measured",
            all(v <= 1.5 for v in known) if known else None)
    vs = versus_litellm(cells)
    cpu = [(key, row["cpu_per_req"]) for key, row in vs.items()]
    known = [v for _, v in cpu if v is not None]
    add(f"LiteLLM CPU/request ≥ 30 x {FULL}'s", ", ".join(f"{key}: {v}" for key, v in cpu) or "not measured",
        all(v >= 30 for v in known) if known else None)
    rps = [(key, row["rps"]) for key, row in vs.items() if key.endswith(" c=32")]
    known = [v for _, v in rps if v is not None]
    add(f"{FULL} req/s ≥ 20 x LiteLLM's at c=32", ", ".join(f"{key}: {v}" for key, v in rps) or "not measured",
        all(v >= 20 for v in known) if known else None)
    for name in ("tollway", FULL):
        row = ttfb.get(name)
        add(f"{name}: added time to first byte, stream c=1, p99 < 1 ms",
            "not measured" if row is None else f"{row['added_p99_ms']} ms (p50 {row['added_p50_ms']} ms)",
            None if row is None or row["added_p99_ms"] is None else row["added_p99_ms"] < 1.0)
    streams = (side.get("streams") or {}).get("summary")
    if streams:
        add(f"{streams['streams']:,} open streams on one process, no error",
            f"{streams['errors']} errors, {streams['peak_open']:,} open at once",
            streams["errors"] == 0 and streams["peak_open"] >= streams["streams"])
        add("memory per open stream < 50 KB", f"{streams['kb_per_stream']} KB",
            streams["kb_per_stream"] < 50)
    else:
        add("5,000 open streams, no error; < 50 KB each", "not measured (run bench/streams.py)", None)
    startup = (side.get("startup") or {}).get("summary")
    if startup:
        add("startup to first request served < 1 s",
            f"median {startup['median_s']} s over {startup['runs']} runs (max {startup['max_s']} s)",
            startup["median_s"] < 1.0)
    else:
        add("startup to first request served < 1 s", "not measured (run bench/startup.py)", None)
    return found


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int | float) else str(value)


def _block(title: str, columns: list[tuple[str, str]], figures: Figures) -> list[str]:
    if not figures:
        return []
    lines = ["", f"| {title} | " + " | ".join(head for head, _ in columns) + " |"]
    lines.append("|---|" + "--:|" * len(columns))
    for key, row in figures.items():
        lines.append(f"| {key} | " + " | ".join(_fmt(row[name]) for _, name in columns) + " |")
    return lines


def markdown(cells: Cells, rat: Figures, trans: Figures, skipped: dict[str, str],
             meter: Figures | None = None, shared: Figures | None = None, vs: Figures | None = None,
             ttfb: dict[str, Any] | None = None, goal: list[dict[str, Any]] | None = None) -> str:
    lines = [
        "| target | mode | c | req/s | p50 ms | p99 ms | TTFB p99 ms | errors | CPU µs/req | sched µs/req | peak MB "
        "| CPU of |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for c in cells:
        row = (c["target"], c["mode"], c["concurrency"], c["rps"], c["p50_ms"], c["p99_ms"], c.get("ttfb_p99_ms"),
               c["errors"])
        cpu = (c["cpu_us_per_req"], c["cpu_sched_us_per_req"], c.get("peak_rss_mb"), c["cpu_process"])
        lines.append("| " + " | ".join(_fmt(v) for v in (*row, *cpu)) + " |")
    ratio_columns = [
        ("CPU/req", "cpu_per_req"),
        ("sched CPU/req", "cpu_sched_per_req"),
        ("p50", "p50"),
        ("req/s", "rps"),
    ]
    lines += _block("Tollway ÷ bare relay", ratio_columns, rat)
    extra_columns = [("+CPU µs/req", "cpu_us_per_req_extra"), ("+sched µs/req", "cpu_sched_us_per_req_extra")]
    lines += _block("translation cost (openai route)", [*extra_columns, *ratio_columns], trans)
    if trans:
        lines += [
            "",
            "(+CPU, +sched: Tollway-openai minus Tollway, µs per request; the other columns: Tollway-openai ÷ Tollway)",
        ]
    lines += _block("rate limits on (tollway-limited ÷ tollway)",
                    [("+CPU µs/req", "cpu_us_per_req_extra"), ("CPU/req", "cpu_per_req"), ("p50", "p50")],
                    meter or {})
    lines += _block("PostgreSQL and Redis (tollway-shared ÷ tollway-limited)",
                    [("+CPU µs/req", "cpu_us_per_req_extra"), ("CPU/req", "cpu_per_req"), ("p50", "p50")],
                    shared or {})
    lines += _block(f"LiteLLM vs {FULL}",
                    [("LiteLLM CPU µs/req", "litellm_cpu_us_per_req"), ("Tollway CPU µs/req", "tollway_cpu_us_per_req"),
                     ("CPU/req LiteLLM ÷ Tollway", "cpu_per_req"), ("sched CPU ÷", "cpu_sched_per_req"),
                     ("req/s Tollway ÷ LiteLLM", "rps"), ("p50 LiteLLM ÷ Tollway", "p50"),
                     ("peak memory LiteLLM ÷ Tollway", "peak_rss")],
                    vs or {})
    if ttfb:
        lines += ["", "| time to first byte, stream c=1, paired with direct | pairs | added p50 ms | added p90 ms "
                  "| added p99 ms | TTFB p50 ms | TTFB p99 ms | direct p99 ms | p99 - direct p99 ms | errors |",
                  "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for name, row in ttfb.items():
            values = (row["pairs"], row["added_p50_ms"], row.get("added_p90_ms"), row["added_p99_ms"],
                      row["ttfb_p50_ms"], row["ttfb_p99_ms"], row["direct_ttfb_p99_ms"],
                      row["p99_minus_direct_p99_ms"], row["errors"])
            lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in values) + " |")
    if goal:
        lines += ["", "| issue 7 goal | measured | met |", "|---|---|---|"]
        for g in goal:
            met = "-" if g["met"] is None else "yes" if g["met"] else "**no**"
            lines.append(f"| {g['goal']} | {g['measured']} | {met} |")
    for name, why in skipped.items():
        lines += ["", f"**{name} skipped:**", "```", why, "```"]
    samples = [(c, s) for c in cells for s in c["error_samples"]]
    if samples:
        lines += ["", "Error samples:"]
        lines += [f"- {c['target']} {c['mode']} c={c['concurrency']}: {s}" for c, s in samples]
    return "\n".join(lines)


def chart(cells: Cells, path: Path, subtitle: str) -> str | None:
    """CPU µs per request and req/s per target, mode and concurrency, as a PNG; None, or why it was not made
    (matplotlib is in the dev extra: `pip install -e '.[dev]'`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib is not installed ({exc})"
    modes = [m for m in ("non-stream", "stream") if any(c["mode"] == m for c in cells)]
    levels = sorted({int(c["concurrency"]) for c in cells})
    names: list[str] = []
    for c in cells:
        if c["target"] not in names:
            names.append(c["target"])
    by_key = {(c["target"], c["mode"], c["concurrency"]): c for c in cells}
    metrics = [("cpu_us_per_req", "CPU µs per request (log)"), ("rps", "requests per second (log)")]
    fig, axes = plt.subplots(len(metrics), len(modes), figsize=(7.5 * len(modes), 9), squeeze=False)
    colours = plt.get_cmap("tab10")
    width = 0.8 / max(1, len(names))
    for row, (metric, label) in enumerate(metrics):
        for col, mode in enumerate(modes):
            ax = axes[row][col]
            for i, name in enumerate(names):
                xs, ys = [], []
                for j, level in enumerate(levels):
                    cell = by_key.get((name, mode, level))
                    if cell is not None and cell.get(metric):
                        xs.append(j - 0.4 + width * (i + 0.5))
                        ys.append(float(cell[metric]))
                bars = ax.bar(xs, ys, width, label=name, color=colours(i % 10))
                ax.bar_label(bars, labels=[f"{y:,.0f}" for y in ys], fontsize=6, rotation=90, padding=2)
            ax.set_yscale("log")
            ax.set_xticks(range(len(levels)), [f"c={level}" for level in levels])
            ax.set_title(f"{mode}: {label}", fontsize=10)
            ax.grid(axis="y", which="both", alpha=0.25)
            bottom, top = ax.get_ylim()
            ax.set_ylim(bottom, top * 3)  # room for the labels above the tallest bar (log scale)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncols=len(names), fontsize=8, bbox_to_anchor=(0.5, 0.955),
               frameon=False)
    fig.suptitle(f"Tollway bench on loopback: {subtitle}", fontsize=11)
    fig.text(0.5, 0.005, "CPU: user+system time of the row's process per request (direct: the fake upstream's); "
             "tollway-limited: auth, validation, rate limits, balance, metering, usage rows all on (SQLite)",
             ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 0.93))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


if __name__ == "__main__":
    # Redraw the chart from a results file: python bench/report.py [bench/results/latest.json [out.png]]
    import sys

    import orjson

    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results" / "latest.json"
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else source.with_suffix(".png")
    doc = orjson.loads(source.read_bytes())
    meta = doc.get("meta", {})
    why = chart(doc["cells"], target, f"commit {meta.get('commit')}, {meta.get('when')}, {meta.get('cores')} cores")
    print(f"wrote {target}" if why is None else f"no chart: {why}")
