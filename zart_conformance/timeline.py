"""A run's history as a picture: one lane per worker, task ownership bars, faults, lease losses.

Plain SVG, written here: the picture is rectangles, lines and labels, and a plotting library
would add numpy and a renderer to every installation of the kit for that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from .eventlog import History
from .scenario import LISTENER

# How an ownership ended, by the event that ended it, and its colour.
ENDINGS = {
    "completed": "#3a9d5d",
    "failed": "#e08a1e",
    "released": "#4a78c2",
    "suspended": "#8a63c7",
    "cancelled": "#c25a9e",
    "lease_lost": "#d2413a",
    "unfinished": "#9a9a9a",
}
WINDOW_CLOSERS = {
    "stop": {"cont"},
    "down": {"up"},
    **{a: {"heal"} for a in ("partition", "latency", "reset", "slow_close", "bandwidth")},
}
POINT_FAULTS = {"kill", "term", "start", "schedule", "event", "cancel"}
LABEL_W, PLOT_W, ROW_H, LANE_GAP, TOP, MAX_ROWS = 90, 900, 6, 10, 40, 30


@dataclass
class Bar:
    task: str
    start: float
    end: float
    ending: str


@dataclass
class Lane:
    name: str
    bars: list[Bar] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    windows: list[tuple[float, float, str]] = field(default_factory=list)
    points: list[tuple[float, str]] = field(default_factory=list)

    def rows(self) -> list[list[Bar]]:
        """Pack overlapping bars into rows, first fit, so concurrency shows as height."""
        rows: list[list[Bar]] = []
        for bar in sorted(self.bars, key=lambda b: b.start):
            row = next((r for r in rows if r[-1].end <= bar.start), None)
            if row is None:
                row = [] if len(rows) < MAX_ROWS else rows[-1]
                if not row:
                    rows.append(row)
            row.append(bar)
        return rows or [[]]


@dataclass
class Timeline:
    start: float
    end: float
    lanes: dict[str, Lane]


def build(history: History) -> Timeline:
    events = history.events
    start = events[0]["t"] if events else 0.0
    end = events[-1]["t"] if events else 1.0
    lanes: dict[str, Lane] = {}

    def lane(name: str) -> Lane:
        return lanes.setdefault(name.removesuffix(LISTENER), Lane(name.removesuffix(LISTENER)))

    open_bars: dict[tuple[str, str, str], Bar] = {}
    open_windows: dict[tuple[str, str], tuple[float, str]] = {}
    for event in events:
        kind, src, t = event["kind"], event["src"], event["t"]
        if src != "runner":
            lane(src)
        if kind == "handler_start":
            bar = Bar(event["task"], t, end, "unfinished")
            open_bars[(src, event["task"], event["token"])] = bar
            lane(src).bars.append(bar)
        elif kind in ENDINGS and "token" in event:
            bar_or_none = open_bars.pop((src, event["task"], event["token"]), None)
            if bar_or_none is not None:
                bar_or_none.end, bar_or_none.ending = t, kind
            if kind == "lease_lost":
                lane(src).losses.append(t)
        elif kind == "fault":
            _fault(event, lane, open_windows)
        if (kind == "fault" and event["action"] == "kill") or kind == "worker_exit":
            # A dead worker holds nothing any more, whatever its leases say.
            for key in [k for k in open_bars if k[0] == event["target"]]:
                open_bars.pop(key).end = t
    for (target, action), (began, label) in open_windows.items():
        lane(target).windows.append((began, end, f"{label} ({action}, never healed)"))
    return Timeline(start, end, dict(sorted(lanes.items())))


def _fault(
    event: dict[str, Any],
    lane: Callable[[str], Lane],
    open_windows: dict[tuple[str, str], tuple[float, str]],
) -> None:
    """A window opens at stop/partition/down and closes at cont/heal/up; the rest are points."""
    action, target, t = event["action"], event["target"], event["t"]
    if action in WINDOW_CLOSERS:
        open_windows[(target, action)] = (t, event["fault"])
        return
    for key in [k for k in open_windows if k[0] == target and action in WINDOW_CLOSERS[k[1]]]:
        began, label = open_windows.pop(key)
        lane(target).windows.append((began, t, f"{label} ({key[1]})"))
    if action in POINT_FAULTS:
        lane(target).points.append((t, f"{event['fault']} ({action})"))


def render(timeline: Timeline, title: str) -> str:
    span = max(timeline.end - timeline.start, 1e-6)

    def x(t: float) -> float:
        return LABEL_W + (t - timeline.start) / span * PLOT_W

    parts: list[str] = []
    y = TOP
    for lane in timeline.lanes.values():
        rows = lane.rows()
        height = max(len(rows) * ROW_H, 3 * ROW_H)
        parts.append(
            f'<text x="4" y="{y + height / 2 + 4:.1f}" class="lane">{escape(lane.name)}</text>'
        )
        parts.append(
            f'<line x1="{LABEL_W}" y1="{y + height + LANE_GAP / 2:.1f}" x2="{LABEL_W + PLOT_W}" '
            f'y2="{y + height + LANE_GAP / 2:.1f}" class="sep"/>'
        )
        for began, ended, label in lane.windows:
            parts.append(
                f'<rect x="{x(began):.1f}" y="{y - 2}" width="{max(x(ended) - x(began), 1):.1f}" '
                f'height="{height + 4}" class="window"><title>{escape(label)}</title></rect>'
            )
            parts.append(
                f'<text x="{x(began) + 2:.1f}" y="{y - 5}" class="small">{escape(label)}</text>'
            )
        for index, row in enumerate(rows):
            for bar in row:
                parts.append(
                    f'<rect x="{x(bar.start):.1f}" y="{y + index * ROW_H}" '
                    f'width="{max(x(bar.end) - x(bar.start), 1.5):.1f}" height="{ROW_H - 1}" '
                    f'fill="{ENDINGS[bar.ending]}"><title>{escape(bar.task)}: {bar.ending} '
                    f"({bar.end - bar.start:.2f}s)</title></rect>"
                )
        for t in lane.losses:
            parts.append(
                f'<text x="{x(t):.1f}" y="{y + height / 2 + 4:.1f}" class="loss">x'
                "<title>lease lost</title></text>"
            )
        for t, label in lane.points:
            parts.append(
                f'<line x1="{x(t):.1f}" y1="{y - 4}" x2="{x(t):.1f}" y2="{y + height + 4}" '
                f'class="point"><title>{escape(label)}</title></line>'
            )
            parts.append(
                f'<text x="{x(t) + 2:.1f}" y="{y - 5}" class="small">{escape(label)}</text>'
            )
        y += height + LANE_GAP + 12
    axis = _axis(timeline, x, y)
    legend = _legend(y + 30)
    height = y + 60
    width = LABEL_W + PLOT_W + 20
    style = (
        "<style>text{font-family:sans-serif;font-size:12px}.lane{font-weight:bold}"
        ".small{font-size:9px;fill:#444}.loss{fill:#d2413a;font-weight:bold;font-size:13px}"
        ".window{fill:#f6c343;fill-opacity:.35}.point{stroke:#222;stroke-dasharray:3 2}"
        ".sep{stroke:#ddd}.axis{stroke:#666}</style>"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{style}'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="4" y="18" class="lane">{escape(title)}</text>'
        + "".join(parts)
        + axis
        + legend
        + "</svg>\n"
    )


def _axis(timeline: Timeline, x: Any, y: float) -> str:
    span = timeline.end - timeline.start
    step = next(s for s in (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 1e9) if span / s <= 12)
    parts = [f'<line x1="{LABEL_W}" y1="{y}" x2="{LABEL_W + PLOT_W}" y2="{y}" class="axis"/>']
    tick = 0.0
    while tick <= span:
        px = x(timeline.start + tick)
        parts.append(f'<line x1="{px:.1f}" y1="{y}" x2="{px:.1f}" y2="{y + 4}" class="axis"/>')
        parts.append(f'<text x="{px - 6:.1f}" y="{y + 16}" class="small">{tick:g}s</text>')
        tick += step
    return "".join(parts)


def _legend(y: float) -> str:
    parts = []
    px = float(LABEL_W)
    labels = {"lease_lost": "lease lost (bar)", "unfinished": "unfinished (worker died)"}
    for name, colour in [*ENDINGS.items(), ("fault window", "#f6c343")]:
        name = labels.get(name, name)
        parts.append(f'<rect x="{px}" y="{y - 9}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{px + 13}" y="{y}" class="small">{name}</text>')
        px += 13 + 7 * len(name) + 12
    parts.append(f'<text x="{px}" y="{y}" class="loss">x</text>')
    parts.append(f'<text x="{px + 12}" y="{y}" class="small">when the worker saw the loss</text>')
    return "".join(parts)


def write_timeline(run_dir: Path, out: Path, title: str) -> Path:
    """Render the run in ``run_dir`` (its events/ directory) to ``out``."""
    timeline = build(History.load(run_dir / "events"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(timeline, title))
    return out
