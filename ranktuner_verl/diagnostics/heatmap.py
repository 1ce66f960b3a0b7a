"""Token heat maps: the response text of a few examples, every token coloured by a column of the token table.

Columns: a method's weight (``w:<label>``) or a statistic of ``table.STATISTICS``: ``S``/``S_exact`` (RankTuner's
relative scale, diverging around 1), ``rank`` and ``expected_rank`` on a log scale, ``p``, ``entropy_bits``, ... .
Every panel has its own colour scale and colour bar (a constant column is drawn in one colour, its value named).
Injected noise tokens are outlined in red. Output: a self-contained HTML page (one ``<span class="tok">`` per
response token, details on hover) and a PNG, panels in a grid of at most ``PANELS_PER_ROW`` per row.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colors  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from .table import STATISTICS, WEIGHT, constant, method_labels, weight_column  # noqa: E402

NOISE_COLOR = "#d62728"
FONT_SIZE = 8.0  # points
CHAR_WIDTH = 0.602 * FONT_SIZE / 72  # inches: the advance of DejaVu Sans Mono
LINE_HEIGHT = 1.5 * FONT_SIZE / 72  # inches
CHARS_PER_PANEL = 56  # PNG panel width in characters when no image width is given
PANELS_PER_ROW = 3


@dataclass
class Scale:
    """How one panel maps values to colours; ``constant`` set when the panel holds one value."""

    label: str
    norm: colors.Normalize
    cmap: colors.Colormap
    constant: float | None = None

    def rgba(self, values) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        if self.constant is not None:
            return np.repeat(np.asarray(self.cmap(0.5))[None], len(values), axis=0)
        return self.cmap(self.norm(values))

    def describe(self) -> str:
        if self.constant is not None:
            return f"constant {self.constant:.3g}"
        return f"{self.norm.vmin:.3g} to {self.norm.vmax:.3g}" + (" (log)" if isinstance(self.norm, colors.LogNorm)
                                                                 else "")


def panel_columns(available: list[str], color_by: list[str]) -> list[str]:
    """The panels: ``weight`` expands to every method's weight column ``w:<label>`` of ``available``."""
    weights = [c for c in available if c.startswith(WEIGHT)]
    columns = []
    for name in color_by:
        if name == "weight":
            columns += weights
        elif name in STATISTICS or name in weights:
            columns.append(name)
        else:
            valid = ["weight"] + list(STATISTICS) + weights
            raise ValueError(f"Cannot colour tokens by {name!r}; choose from {', '.join(valid)}.")
    if not columns:
        raise ValueError("Nothing to colour by: the token table has no weight columns; name a statistic instead.")
    return columns


def scale_of(column: str, values) -> Scale:
    """The colour scale of one panel, from its own values only."""
    values = np.asarray(values, dtype=float)
    label = f"weight, {column[len(WEIGHT):]}" if column.startswith(WEIGHT) else STATISTICS[column]
    if constant(values):
        return Scale(label, colors.Normalize(0, 1), plt.get_cmap("YlOrRd"), float(values[0]) if values.size else 0.0)
    low, high = float(values.min()), float(values.max())
    if column in ("S", "S_exact"):
        # S scales a weight: symmetric in ratio around 1 (S and 1/S equally far); a few outliers saturate.
        top = max(float(np.exp(np.percentile(np.abs(np.log(np.clip(values, 1e-12, None))), 98))), 1.05)
        return Scale(label, colors.TwoSlopeNorm(1.0, 1 / top, top), plt.get_cmap("RdBu_r"))
    if column in ("rank", "expected_rank"):
        return Scale(label, colors.LogNorm(1, max(high, 2)), plt.get_cmap("YlGnBu"))
    if column == "p":
        return Scale(label, colors.Normalize(0, 1), plt.get_cmap("YlOrRd"))
    cmap = "YlOrRd" if column.startswith(WEIGHT) else "PuBu"
    return Scale(label, colors.Normalize(low, high), plt.get_cmap(cmap))


def scales(table: pd.DataFrame, columns: list[str]) -> dict[str, Scale]:
    """One colour scale per panel, each from its own column's values."""
    return {column: scale_of(column, table[column]) for column in columns}


def pick_examples(table: pd.DataFrame, examples: list[int] | None, count: int) -> list[int]:
    """The examples to draw: the given ids (checked), else the first ``count`` ones, noisy ones first."""
    present = list(dict.fromkeys(table["example"]))
    if examples is not None:
        missing = sorted(set(examples) - set(present))
        if missing:
            raise ValueError(f"Example(s) {missing} are not in the token table (it holds {len(present)} examples).")
        return list(examples)
    noisy = set(table.loc[table["is_noise"], "example"])
    return sorted(present, key=lambda e: e not in noisy)[:count]


def _text_color(rgba) -> str:
    luminance = 0.2126 * rgba[0] + 0.7152 * rgba[1] + 0.0722 * rgba[2]
    return "#000000" if luminance > 0.5 else "#ffffff"


def _display(token: str) -> str:
    """One line of visible text: newline as ↵, tab as →, other control characters as \\xNN."""
    text = token.replace("\n", "↵").replace("\t", "→")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _tooltip(row: pd.Series, labels: list[str]) -> str:
    weights = "  ".join(f"w[{label}]={row[weight_column(label)]:.3g}" for label in labels)
    return (f"{row['token']!r}  p={row['p']:.3g}  R={row['rank']:.0f}  E[R]={row['expected_rank']:.3g}  "
            f"H={row['entropy_bits']:.3g} bits  S={row['S']:.3g}  {weights}" + ("  INJECTED NOISE" if row["is_noise"] else ""))


def _gradient(scale: Scale) -> str:
    stops = ", ".join(colors.to_hex(scale.cmap(x)) for x in np.linspace(0, 1, 11))
    return f"linear-gradient(to right, {stops})"


HTML_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
.example { margin-bottom: 2em; }
.panels { display: grid; grid-template-columns: repeat(PANELS_PER_ROW, minmax(0, 1fr)); gap: 1em; }
.panel { border: 1px solid #ccc; padding: 0.5em; }
.text { font-family: monospace; white-space: pre-wrap; line-height: 1.7; }
.tok { border-radius: 2px; }
.tok.noise, .noise-key { outline: 2px solid NOISE_COLOR; }
.legend { display: flex; gap: 2em; flex-wrap: wrap; margin-bottom: 1em; font-size: 0.85em; }
.bar { width: 220px; height: 12px; border: 1px solid #888; }
""".replace("NOISE_COLOR", NOISE_COLOR).replace("PANELS_PER_ROW", str(PANELS_PER_ROW))


def write_heatmap_html(table: pd.DataFrame, path: str | Path, color_by: list[str] = ("weight",),
                       examples: list[int] | None = None, count: int = 4, title: str = "Token heat map") -> Path:
    """A self-contained HTML page: per example, one panel per column, one ``<span class="tok">`` per token."""
    columns = panel_columns(list(table.columns), list(color_by))
    chosen = pick_examples(table, examples, count)
    scale = scales(table[table["example"].isin(chosen)], columns)
    labels = method_labels(table)
    legend = "".join(
        f'<div><div>{html.escape(s.label)}</div><div class="bar" style="background:{_gradient(s)}"></div>'
        f"<div>{html.escape(s.describe())}</div></div>" for s in scale.values())
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{HTML_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f'<div class="legend">{legend}<div>injected noise tokens: <span class="noise-key">outlined</span>'
             "</div></div>"]
    for example in chosen:
        rows = table[table["example"] == example]
        parts.append(f'<div class="example" data-example="{example}"><h2>Example {example}</h2><div class="panels">')
        for column in columns:
            fills = scale[column].rgba(rows[column])
            spans = []
            for (_, row), fill in zip(rows.iterrows(), fills):
                css = f"background:{colors.to_hex(fill)};color:{_text_color(fill)}"
                tip = html.escape(_tooltip(row, labels), quote=True)
                noise = " noise" if row["is_noise"] else ""
                text = html.escape(_display(row["token"]).replace("↵", "↵\n"))
                spans.append(f'<span class="tok{noise}" style="{css}" title="{tip}">{text}</span>')
            parts.append(f'<div class="panel" data-column="{html.escape(column)}">'
                         f'<h3>{html.escape(scale[column].label)} ({html.escape(scale[column].describe())})</h3>'
                         f'<div class="text">{"".join(spans)}</div></div>')
        parts.append("</div></div>")
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts), encoding="utf-8")
    return path


def wrap_tokens(tokens: list[str], width: int) -> list[tuple[int, int, str]]:
    """(line, column, text) of every token on a grid ``width`` characters wide; a newline token ends its line."""
    placed, line, col = [], 0, 0
    for token in tokens:
        text = _display(token)[:width] or " "
        if col and col + len(text) > width:
            line, col = line + 1, 0
        placed.append((line, col, text))
        col += len(text)
        if "\n" in token:
            line, col = line + 1, 0
    return placed


def grid_shape(n_panels: int) -> tuple[int, int]:
    """(rows, columns) of the panel grid of one example."""
    ncols = min(PANELS_PER_ROW, n_panels)
    return -(-n_panels // ncols), ncols


def write_heatmap_png(table: pd.DataFrame, path: str | Path, color_by: list[str] = ("weight",),
                      examples: list[int] | None = None, count: int = 4, width_px: int | None = None,
                      chars_per_panel: int = CHARS_PER_PANEL, dpi: int = 130,
                      title: str = "Token heat map") -> tuple[int, int]:
    """The heat map as a PNG: per example, its panels in a grid of at most ``PANELS_PER_ROW`` per row, each with
    its own colour bar; examples stacked. Returns the (width, height) in pixels.

    ``width_px`` fixes the image width (the panel width in characters follows); otherwise panels are
    ``chars_per_panel`` characters wide.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import PatchCollection
    from matplotlib.ticker import MaxNLocator

    columns = panel_columns(list(table.columns), list(color_by))
    chosen = pick_examples(table, examples, count)
    scale = scales(table[table["example"].isin(chosen)], columns)
    margin, gap = 0.25, 0.3
    grid_rows, ncols = grid_shape(len(columns))
    if width_px is not None:
        chars_per_panel = int((width_px / dpi - 2 * margin - (ncols - 1) * gap) / ncols / CHAR_WIDTH)
        if chars_per_panel < 10:
            raise ValueError(f"width_px={width_px} leaves {chars_per_panel} characters per panel for {ncols} panels a "
                             "row; give a wider image.")
    panel_w = chars_per_panel * CHAR_WIDTH
    width = width_px / dpi if width_px is not None else 2 * margin + ncols * panel_w + (ncols - 1) * gap
    layouts = {e: wrap_tokens(list(table.loc[table["example"] == e, "token"]), chars_per_panel) for e in chosen}
    head_h = 3.2 * LINE_HEIGHT  # panel title and colour bar
    panel_h = {e: head_h + (layouts[e][-1][0] + 1 if layouts[e] else 0) * LINE_HEIGHT + 0.12 for e in chosen}
    header = 0.75
    block = {e: 1.2 * LINE_HEIGHT + grid_rows * panel_h[e] + 0.15 for e in chosen}
    height = header + sum(block.values()) + margin
    size_px = (round(width * dpi), round(height * dpi))
    fig = plt.figure(figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    ax.text(margin, 0.3, title, fontsize=12, weight="bold", va="center")
    ax.add_patch(Rectangle((margin, 0.5), 0.3, 0.13, fill=False, edgecolor=NOISE_COLOR, linewidth=1.5))
    ax.text(margin + 0.4, 0.565, "injected noise token", fontsize=7, va="center")

    top = header
    for example in chosen:
        rows = table[table["example"] == example]
        ax.text(margin, top + 0.6 * LINE_HEIGHT, f"Example {example}", fontsize=9, weight="bold", va="center")
        for p, column in enumerate(columns):
            left = margin + (p % ncols) * (panel_w + gap)
            y_panel = top + 1.2 * LINE_HEIGHT + (p // ncols) * panel_h[example]
            s = scale[column]
            ax.text(left, y_panel + 0.6 * LINE_HEIGHT, s.label, fontsize=7, va="center", style="italic")
            bar_w = min(panel_w * 0.55, 2.4)
            if s.constant is None:
                cax = fig.add_axes([(left + panel_w - bar_w) / width, 1 - (y_panel + 1.0 * LINE_HEIGHT) / height,
                                    bar_w / width, 0.45 * LINE_HEIGHT / height])
                bar = fig.colorbar(ScalarMappable(s.norm, s.cmap), cax=cax, orientation="horizontal")
                if not isinstance(s.norm, colors.LogNorm):
                    bar.locator = MaxNLocator(4)
                    bar.update_ticks()
                bar.ax.tick_params(labelsize=5, length=2, pad=1)
            else:
                ax.text(left + panel_w, y_panel + 0.6 * LINE_HEIGHT, s.describe() + " (every token)", fontsize=6,
                        va="center", ha="right")
            y0 = y_panel + head_h
            fills = s.rgba(rows[column])
            boxes = [Rectangle((left + c * CHAR_WIDTH, y0 + line * LINE_HEIGHT), len(text) * CHAR_WIDTH, LINE_HEIGHT)
                     for line, c, text in layouts[example]]
            ax.add_collection(PatchCollection(boxes, facecolors=fills, edgecolors="white", linewidths=0.4))
            for (line, c, text), fill, noisy in zip(layouts[example], fills, rows["is_noise"]):
                ax.text(left + c * CHAR_WIDTH, y0 + (line + 0.5) * LINE_HEIGHT, text, fontsize=FONT_SIZE,
                        family="DejaVu Sans Mono", va="center", ha="left", color=_text_color(fill))
                if noisy:
                    ax.add_patch(Rectangle((left + c * CHAR_WIDTH, y0 + line * LINE_HEIGHT), len(text) * CHAR_WIDTH,
                                           LINE_HEIGHT, fill=False, edgecolor=NOISE_COLOR, linewidth=1.2))
        top += block[example]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return size_px
