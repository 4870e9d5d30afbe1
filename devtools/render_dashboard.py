"""Render a Grafana dashboard's panels from a real Prometheus to a PNG, without Grafana.

    python -m devtools.render_dashboard --url http://127.0.0.1:9090 \\
        --dashboard infra/grafana/dashboards/overview.json --out docs/dashboard.png

Grafana cannot run on every machine (it is in none of the package registries this project
uses), yet a picture of the dashboards from real data is worth having in the README. This
draws each panel where its gridPos puts it: time series as line charts, stats as their last
value over a sparkline, tables as rows of labels. The same helpers expand the dashboards'
template variables for the test that runs every panel's PromQL.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from facestream.prometheus_api import query, query_range

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "infra" / "grafana" / "dashboards"

# Grafana's built-in interval variables, with values that suit a Prometheus scraping every
# few seconds (Grafana derives them from the scrape interval and the time range).
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")

# Grafana's dark theme, so that the picture reads like the real thing.
BACKGROUND, PANEL, BORDER = (17, 18, 23), (24, 27, 31), (44, 50, 53)
TEXT, MUTED, GRID = (204, 204, 220), (142, 142, 160), (40, 44, 48)
PALETTE = [
    (115, 191, 105),
    (242, 204, 12),
    (138, 184, 255),
    (255, 120, 10),
    (242, 73, 92),
    (87, 148, 242),
    (184, 119, 217),
    (112, 219, 237),
]
NAMED = {
    "green": PALETTE[0],
    "yellow": PALETTE[1],
    "blue": PALETTE[2],
    "orange": PALETTE[3],
    "red": PALETTE[4],
    "purple": PALETTE[6],
}
UNIT_W, UNIT_H, GAP = 1600 / 24, 34, 6  # Grafana's grid: 24 columns, 30 px rows + margin


# -- dashboards ------------------------------------------------------------------------------


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' collapsed children included, rows themselves excluded."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def variables_in(expr: str) -> set[str]:
    return {m.group(1) or m.group(2) for m in VARIABLE.finditer(expr)}


def expand(expr: str, values: Mapping[str, str] | None = None) -> str:
    """Substitute template variables: ``values`` first, then the built-in intervals, and
    ``.*`` (Grafana's "All" for the dashboards' regex-matched variables) for the rest."""
    known = {**BUILTINS, **(values or {})}
    return VARIABLE.sub(lambda m: known.get(m.group(1) or m.group(2), ".*"), expr)


# -- drawing ---------------------------------------------------------------------------------

Colour = tuple[int, int, int]
Series = tuple[str, list[tuple[float, float]], Colour]  # legend, [(t, value)], colour
Box = tuple[float, float, float, float]  # left, top, right, bottom


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def fmt(value: float, unit: str, decimals: int | None = None) -> str:
    """A value as Grafana would label it for the panel's unit (the units these use)."""
    if math.isnan(value):
        return "-"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if abs(value) < 1 else f"{value:.2f} s"
    if unit == "percentunit":
        return f"{value * 100:.{1 if decimals is None else decimals}f}%"
    suffix = unit.removeprefix("suffix:").strip() if unit.startswith("suffix:") else ""
    for scale, letter in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{letter} {suffix}".strip()
    if decimals is None:
        decimals = 0 if value == int(value) or abs(value) >= 100 else 2
    return f"{value:.{decimals}f} {suffix}".strip()


def legend(target: Mapping[str, Any], metric: Mapping[str, str]) -> str:
    template = target.get("legendFormat") or "__auto"
    if template == "__auto":
        return ", ".join(f"{k}={v}" for k, v in metric.items() if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), template)


def defaults(panel: Mapping[str, Any]) -> dict[str, Any]:
    return panel.get("fieldConfig", {}).get("defaults", {})


def series_color(panel: Mapping[str, Any], name: str, index: int) -> Colour:
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        if override["matcher"].get("options") == name:
            for prop in override["properties"]:
                if prop["id"] == "color":
                    return NAMED.get(prop["value"].get("fixedColor", ""), PALETTE[0])
    return PALETTE[index % len(PALETTE)]


def threshold_color(panel: Mapping[str, Any], value: float) -> Colour:
    chosen = "green"
    for step in defaults(panel).get("thresholds", {}).get("steps", []):
        if step["value"] is None or value >= step["value"]:
            chosen = step["color"]
    return NAMED.get(chosen, TEXT)


def fetch(
    url: str, panel: Mapping[str, Any], start: float, end: float, step: float, rate: str
) -> list[Series]:
    """The panel's series, in the dashboard's order."""
    out: list[Series] = []
    for target in panel.get("targets", []):
        expr = expand(target["expr"], {"__rate_interval": rate})
        for result in query_range(url, expr, start, end, step):
            name = legend(target, result["metric"])
            points = [(float(t), float(v)) for t, v in result["values"]]
            out.append((name, points, series_color(panel, name, len(out))))
    return out


def time_axis(draw: ImageDraw.ImageDraw, box: Box, start: float, end: float) -> None:
    left, _, right, bottom = box
    for frac, anchor in ((0, "la"), (0.5, "ma"), (1, "ra")):  # the ends stay inside the panel
        label = datetime.fromtimestamp(start + frac * (end - start)).strftime("%H:%M:%S")
        draw.text((left + frac * (right - left), bottom + 4), label, MUTED, font(11), anchor)


def draw_lines(
    draw: ImageDraw.ImageDraw,
    box: Box,
    series: list[Series],
    start: float,
    end: float,
    unit: str,
    axes: bool = True,
) -> None:
    left, top, right, bottom = box
    values = [v for _, pts, _ in series for _, v in pts if not math.isnan(v)]
    if not values:
        draw.text(((left + right) / 2, (top + bottom) / 2), "No data", TEXT, font(14), "mm")
        return
    low, high = min(0.0, min(values)), max(values)
    high = high * 1.1 if high > 0 else 1.0
    if axes:
        for frac in (0, 0.5, 1):
            y = bottom - frac * (bottom - top)
            draw.line([(left, y), (right, y)], GRID)
            draw.text((left - 4, y), fmt(low + frac * (high - low), unit), MUTED, font(11), "rm")
        time_axis(draw, box, start, end)

    def xy(t: float, v: float) -> tuple[float, float]:
        x = left + (t - start) / max(end - start, 1e-9) * (right - left)
        return x, bottom - (v - low) / (high - low) * (bottom - top)

    for _, points, colour in series:
        run: list[tuple[float, float]] = []
        for t, v in [*points, (math.nan, math.nan)]:  # the sentinel flushes the last run
            if not math.isnan(v):
                run.append(xy(t, v))
                continue
            if len(run) > 1:
                draw.line(run, colour, 2, joint="curve")
            elif run:  # a lone sample between gaps: a dot, as Grafana draws it
                (x, y) = run[0]
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], colour)
            run = []


def draw_heatmap(
    draw: ImageDraw.ImageDraw, box: Box, series: list[Series], start: float, end: float
) -> None:
    """Cumulative ``le`` buckets (legend = the bound) as cells: count per bucket and step."""
    left, top, right, bottom = box
    buckets = sorted((float(name), dict(points)) for name, points, _ in series)
    times = sorted({t for _, points in buckets for t in points})
    if not buckets or not times:
        draw.text(((left + right) / 2, (top + bottom) / 2), "No data", TEXT, font(14), "mm")
        return
    counts = [  # de-cumulate: each bucket's own share
        [max(cum.get(t, 0.0) - (buckets[i - 1][1].get(t, 0.0) if i else 0.0), 0.0) for t in times]
        for i, (_, cum) in enumerate(buckets)
    ]
    peak = max((c for row in counts for c in row if not math.isnan(c)), default=0.0) or 1.0
    step = times[1] - times[0] if len(times) > 1 else end - start  # one cell per step
    cell_w = (right - left) * step / max(end - start, 1e-9)
    cell_h = (bottom - top) / len(buckets)
    for i, row in enumerate(counts):
        y = bottom - (i + 1) * cell_h
        for t, count in zip(times, row, strict=True):
            if count > 0 and not math.isnan(count):
                heat = math.sqrt(count / peak)  # Grafana's exponential scale, exponent 0.5
                colour = (int(40 + 215 * heat), int(30 + 120 * heat), 20)
                x = left + (t - start) / max(end - start, 1e-9) * (right - left)
                draw.rectangle([x, y + 1, x + max(cell_w - 1, 1), y + cell_h - 1], colour)
        bound = buckets[i][0]
        label = "+Inf" if math.isinf(bound) else f"{bound:g}"
        draw.text((left - 4, y + cell_h / 2), label, MUTED, font(10), "rm")
    time_axis(draw, box, start, end)


def draw_legend(
    draw: ImageDraw.ImageDraw, x: float, y: float, right: float, series: list[Series]
) -> None:
    for name, _, colour in series:
        width = draw.textlength(name, font=font(11)) + 22
        if x + width > right:
            break  # Grafana scrolls the legend; a picture shows what fits
        draw.rectangle([x, y + 3, x + 10, y + 9], colour)
        draw.text((x + 14, y), name, TEXT, font(11))
        x += width


def draw_table(
    draw: ImageDraw.ImageDraw, box: Box, url: str, panel: Mapping[str, Any], at: float
) -> None:
    """An instant query's labels as rows, with the panel's `organize` transformation."""
    organize: dict[str, Any] = next(
        (t["options"] for t in panel.get("transformations", []) if t["id"] == "organize"), {}
    )
    order, names = organize.get("indexByName", {}), organize.get("renameByName", {})
    rows = [r["metric"] for t in panel["targets"] for r in query(url, expand(t["expr"]), at)]
    columns = sorted({k for r in rows for k in r} - {"__name__"}, key=lambda k: order.get(k, 99))
    left, top, right, _ = box
    cells = [[names.get(c, c), *(r.get(c, "") for r in rows)] for c in columns]
    # Columns as wide as their longest text, scaled to the panel (a model id needs room).
    wanted = [max(draw.textlength(text, font=font(12)) for text in col) + 12 for col in cells]
    scale = min(1.0, (right - left) / max(sum(wanted), 1))
    x = left
    for col, width in zip(cells, wanted, strict=True):
        width *= scale
        draw.text((x, top), col[0], MUTED, font(11))
        for i, cell in enumerate(col[1:]):
            while len(cell) > 1 and draw.textlength(cell, font=font(12)) > width - 6:
                cell = cell[:-2] + "…"  # clip, as a narrow Grafana column does
            draw.text((x, top + 20 + 20 * i), cell, TEXT, font(12))
        x += width


def draw_panel(
    image: Image.Image,
    url: str,
    panel: Mapping[str, Any],
    start: float,
    end: float,
    step: float,
    rate: str,
) -> None:
    draw = ImageDraw.Draw(image)
    pos = panel["gridPos"]
    left, top = pos["x"] * UNIT_W + GAP, 48 + pos["y"] * UNIT_H + GAP
    right, bottom = left + pos["w"] * UNIT_W - 2 * GAP, top + pos["h"] * UNIT_H - 2 * GAP
    if panel["type"] == "row":
        draw.text((left, top), panel["title"], TEXT, font(15))
        return
    draw.rounded_rectangle([left, top, right, bottom], 4, PANEL, BORDER)
    draw.text((left + 10, top + 8), panel["title"], TEXT, font(13))
    inner = (left + 10, top + 30, right - 10, bottom - 10)
    unit, decimals = defaults(panel).get("unit", "short"), defaults(panel).get("decimals")

    if panel["type"] == "table":
        draw_table(draw, inner, url, panel, end)
        return
    series = fetch(url, panel, start, end, step, rate)
    if panel["type"] == "stat":
        last = next(
            (v for _, pts, _ in series for _, v in reversed(pts) if not math.isnan(v)), math.nan
        )
        colour = threshold_color(panel, last) if not math.isnan(last) else TEXT
        dim = (colour[0] // 3, colour[1] // 3, colour[2] // 3)  # a sparkline behind the value
        draw_lines(draw, inner, [(n, p, dim) for n, p, _ in series], start, end, unit, False)
        centre = ((left + right) / 2, (inner[1] + bottom) / 2)
        draw.text(centre, fmt(last, unit, decimals), colour, font(28), "mm")
        return
    plot = (inner[0] + 58, inner[1] + 4, inner[2], inner[3] - 34)
    if panel["type"] == "heatmap":
        draw_heatmap(draw, plot, series, start, end)
        return
    draw_lines(draw, plot, series, start, end, unit)
    draw_legend(draw, inner[0], inner[3] - 12, inner[2], series)


def render(
    url: str,
    dashboard: Mapping[str, Any],
    out: Path,
    minutes: float,
    end: float | None = None,
    rate_interval: str = "30s",
) -> Path:
    """Draw every panel of ``dashboard`` over the last ``minutes`` (up to ``end``) to ``out``.

    ``rate_interval`` stands for Grafana's $__rate_interval: Grafana makes it at least four
    scrape intervals; a little more smooths bursts of traffic as a person would look at them.
    """
    end = end or time.time()
    start = end - minutes * 60
    step = max(1.0, minutes * 60 / 300)  # ~300 points per series, like a Grafana panel
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    image = Image.new("RGB", (int(24 * UNIT_W), int(48 + height * UNIT_H + GAP)), BACKGROUND)
    draw = ImageDraw.Draw(image)
    span = f"{datetime.fromtimestamp(start):%Y-%m-%d %H:%M} - {datetime.fromtimestamp(end):%H:%M}"
    draw.text((GAP + 4, 14), dashboard["title"], TEXT, font(20))
    draw.text((24 * UNIT_W - GAP - 4, 18), span, MUTED, font(13), "ra")
    for panel in dashboard["panels"]:
        draw_panel(image, url, panel, start, end, step, rate_interval)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.render_dashboard", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--url", default="http://127.0.0.1:9090", help="Prometheus")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARDS / "overview.json")
    parser.add_argument("--out", type=Path, default=Path("dashboard.png"))
    parser.add_argument("--minutes", type=float, default=15.0, help="time range, up to now")
    parser.add_argument("--rate-interval", default="30s", help="for $__rate_interval")
    args = parser.parse_args(argv)
    board = load(args.dashboard)
    print(render(args.url, board, args.out, args.minutes, rate_interval=args.rate_interval))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
