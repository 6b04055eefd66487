"""Self-contained HTML reports: headings, text, tables and matplotlib figures in one file.

Figures are embedded as base64 PNG ``data:`` URIs, so a report is a single file that can be
mailed or archived. Text is escaped by jinja2. Every job's report is built with :class:`Report`.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medimg import __version__
from medimg.writers import write_text

__all__ = ["Report", "array_to_data_uri", "figure_to_data_uri", "new_figure"]

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { border-bottom: 2px solid #345; padding-bottom: .2em; }
h2 { margin-top: 1.6em; color: #345; }
table { border-collapse: collapse; margin: .6em 0; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #eef2f6; } td.text, th.text { text-align: left; }
figure { margin: 1em 0; } figcaption { font-size: 90%; color: #555; }
.meta { color: #666; font-size: 85%; } .warn { color: #a40; }
</style></head><body>
<h1>{{ title }}</h1>
{% if subtitle %}<p>{{ subtitle }}</p>{% endif %}
{% for block in blocks %}
{% if block.kind == "heading" %}<h2>{{ block.text }}</h2>
{% elif block.kind == "text" %}<p{% if block.css %} class="{{ block.css }}"{% endif %}>{{ block.text }}</p>
{% elif block.kind == "table" %}
{% if block.caption %}<p><b>{{ block.caption }}</b></p>{% endif %}
<table><tr>{% for c in block.columns %}<th class="{{ block.align[loop.index0] }}">{{ c }}</th>{% endfor %}</tr>
{% for row in block.rows %}<tr>{% for cell in row %}
<td class="{{ block.align[loop.index0] }}">{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% elif block.kind == "gallery" %}
<div style="display:flex;flex-wrap:wrap;gap:8px">{% for uri, text in block.rows %}
<figure style="margin:0;width:{{ block.text }}px"><img src="{{ uri }}" alt="{{ text }}" style="width:100%">
<figcaption>{{ text }}</figcaption></figure>{% endfor %}</div>
{% elif block.kind == "figure" %}
<figure><img src="{{ block.uri }}" alt="{{ block.text }}" style="max-width:100%">
<figcaption>{{ block.text }}</figcaption></figure>
{% endif %}
{% endfor %}
<p class="meta">medimg {{ version }}, {{ created }}</p>
</body></html>
"""


def new_figure(width: float = 9.0, height: float = 3.2, ncols: int = 1, nrows: int = 1) -> tuple[Any, Any]:
    """A matplotlib figure on the non-interactive Agg backend: ``(figure, axes)``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False)
    return fig, axes


def figure_to_data_uri(fig: Any, dpi: int = 96) -> str:
    """Render a matplotlib figure to a ``data:image/png;base64,...`` URI and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def array_to_data_uri(array: Any, width: int = 160) -> str:
    """A grey or RGB array -> PNG ``data:`` URI, downscaled to ``width`` pixels wide."""
    import numpy as np
    from PIL import Image

    data = np.asarray(array)
    if data.dtype != np.uint8:
        data = (np.clip(np.nan_to_num(data.astype(float)), 0, 1) * 255).astype(np.uint8)
    picture = Image.fromarray(data)
    if picture.width > width:
        height = max(1, round(picture.height * width / picture.width))
        picture = picture.resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


@dataclass
class _Block:
    kind: str
    text: str = ""
    css: str = ""
    columns: Sequence[str] = ()
    rows: Sequence[Sequence[str]] = ()
    align: Sequence[str] = ()
    caption: str = ""
    uri: str = ""


@dataclass
class Report:
    """An HTML report assembled block by block.

    Example:
        >>> report = Report("QU-BraTS scores")
        >>> report.heading("Summary")
        >>> report.table([{"region": "WT", "mean": 0.9}], ["region", "mean"])
        >>> html_text = report.to_html()
    """

    title: str
    subtitle: str = ""
    blocks: list[_Block] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(_Block("heading", text=text))

    def text(self, text: str, *, warning: bool = False) -> None:
        self.blocks.append(_Block("text", text=text, css="warn" if warning else ""))

    def table(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], caption: str = "") -> None:
        """A table of dict rows; floats are shown with 4 decimals, text left-aligned."""
        cells = [[_cell(row.get(c)) for c in columns] for row in rows]
        align = [
            "" if rows and all(isinstance(row.get(c), (int, float)) or row.get(c) is None for row in rows) else "text"
            for c in columns
        ]
        self.blocks.append(_Block("table", columns=list(columns), rows=cells, align=align, caption=caption))

    def figure(self, fig: Any, caption: str) -> None:
        """Embed a matplotlib figure (closed afterwards)."""
        self.blocks.append(_Block("figure", text=caption, uri=figure_to_data_uri(fig)))

    def gallery(self, pictures: Sequence[tuple[Any, str]], *, width: int = 160) -> None:
        """Thumbnails: (image, caption) pairs; an image is a (rows, cols[, 3]) array in [0, 255]
        or [0, 1], shown ``width`` pixels wide."""
        rows = [(array_to_data_uri(a, width), c) for a, c in pictures]
        self.blocks.append(_Block("gallery", text=str(width), rows=rows))

    def to_html(self) -> str:
        from jinja2 import Environment, select_autoescape

        env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
        created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return env.from_string(_TEMPLATE).render(
            title=self.title, subtitle=self.subtitle, blocks=self.blocks, version=__version__, created=created
        )

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the report atomically; returns the path."""
        return write_text(path, self.to_html())
