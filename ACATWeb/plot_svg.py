"""Class probability against optimisation step as a small, self-contained SVG.

For each target class t, the classifier's probability of t while the counterfactual towards t is
optimised (report.json's ``trajectory``; ACAT paper Sec. 3.1): the curve shows how far the search
moved the model's belief. The Slicer module plots every (target, class) pair in a plot view
(ACATSlicerLib.plots); a page has room for these few lines, drawn with the same colours.
"""

from __future__ import annotations

from html import escape

from ACATSlicerLib.plots import PALETTE


def _colour(n: int) -> str:
    r, g, b = (round(255 * c) for c in PALETTE[n % len(PALETTE)])
    return f"#{r:02x}{g:02x}{b:02x}"


def _probability(row: dict, target: str, healthy: str | None) -> float:
    """p(target) in one step's {class: probability}; a target that is no class ("abnormal": any class but
    the healthy one, `--output decision`) is 1 - p(healthy)."""
    if target in row:
        return float(row[target])
    if healthy is not None and healthy in row:
        return 1.0 - float(row[healthy])
    return float("nan")


def trajectory_svg(trajectory: dict, width: int = 320, height: int = 180, *, healthy: str | None = None) -> str:
    """``trajectory``: target label -> list over steps of {class label: probability}; ``healthy``: the
    healthy class when a target is "abnormal". Returns "" when there is nothing to plot. Axes: step (x),
    probability 0..1 (y); one polyline and legend entry per target."""
    series = {t: [_probability(row, t, healthy) for row in rows] for t, rows in trajectory.items() if rows}
    series = {t: ys for t, ys in series.items() if any(y == y for y in ys)}
    if not series:
        return ""
    left, right, top, bottom = 34, 8, 8, 30
    legend = 14 * len(series)
    plot_w, plot_h = width - left - right, height - top - bottom
    steps = max(len(ys) for ys in series.values())
    x = lambda n: left + plot_w * (n / max(steps - 1, 1))  # noqa: E731
    y = lambda p: top + plot_h * (1.0 - min(max(p, 0.0), 1.0))  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + legend}" '
             f'viewBox="0 0 {width} {height + legend}" font-family="sans-serif" font-size="10" role="img" '
             'aria-label="class probability per optimisation step">',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>']
    for p in (0.0, 0.5, 1.0):
        parts.append(f'<line x1="{left}" y1="{y(p):.1f}" x2="{left + plot_w}" y2="{y(p):.1f}" stroke="#ccc" '
                     'stroke-dasharray="2,2"/>')
        parts.append(f'<text x="{left - 4}" y="{y(p) + 3:.1f}" text-anchor="end">{p:.1f}</text>')
    parts.append(f'<text x="{left}" y="{height - 16}" text-anchor="middle">0</text>')
    parts.append(f'<text x="{left + plot_w}" y="{height - 16}" text-anchor="middle">{steps - 1}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle">optimisation step</text>')
    for n, (target, ys) in enumerate(series.items()):
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(ys) if v == v)
        colour = _colour(n)
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        ly = height + 10 + 14 * n
        parts.append(f'<line x1="{left}" y1="{ly - 3}" x2="{left + 16}" y2="{ly - 3}" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{left + 20}" y="{ly}">p({escape(target)}) towards {escape(target)}</text>')
    parts.append("</svg>")
    return "".join(parts)
