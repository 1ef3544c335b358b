"""The bill's chart: USD paid per day, a bar per day stacked by deployment, as a PNG.

Drawn with matplotlib (the ``chart`` extra) on its Agg canvas directly: no pyplot, no global
backend switched in the caller's process, no display needed. Without matplotlib there is no chart
and the bill says how to get one (:data:`CHART_HINT`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

__all__ = ["CHART_HINT", "MAX_SERIES", "draw_chart"]

CHART_HINT = (
    "No chart: matplotlib is not installed. Install the chart extra "
    "(pip install 'prefect-gpt-image[chart]') for a PNG of the paid amounts per day"
)
MAX_SERIES = 8
"""Deployments drawn each in their own colour; the others are summed as "other"."""


def draw_chart(
    days: Sequence[tuple[str, Mapping[str, float]]], series: Sequence[tuple[str, str]], title: str
) -> bytes | None:
    """The PNG of the USD paid on each of ``days`` (``(YYYY-MM-DD, {deployment key: paid})``), a
    bar per day stacked by the deployments of ``series`` (``(key, name)``, most paid first), or
    None without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    own = list(series) if len(series) <= MAX_SERIES else list(series[: MAX_SERIES - 1])
    others = len(series) > MAX_SERIES
    figure = Figure(figsize=(9, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    bottom = [0.0] * len(days)
    bars = [(name, [split.get(key, 0.0) for _, split in days]) for key, name in own]
    if others:
        drawn = {key for key, _ in own}
        bars.append(("other", [sum(v for k, v in split.items() if k not in drawn) for _, split in days]))
    for name, values in bars:
        axes.bar(range(len(days)), values, bottom=bottom, label=_plain(name))
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    step = max(1, len(days) // 10)
    axes.set_xticks(range(0, len(days), step), [days[i][0][5:] for i in range(0, len(days), step)])
    axes.set_ylabel("USD paid")
    axes.set_title(_plain(title))
    if bars:
        axes.legend(fontsize="small", loc="upper left")
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def _plain(text: str) -> str:
    """``text`` drawn as it reads: matplotlib would take ``$...$`` for math and hide a legend
    label starting with ``_``."""
    text = text.replace("$", r"\$")
    return " " + text if text.startswith("_") else text
