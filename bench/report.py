"""The bench's derived figures and its markdown: Tollway ÷ bare relay, and the openai translation cost."""

from __future__ import annotations

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
             meter: Figures | None = None, shared: Figures | None = None) -> str:
    lines = [
        "| target | mode | c | req/s | p50 ms | p99 ms | errors | CPU µs/req | sched µs/req | CPU of |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for c in cells:
        row = (c["target"], c["mode"], c["concurrency"], c["rps"], c["p50_ms"], c["p99_ms"], c["errors"])
        cpu = (c["cpu_us_per_req"], c["cpu_sched_us_per_req"], c["cpu_process"])
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
    for name, why in skipped.items():
        lines += ["", f"**{name} skipped:**", "```", why, "```"]
    samples = [(c, s) for c in cells for s in c["error_samples"]]
    if samples:
        lines += ["", "Error samples:"]
        lines += [f"- {c['target']} {c['mode']} c={c['concurrency']}: {s}" for c, s in samples]
    return "\n".join(lines)
