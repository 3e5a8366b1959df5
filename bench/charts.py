"""Line charts as self-contained SVG (no plotting library): the soak report's curves."""

from __future__ import annotations

from html import escape

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]


def line_chart(title: str, y_label: str, series: dict[str, list[tuple[float, float]]], *, x_label: str = "t (s)",
               width: int = 720, height: int = 300, y_from_zero: bool = True) -> str:
    """One chart, one polyline per series, axes with five ticks each, a legend under the plot."""
    left, right, top, bottom = 64, 16, 28, 48 + 16 * ((len(series) + 3) // 4)
    pw, ph = width - left - right, height - top - bottom
    points = [p for pts in series.values() for p in pts]
    if not points:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="40"><text x="8" y="24">' \
               f'{escape(title)}: no data</text></svg>\n'
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0 = 0.0 if y_from_zero else min(p[1] for p in points)
    y1 = max(p[1] for p in points)
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 * 1.05 if y1 > y0 else y0 + 1

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif"'
           ' font-size="11">', '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
           f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#444"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#444"/>']
    for i in range(5):
        xv, yv = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{sx(xv):.1f}" y="{top + ph + 14}" text-anchor="middle">{xv:.0f}</text>')
        out.append(f'<line x1="{left}" y1="{sy(yv):.1f}" x2="{left + pw}" y2="{sy(yv):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.3g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{top + ph + 28}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(f'<text x="12" y="{top + ph / 2}" transform="rotate(-90 12 {top + ph / 2})" text-anchor="middle">'
               f'{escape(y_label)}</text>')
    for n, (name, pts) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
        lx, ly = left + (n % 4) * (pw / 4), top + ph + 44 + 16 * (n // 4)
        out.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 18}" y2="{ly - 4}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{lx + 22}" y="{ly}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def soak_charts(samples: list[dict[str, object]]) -> dict[str, str]:
    """rss.svg (MB per process), latency.svg (p50/p95 per window), open-workflows.svg."""
    rows = [s for s in samples if s.get("in_window", 1)]
    names = list(rows[0]["rss_mb"]) if rows else []  # type: ignore[call-overload]
    rss = {n: [(float(s["t_s"]), float(s["rss_mb"][n])) for s in rows if n in s["rss_mb"]]  # type: ignore
           for n in names}
    lat = {p: [(float(s["t_s"]), float(s[f"{p}_ms"])) for s in rows] for p in ("p50", "p95")}  # type: ignore
    wf = {"running": [(float(s["t_s"]), float(s["open_workflows"])) for s in rows  # type: ignore[arg-type]
                      if s.get("open_workflows") is not None]}
    return {"rss.svg": line_chart("RSS per process", "MB", rss),
            "latency.svg": line_chart("send → delivered latency per window", "ms", lat),
            "open-workflows.svg": line_chart("open delivery workflows", "workflows", wf)}
