"""The report of a fault drill, written next to its history.

:func:`write_report` adds three files to a drill folder (see
:mod:`provision.drills.history` for the input files):

``summary.json``
    ``{"verdict": "PASS"|"FAIL", "ok", "drill" (drill.json), "fault_window" and
    "settle_after" (epoch seconds), "invariants": [{"name", "title", "ok", "evidence",
    "details"}], "metrics"}``; :func:`read_verdict` reads the verdict back.
``summary.md``
    For people: the verdict, each invariant with its evidence, the metrics, the events
    relative to fault-start, then the offending items of each failed invariant.
``timeline.png``
    From the same history: answered and failed requests per second by kind, and which
    database node was writable, on one time axis in seconds from fault-start, with the
    fault window shaded and the events marked.

:func:`render_summary_text` gives the few lines a console shows after a drill.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provision.drills.checker import (
    Verdict,
    WritableState,
    effective_outcome,
    writable_timeline,
)
from provision.drills.history import KINDS, History, write_json

if TYPE_CHECKING:
    from matplotlib.axes import Axes

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
TIMELINE_PNG = "timeline.png"

KIND_COLORS = {
    "page": "#1f77b4",
    "health": "#17becf",
    "list": "#2ca02c",
    "read": "#9467bd",
    "write": "#ff7f0e",
}
OTHER_COLOR = "#7f7f7f"
FAULT_COLOR = "#d62728"
PASS_COLOR = "#1a7f37"
WRITABLE_COLOR = "#2ca02c"
UNKNOWN_COLOR = "#bdbdbd"
METRIC_MEANINGS = {
    "writes": "writes by outcome; unknown ones found in (applied) or absent from the primary",
    "write_outage_s": "longest time between two acknowledged writes with failures between",
    "write_outage_from": "its start: the last acknowledgement before it (s)",
    "first_failed_write": "start of the first write not acknowledged, from the fault on (s)",
    "recovered_at": "the first acknowledgement after the outage (s); none: never",
    "max_writable_before_fault": "most nodes writable at once before fault-start",
    "max_writable_during_fault": "most nodes writable at once from fault-start to settling",
    "max_writable_after_settle": "most nodes writable at once after settling",
    "fault_window": "fault-start and fault-end (s)",
    "settle_after": "from here at most one writable node is required (s)",
    "final_primary": "primary after the drill",
    "final_writable": "writable nodes after the drill",
    "acked_missing_by_node": "acknowledged writes absent from each node",
    "unexplained_texts": "drill texts in the database that no recorded write sent",
    "samples": "cluster state samples",
    "samples_after_settle": "samples after settle_after",
    "unknown_samples": "samples where a node did not answer",
}
"""How summary.md explains each metric; times marked (s) are seconds from fault-start."""
MAX_LABELLED_EVENTS = 12
"""Beyond this many events the plot draws their lines without labels, which would pile up."""


def write_report(folder: Path | str, history: History, verdict: Verdict) -> None:
    """Write summary.json, summary.md and timeline.png into the drill folder."""
    folder = Path(folder)
    write_json(folder / SUMMARY_JSON, summary_json(history, verdict))
    (folder / SUMMARY_MD).write_text(render_markdown(history, verdict), encoding="utf-8")
    plot_timeline(history, verdict, folder / TIMELINE_PNG)


def read_verdict(folder: Path | str) -> Verdict:
    """The verdict a previous write_report left in summary.json."""
    data = json.loads((Path(folder) / SUMMARY_JSON).read_text(encoding="utf-8"))
    return Verdict.from_json(data)


def summary_json(history: History, verdict: Verdict) -> dict[str, Any]:
    start, end = history.fault_window
    return {
        "verdict": _word(verdict),
        "drill": history.info.to_json(),
        "fault_window": [start, end],
        "settle_after": history.settle_after,
        **verdict.to_json(),
    }


def render_summary_text(verdict: Verdict) -> str:
    """A few lines for the console: the verdict, what failed, and the write outage."""
    m = verdict.metrics
    held = sum(inv.ok for inv in verdict.invariants)
    lines = [f"Drill {_word(verdict)}: {held} of {len(verdict.invariants)} invariants hold"]
    lines += [f"  FAILED {inv.name}: {inv.evidence}" for inv in verdict.failed]
    writes = m.get("writes", {})
    if writes:
        outage = f"write outage {m.get('write_outage_s', 0.0):.1f} s"
        if m.get("recovered_at") is not None:
            outage += f", writes back at {m['recovered_at']:+.1f} s"
        elif m.get("write_outage_s"):
            outage += ", writes never came back"
        lines.append(
            f"  writes: {writes['acked']} acknowledged, {writes['unknown']} unknown, "
            f"{writes['failed']} refused; {outage}"
        )
    if "max_writable_after_settle" in m:
        lines.append(
            f"  writable nodes at most: {m['max_writable_before_fault']} before the fault, "
            f"{m['max_writable_during_fault']} until settled, "
            f"{m['max_writable_after_settle']} after; final primary: "
            f"{m.get('final_primary') or 'none'}"
        )
    return "\n".join(lines)


def render_markdown(history: History, verdict: Verdict) -> str:
    info = history.info
    m = verdict.metrics
    start, end = history.fault_window
    role = f" ({info.role})" if info.role else ""
    out = [f"# Drill: {info.fault} of {info.target}{role}: {_word(verdict)}", ""]
    planned = f" (planned {info.duration:g} s)" if info.duration else ""
    parts = [f"{info.users} users at {info.rate:g} requests/s each"] if info.users else []
    parts.append(
        f"fault for {end - start:.1f} s{planned}"
        if history.has_fault
        else "no fault was recorded (a baseline run)"
    )
    parts.append(f"one writable node required from {_rel(history.rel(history.settle_after))}")
    origin = "fault-start" if history.has_fault else "the first record"
    out.append("; ".join(parts) + f". Times are seconds from {origin}.")
    if info.extra:
        out += ["", "; ".join(f"{k}: {_value(v)}" for k, v in info.extra.items())]
    out += ["", "![timeline](timeline.png)", "", "## Invariants", ""]
    out += ["| | invariant | evidence |", "|---|---|---|"]
    for inv in verdict.invariants:
        mark = "✓" if inv.ok else "✗"
        out.append(f"| {mark} | {_cell(inv.title)} `{inv.name}` | {_cell(inv.evidence)} |")
    if history.info.expect.lb_fault:
        out += [
            "",
            "A load-balancer drill is held to a bound (`front_door_failover_bounded`) instead "
            "of the invariants that no GET fails.",
        ]
    elif not history.info.expect.web_fault:
        out += ["", "`gets_answer_during_web_fault` applies to web-tier drills only."]
    out += ["", "## Requests", ""]
    out += [
        "| kind | total | ok | fail | unknown | p50 ms | p95 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, r in m.get("requests", {}).items():
        out.append(
            f"| {kind} | {r['total']} | {r['ok']} | {r['fail']} | {r['unknown']} "
            f"| {_num(r['p50_ms'])} | {_num(r['p95_ms'])} |"
        )
    out += ["", "## Metrics", "", "| metric | value | meaning |", "|---|---|---|"]
    for key, value in m.items():
        if key not in ("requests", "notes"):
            meaning = METRIC_MEANINGS.get(key, "")
            out.append(f"| {key} | {_cell(_value(value))} | {meaning} |")
    out += ["", "## Timeline", "", "| t (s) | event | detail |", "|---:|---|---|"]
    rows = [(e.t, e.event, e.detail) for e in history.events]
    rows.append((history.settle_after, "settle_after", "the checker requires one writer from here"))
    for t, event, detail in sorted(rows, key=lambda row: row[0]):
        out.append(f"| {history.rel(t):+.1f} | {_cell(event)} | {_cell(detail)} |")
    failed = verdict.failed
    if failed:
        out += ["", "## Offending details"]
        for inv in failed:
            out += ["", f"### ✗ {inv.name}", "", inv.evidence, ""]
            out += [f"- {_cell(d)}" for d in inv.details] or ["- (no single item to show)"]
    if m.get("notes"):
        out += ["", "## Notes", ""]
        out += [f"- {n}" for n in m["notes"]]
    return "\n".join(out) + "\n"


def plot_timeline(history: History, verdict: Verdict, path: Path | str) -> None:
    """Draw the drill on one time axis (seconds from fault-start) into a 1400x900 PNG."""
    import matplotlib

    # Agg before pyplot is imported: drills run on servers and in CI, with no display.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        4,
        1,
        figsize=(14, 9),
        dpi=100,
        sharex=True,
        gridspec_kw={"height_ratios": [3, 1.7, 1.9, 0.9], "hspace": 0.14},
    )
    ax_ok, ax_bad, ax_db, ax_count = axes
    try:
        lo, hi = _x_range(history)
        width = _bin_seconds(hi - lo)
        _plot_answered(ax_ok, history, lo, hi, width)
        _plot_failed(ax_bad, history, lo, hi, width)
        timeline = writable_timeline(history.samples, history.settle_after)
        _plot_writable(ax_db, history, timeline)
        _plot_writable_count(ax_count, history, timeline)
        for ax in axes:
            _mark_fault_and_events(ax, history)
            ax.grid(True, axis="x", alpha=0.3)
        _label_events(ax_ok, history, lo, hi)
        ax_count.set_xlim(lo, hi)
        ax_count.set_xlabel(
            "seconds from fault-start" if history.has_fault else "seconds from the first record"
        )
        info = history.info
        role = f" ({info.role})" if info.role else ""
        fig.suptitle(
            f"{info.fault} of {info.target}{role}: {_word(verdict)}",
            color=PASS_COLOR if verdict.ok else FAULT_COLOR,
            fontsize=15,
            fontweight="bold",
            y=0.985,
        )
        failed = ", ".join(inv.name for inv in verdict.failed)
        if failed:
            fig.text(0.5, 0.947, f"failed: {failed}", ha="center", fontsize=10, color=FAULT_COLOR)
        fig.text(0.5, 0.922, _subtitle(verdict), ha="center", fontsize=10, color="#333333")
        # Room above the top panel for MAX_LABEL_ROWS rows of event names under the titles.
        fig.subplots_adjust(left=0.07, right=0.85, top=0.82, bottom=0.06)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def _subtitle(verdict: Verdict) -> str:
    m = verdict.metrics
    parts = []
    writes = m.get("writes")
    if writes:
        parts.append(
            f"writes {writes['acked']} acknowledged, {writes['unknown']} unknown, "
            f"{writes['failed']} refused; outage {m.get('write_outage_s', 0.0):.1f} s"
        )
    if "max_writable_after_settle" in m:
        parts.append(
            f"writable nodes at most {m['max_writable_during_fault']} until settled, "
            f"{m['max_writable_after_settle']} after"
        )
    return "   |   ".join(parts)


def _x_range(history: History) -> tuple[float, float]:
    first, last = history.span
    lo, hi = history.rel(first), history.rel(last)
    pad = max(1.0, (hi - lo) * 0.01)
    return lo - pad, hi + pad


def _bin_seconds(span: float) -> int:
    """Wide enough to tame the noise of a few requests per second, narrow enough to show
    a fault of a few seconds: about 40 bins, never under a second."""
    return max(1, math.ceil(span / 40))


def _per_bin(
    times: Sequence[float], lo: float, hi: float, width: int
) -> tuple[list[float], list[float]]:
    """Rate per second of `times` in bins of `width` s on whole seconds: centres, rates."""
    first = math.floor(lo / width) * width
    n = max(1, math.ceil((hi - first) / width))
    counts = [0] * n
    for t in times:
        i = math.floor((t - first) / width)
        if 0 <= i < n:
            counts[i] += 1
    return [first + (i + 0.5) * width for i in range(n)], [c / width for c in counts]


def _plot_answered(ax: Axes, history: History, lo: float, hi: float, width: int) -> None:
    for kind in _kinds(history):
        ok = [
            history.rel(op.end)
            for op in history.ops
            if op.kind == kind and effective_outcome(op) == "ok"
        ]
        x, y = _per_bin(ok, lo, hi, width)
        ax.plot(x, y, drawstyle="steps-mid", color=_color(kind), lw=1.8, label=kind)
    ax.set_ylabel(f"answered / s\n({width} s bins)" if width > 1 else "answered / s")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), title="answered", frameon=False)


def _plot_failed(ax: Axes, history: History, lo: float, hi: float, width: int) -> None:
    """Stacked bars: failures are sparse, and a bar shows even a lone one."""
    bottom: list[float] | None = None
    for kind in _kinds(history):
        for outcome, hatch in (("fail", None), ("unknown", "////")):
            times = [
                history.rel(op.end)
                for op in history.ops
                if op.kind == kind and effective_outcome(op) == outcome
            ]
            if not times:
                continue
            x, y = _per_bin(times, lo, hi, width)
            base = bottom or [0.0] * len(y)
            ax.bar(
                x,
                y,
                width=width * 0.9,
                bottom=base,
                color=_color(kind) if outcome == "fail" else "white",
                edgecolor=_color(kind),
                hatch=hatch,
                label=kind if outcome == "fail" else f"{kind} (unknown)",
            )
            bottom = [b + v for b, v in zip(base, y, strict=True)]
    ax.set_ylabel("failed / s")
    if bottom:
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), title="failed", frameon=False)
        ax.set_ylim(0, max(bottom) * 1.15 + 0.2)
    else:
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no failed request", transform=ax.transAxes, ha="center")


def _plot_writable(ax: Axes, history: History, timeline: Sequence[WritableState]) -> None:
    """One lane per node: a 0/1 step, green while writable, grey while unknown."""
    from matplotlib.patches import Patch

    if not timeline:
        ax.text(0.5, 0.5, "no samples", transform=ax.transAxes, ha="center")
        ax.set_yticks([])
        return
    nodes = sorted({n for s in timeline for n in s.nodes})
    xs = [history.rel(s.t) for s in timeline] + [history.rel(history.span[1])]
    lane = 1.6
    for i, node in enumerate(nodes):
        base = i * lane
        values = [s.nodes.get(node) for s in timeline]
        # One patch per run of equal states: adjacent translucent patches show seams.
        for v, x0, x1 in _runs(values, xs):
            if v is None:
                extent = _lane_fraction(i, len(nodes), lane)
                ax.axvspan(x0, x1, *extent, color=UNKNOWN_COLOR, lw=0)
            elif v:
                ax.fill_between([x0, x1], base, base + 1, color=WRITABLE_COLOR, alpha=0.4, lw=0)
        # Unknown stretches are gaps in the line: nothing was measured there.
        ys = [base + 1.0 if v else (base if v is False else math.nan) for v in values]
        ax.step(xs, [*ys, ys[-1]], where="post", color="black", lw=1.3)
    ax.set_yticks([i * lane + 0.5 for i in range(len(nodes))], nodes, fontweight="bold")
    ax.set_ylim(-0.3, (len(nodes) - 1) * lane + 1.3)
    ax.set_ylabel("database nodes")
    ax.legend(
        handles=[
            Patch(color=WRITABLE_COLOR, alpha=0.4, label="writable"),
            Patch(facecolor="white", edgecolor="black", label="read-only"),
            Patch(color=UNKNOWN_COLOR, label="no answer"),
        ],
        loc="upper left",
        bbox_to_anchor=(1.005, 1.0),
        frameon=False,
    )


def _runs(
    values: Sequence[bool | None], xs: Sequence[float]
) -> list[tuple[bool | None, float, float]]:
    """(state, from, to) for each run of equal consecutive states; xs has one more edge."""
    runs: list[tuple[bool | None, float, float]] = []
    for j, v in enumerate(values):
        if runs and runs[-1][0] is v:
            runs[-1] = (v, runs[-1][1], xs[j + 1])
        else:
            runs.append((v, xs[j], xs[j + 1]))
    return runs


def _lane_fraction(i: int, n: int, lane: float) -> tuple[float, float]:
    """The vertical extent of lane i in axes fractions (axvspan takes no data y)."""
    bottom, top = -0.3, (n - 1) * lane + 1.3
    return ((i * lane - bottom) / (top - bottom), (i * lane + 1 - bottom) / (top - bottom))


def _plot_writable_count(ax: Axes, history: History, timeline: Sequence[WritableState]) -> None:
    if not timeline:
        ax.set_yticks([])
        return
    xs = [history.rel(s.t) for s in timeline] + [history.rel(history.span[1])]
    counts = [len(s.writable) for s in timeline]
    top = max(2, *counts)
    ax.axhspan(1.5, top + 0.5, color=FAULT_COLOR, alpha=0.08, lw=0)
    ax.step(xs, [*counts, counts[-1]], where="post", color="black", lw=1.5)
    ax.set_ylim(-0.3, top + 0.4)
    ax.set_yticks(range(top + 1))
    ax.set_ylabel("writable\nnodes")


def _mark_fault_and_events(ax: Axes, history: History) -> None:
    start, end = history.fault_window
    if history.has_fault:
        ax.axvspan(0.0, end - start, color=FAULT_COLOR, alpha=0.10, lw=0)
    ax.axvline(history.rel(history.settle_after), color="#555555", ls=":", lw=1.3)
    for e in history.events:
        if e.event not in ("fault-start", "fault-end"):
            ax.axvline(history.rel(e.t), color="#555555", ls="--", lw=0.8, alpha=0.7)


MAX_LABEL_ROWS = 4


def _label_events(ax: Axes, history: History, lo: float, hi: float) -> None:
    """Event names above the top panel, on as many rows as it takes not to overlap."""
    start, end = history.fault_window
    marks = [(history.rel(history.settle_after), "settle_after", "#333333")]
    if history.has_fault:
        marks += [(0.0, "fault-start", FAULT_COLOR), (end - start, "fault-end", FAULT_COLOR)]
    events = [e for e in history.events if e.event not in ("fault-start", "fault-end")]
    if len(events) <= MAX_LABELLED_EVENTS:
        marks += [(history.rel(e.t), e.event, "#333333") for e in events]
    # About 6 px per character at 8 pt, over an axis about 1100 px wide.
    per_char = (hi - lo) * 6.0 / 1100
    rows: list[float] = []
    for x, text, color in sorted(marks):
        if not lo <= x <= hi:
            continue
        row = next((r for r, free in enumerate(rows) if x >= free), len(rows))
        if row == len(rows) == MAX_LABEL_ROWS:
            row = min(range(len(rows)), key=lambda r: rows[r])  # the least crowded row
        elif row == len(rows):
            rows.append(0.0)
        rows[row] = x + (len(text) + 2) * per_char
        ax.annotate(
            text,
            xy=(x, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 3 + 11 * row),
            textcoords="offset points",
            fontsize=8,
            ha="left",
            va="bottom",
            color=color,
            arrowprops={"arrowstyle": "-", "color": "#999999", "lw": 0.6},
        )


def _kinds(history: History) -> list[str]:
    """The kinds present, in the format's order, then any unexpected one."""
    present = {op.kind for op in history.ops}
    return [k for k in KINDS if k in present] + sorted(present - set(KINDS))


def _color(kind: str) -> str:
    return KIND_COLORS.get(kind, OTHER_COLOR)


def _word(verdict: Verdict) -> str:
    return "PASS" if verdict.ok else "FAIL"


def _rel(seconds: float) -> str:
    return f"{seconds:+.1f} s"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return ", ".join(_value(v) for v in value) or "none"
    if value is None:
        return "none"
    return str(value)
