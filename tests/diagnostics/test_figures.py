"""Heat maps and plots from a real token table of the tiny model (with injected noise)."""

import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ranktuner_verl.diagnostics.examples import load_examples, tokenize_examples
from ranktuner_verl.diagnostics import plots
from ranktuner_verl.diagnostics.forward import build_methods, load_model, load_tokenizer
from ranktuner_verl.diagnostics.heatmap import (CHAR_WIDTH, CHARS_PER_PANEL, grid_shape, scales, write_heatmap_html,
                                                write_heatmap_png)
from ranktuner_verl.diagnostics.noise import inject_noise
from ranktuner_verl.diagnostics.plots import figure_size_px, write_plots
from ranktuner_verl.diagnostics.report import write_report
from ranktuner_verl.diagnostics.table import token_table

METHODS = ["sft", "dft", "ranktuner"]


@pytest.fixture(scope="module")
def table(tiny_model_dir, sft_parquet):
    tokenizer = load_tokenizer(tiny_model_dir)
    examples = inject_noise(tokenize_examples(tokenizer, load_examples(sft_parquet)), tokenizer, "filler", 0.1)
    return token_table(load_model(tiny_model_dir), tokenizer, examples, build_methods(METHODS), progress=False)


class Spans(HTMLParser):
    """Counts token spans per (example, panel column) and the noise-marked ones."""

    def __init__(self):
        super().__init__()
        self.example = self.column = None
        self.tokens, self.noise = {}, {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.example = attrs.get("data-example", self.example)
        self.column = attrs.get("data-column", self.column)
        classes = (attrs.get("class") or "").split()
        if tag == "span" and "tok" in classes:
            key = (int(self.example), self.column)
            self.tokens[key] = self.tokens.get(key, 0) + 1
            self.noise[key] = self.noise.get(key, 0) + ("noise" in classes)


def test_html_has_one_span_per_response_token(table, tmp_path):
    path = write_heatmap_html(table, tmp_path / "h.html", color_by=["weight", "S", "rank"], count=3)
    parser = Spans()
    parser.feed(path.read_text())
    shown = {e for e, _ in parser.tokens}
    assert len(shown) == 3 and shown <= set(table.loc[table["is_noise"], "example"])
    for (example, column), count in parser.tokens.items():
        rows = table[table["example"] == example]
        assert count == len(rows), (example, column)
        assert parser.noise[(example, column)] == rows["is_noise"].sum()
    assert {c for _, c in parser.tokens} == {"w:sft", "w:dft", "w:ranktuner", "S", "rank"}


def test_png_heat_map_has_the_requested_width(table, tmp_path):
    size = write_heatmap_png(table, tmp_path / "h.png", color_by=["w:dft", "p"], examples=[0, 1], width_px=900, dpi=100)
    image = Image.open(tmp_path / "h.png")
    assert image.format == "PNG" and image.size == size and size[0] == 900 and size[1] > 200
    pixels = np.asarray(image.convert("RGB"), dtype=float)
    reds = (pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert pixels.std() > 10 and reds.any()  # coloured tokens, red outlines on the noise


def test_every_panel_has_its_own_colour_range(table):
    """Each panel spans its own values (S and the p-based weights no longer share one range); a constant weight is
    drawn as a constant, and no panel's scale depends on the others."""
    columns = ["w:sft", "w:dft", "w:ranktuner", "S", "p"]
    for order in (columns, columns[::-1]):
        scale = scales(table, order)
        assert scale["w:sft"].constant == 1.0 and len({tuple(c) for c in scale["w:sft"].rgba(table["w:sft"])}) == 1
        for column in ("w:dft", "w:ranktuner"):
            norm = scale[column].norm
            assert (norm.vmin, norm.vmax) == (pytest.approx(table[column].min()), pytest.approx(table[column].max()))
        assert scale["S"].norm.vcenter == 1 and scale["p"].norm.vmax == 1


def test_png_panels_are_in_a_grid(table, tmp_path):
    """Five panels: two rows of at most three, so the image is three panels wide, not five."""
    assert grid_shape(5) == (2, 3) and grid_shape(2) == (1, 2)
    one_row = write_heatmap_png(table, tmp_path / "a.png", color_by=["w:dft", "S", "p"], examples=[0], dpi=100)
    two_rows = write_heatmap_png(table, tmp_path / "b.png", color_by=["w:sft", "w:dft", "w:ranktuner", "S", "p"],
                                 examples=[0], dpi=100)
    assert one_row[0] == two_rows[0] == round((0.5 + 3 * CHARS_PER_PANEL * CHAR_WIDTH + 2 * 0.3) * 100)
    assert two_rows[1] > 1.6 * one_row[1] - 120  # a second row of panels below the first


def test_scatter_colour_bars_are_per_panel_and_constant_weights_have_none(table, tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    plots.write_rank_probability(table, tmp_path / "r.png", dpi=60)
    figure = figures[-1]
    bars = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 2  # dft and ranktuner; sft's constant weight is drawn in one colour, named in its legend
    panels = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == METHODS
    assert "w = 1" in " ".join(t.get_text() for t in panels[0].get_legend().get_texts())
    clean = table[~table["is_noise"]]
    for ax, method in zip(panels, METHODS):
        dots = ax.collections[0]  # the clean tokens
        if method == "sft":
            assert dots.get_array() is None
        else:
            column = clean[f"w:{method}"]
            assert (dots.norm.vmin, dots.norm.vmax) == (pytest.approx(column.min()), pytest.approx(column.max()))


def test_heat_map_refuses_unknown_columns_and_examples(table, tmp_path):
    with pytest.raises(ValueError, match="Cannot colour tokens by 'w:deft'.*w:dft"):
        write_heatmap_html(table, tmp_path / "h.html", color_by=["w:deft"])
    with pytest.raises(ValueError, match=r"Example\(s\) \[99\]"):
        write_heatmap_png(table, tmp_path / "h.png", examples=[99])
    assert not (tmp_path / "h.html").exists() and not (tmp_path / "h.png").exists()


def test_plots_and_their_data(table, tmp_path):
    written = write_plots(table, tmp_path, dpi=80)
    for name in ("rank_probability", "expected_rank_entropy", "weight_histograms"):
        image = Image.open(written[name])
        assert image.format == "PNG" and image.size == figure_size_px(len(METHODS), 80)
        assert np.asarray(image.convert("L")).std() > 10
    data = pd.read_csv(written["data"], keep_default_na=False)
    assert len(data) == len(table)
    assert {"p", "rank", "entropy_bits", "expected_rank", "S", "w:sft", "w:dft", "w:ranktuner"} <= set(data.columns)
    assert (data["rank"] <= 1 / data["p"] * (1 + 1e-4)).all()  # the envelope the plot draws holds


def test_report_numbers(table, tmp_path):
    written = write_report(table, tmp_path, {"model": "tiny"})
    assert [p.name for p in written] == ["report.md", "weight_histograms.png", "relative_scale.png",
                                         "weight_summary.csv", "report.json"]  # all it writes (and the CLI prints)
    assert sorted(written) == sorted(tmp_path.iterdir())
    numbers = json.loads((tmp_path / "report.json").read_text())
    assert numbers["s_near_one_share"] == pytest.approx(np.mean(np.abs(table["S"] - 1) < 0.05))
    assert numbers["methods"]["dft"]["mean"] == pytest.approx(table["p"].mean(), rel=1e-5)
    assert numbers["methods"]["sft"]["median"] == 1
    assert Image.open(tmp_path / "weight_histograms.png").size == figure_size_px(len(METHODS), 120)
    text = (tmp_path / "report.md").read_text()
    assert "S_t ~ 1" in text and not re.search(r"\bnan\b", text, re.I)


@pytest.mark.parametrize("spread", [0.03, 3.0])
def test_the_relative_scale_tick_labels_do_not_collide(table, spread):
    """S_t within 1 +- 3% (the tiny model: every token near 1) labelled minor ticks in scientific notation, drawn over
    each other; a wide spread must stay readable too."""
    from ranktuner_verl.diagnostics.plots import scale_histogram

    narrow = table.assign(S=np.exp(np.linspace(-spread, spread, len(table))))
    fig = scale_histogram(narrow)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in fig.axes[0].xaxis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda box: box.x0)
    assert len(boxes) >= 3 and "1" in [t.get_text() for t in labels]
    assert all(left.x1 < right.x0 for left, right in zip(boxes, boxes[1:])), [t.get_text() for t in labels]
    assert not any("times" in t.get_text() or "^" in t.get_text() for t in labels)
