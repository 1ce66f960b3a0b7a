"""Rank and probability plots of a token table (one panel per method, points coloured by its weight).

- R_t against p_t, log-log, with the envelope R = 1/p: every token ranked at or above the target has probability
  >= p_t, so R_t <= 1/p_t (RankTuner, Yu et al., arXiv 2602.01745).
- E[R_t] against H_t (bits), with the guessing-entropy bound E[R] >= 2^(H-2) + 1 (Massey 1994), a bound for
  H >= 2 bits, drawn dotted below 2 bits, where only RankTuner's ``proxy=massey`` ablation applies it (the default
  proxy there is 1 + (1 - p_max), docs/methods.md).
- Histograms of each method's weights (clean and injected noise tokens apart when noise was injected).
Each panel has its own colour scale; a constant weight (plain SFT) is drawn in one colour with its value named.
Injected noise tokens are small red crosses drawn over the clean points. PNGs via matplotlib (Agg), and the plotted
data as CSV.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from ..methods import S_BAND, guessing_entropy_bound  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402

from .heatmap import NOISE_COLOR  # noqa: E402
from .table import POSITION_COLUMNS, STATISTICS, constant, method_labels, weight_column  # noqa: E402

PANEL_SIZE = (4.2, 3.4)  # inches per panel


def near_one(table: pd.DataFrame, band: float = S_BAND) -> np.ndarray:
    """Mask of the tokens with |S_t - 1| < ``band`` (practical form), whatever their origin."""
    return np.abs(table["S"].to_numpy(dtype=float) - 1) < band


def _rows_cols(n_panels: int) -> tuple[int, int]:
    ncols = min(3, n_panels)
    return math.ceil(n_panels / ncols), ncols


def _grid(n: int, dpi: int):
    nrows, ncols = _rows_cols(n)
    fig, axes = plt.subplots(nrows, ncols, figsize=(PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * nrows), dpi=dpi,
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def figure_size_px(n_panels: int, dpi: int) -> tuple[int, int]:
    """The pixel size of a plot with ``n_panels`` panels (at most three per row)."""
    nrows, ncols = _rows_cols(n_panels)
    return round(PANEL_SIZE[0] * ncols * dpi), round(PANEL_SIZE[1] * nrows * dpi)


def _sample(table: pd.DataFrame, max_points: int, seed: int) -> pd.DataFrame:
    """All noise tokens and at most ``max_points`` tokens in all, drawn at random (seeded)."""
    if len(table) <= max_points:
        return table
    noise = table[table["is_noise"]]
    clean = table[~table["is_noise"]]
    clean = clean.sample(n=max(max_points - len(noise), 0), random_state=seed)
    return pd.concat([clean, noise]).sort_index()


def _save(fig, path: Path, dpi: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _colour_by_weight(fig, ax, points: pd.DataFrame, x: str, y: str, column: str):
    """Clean points coloured by the weight on the panel's own scale; a constant weight in one colour, named."""
    weights = points[column].to_numpy(dtype=float)
    if constant(weights):
        ax.scatter(points[x], points[y], color="#4c72b0", s=6, alpha=0.6, linewidths=0,
                   label=f"every token: w = {weights[0]:.3g}")
        return
    dots = ax.scatter(points[x], points[y], c=weights, cmap="viridis", s=6, alpha=0.8, linewidths=0,
                      vmin=float(weights.min()), vmax=float(weights.max()))
    bar = fig.colorbar(dots, ax=ax, label="weight", pad=0.02)
    bar.locator = MaxNLocator(5)
    bar.update_ticks()


def _scatter(table: pd.DataFrame, path: Path, x: str, y: str, xlabel: str, ylabel: str, draw_bound, title: str,
             dpi: int, max_points: int, seed: int, log_x: bool, legend_at: str) -> Path:
    labels = method_labels(table)
    points = _sample(table, max_points, seed)
    clean, noise = points[~points["is_noise"]], points[points["is_noise"]]
    fig, axes = _grid(len(labels), dpi)
    for ax, label in zip(axes, labels):
        _colour_by_weight(fig, ax, clean, x, y, weight_column(label))
        if len(noise):  # thin crosses: they mark the noise without hiding the clean points beneath
            ax.scatter(noise[x], noise[y], marker="x", s=9, color=NOISE_COLOR, linewidths=0.6, alpha=0.8,
                       label=f"injected noise token ({len(noise)})")
        ax.set_xscale("log" if log_x else "linear")
        ax.set_yscale("log")
        ax.set_ylim(0.8, 2 * max(float(points[y].max()), 2.0))
        draw_bound(ax, points)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=6, loc=legend_at)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path, dpi)


def _envelope(ax, points):
    p = np.geomspace(1 / ax.get_ylim()[1], 1.0, 200)  # the part of R = 1/p inside the plotted ranks
    ax.plot(p, 1 / p, color="black", linewidth=1.2, label="R = 1/p (envelope)")


def _massey(ax, points):
    top = max(float(points["entropy_bits"].max()), 2.5)
    low, high = torch.linspace(0, 2, 50), torch.linspace(2, top, 200)
    ax.plot(high, guessing_entropy_bound(high), color="black", linewidth=1.2,
            label="E[R] = 2^(H-2) + 1 (bound, H ≥ 2)")
    ax.plot(low, guessing_entropy_bound(low), color="black", linewidth=1.2, linestyle=":",
            label="same formula, H < 2 (proxy=massey only)")


def write_rank_probability(table: pd.DataFrame, path: str | Path, dpi: int = 120, max_points: int = 20000,
                           seed: int = 0) -> Path:
    """R_t against p_t (log-log) with the envelope R = 1/p, one panel per method, coloured by its weight."""
    return _scatter(table, Path(path), "p", "rank", "p_t (probability of the target)", "R_t (rank of the target)",
                    _envelope, "Rank against probability", dpi, max_points, seed, log_x=True, legend_at="upper right")


def write_expected_rank_entropy(table: pd.DataFrame, path: str | Path, dpi: int = 120, max_points: int = 20000,
                                seed: int = 0) -> Path:
    """E[R_t] against H_t in bits with the bound E[R] = 2^(H-2) + 1, one panel per method, coloured by weight."""
    return _scatter(table, Path(path), "entropy_bits", "expected_rank", "H_t (entropy, bits)",
                    "E[R_t] (expected rank)", _massey, "Expected rank against entropy", dpi, max_points, seed,
                    log_x=False, legend_at="lower right")


def write_weight_histograms(table: pd.DataFrame, path: str | Path, dpi: int = 120, bins: int = 40) -> Path:
    """A histogram of each method's weights; injected noise tokens, if any, in a second colour (each normalised)."""
    labels = method_labels(table)
    noise = table["is_noise"].to_numpy(dtype=bool)
    fig, axes = _grid(len(labels), dpi)
    for ax, method in zip(axes, labels):
        weights = table[weight_column(method)].to_numpy(dtype=float)
        edges = np.histogram_bin_edges(weights, bins=bins)
        ax.hist(weights[~noise], bins=edges, density=True, color="#4c72b0", alpha=0.75,
                label=f"clean tokens ({(~noise).sum()})")
        if noise.any():
            ax.hist(weights[noise], bins=edges, density=True, color=NOISE_COLOR, alpha=0.55,
                    label=f"injected noise tokens ({noise.sum()})")
        ax.set_xlabel("token weight")
        ax.set_ylabel("density")
        ax.set_title(f"{method}  (constant {weights[0]:.3g})" if constant(weights) else
                     f"{method}  (mean {weights.mean():.3g})", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.legend(fontsize=7)
    fig.suptitle("Token weights per method", fontsize=11)
    fig.tight_layout()
    return _save(fig, Path(path), dpi)


def write_plot_data(table: pd.DataFrame, path: str | Path) -> Path:
    """The plotted values as CSV: position, token, statistics and every weight, one row per token."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table[[*POSITION_COLUMNS, *STATISTICS] + [weight_column(m) for m in method_labels(table)]].to_csv(path,
                                                                                               index=False)
    return path


def write_plots(table: pd.DataFrame, out_dir: str | Path, dpi: int = 120, max_points: int = 20000,
                seed: int = 0) -> dict[str, Path]:
    """All three plots and their data in ``out_dir``."""
    out_dir = Path(out_dir)
    return {
        "rank_probability": write_rank_probability(table, out_dir / "rank_probability.png", dpi, max_points, seed),
        "expected_rank_entropy": write_expected_rank_entropy(table, out_dir / "expected_rank_entropy.png", dpi,
                                                             max_points, seed),
        "weight_histograms": write_weight_histograms(table, out_dir / "weight_histograms.png", dpi),
        "data": write_plot_data(table, out_dir / "plot_data.csv"),
    }


def write_scale_histogram(table: pd.DataFrame, path: str | Path, band: float = S_BAND, dpi: int = 120,
                          bins: int = 60) -> Path:
    """A histogram of RankTuner's S_t on a log axis (S and 1/S equally far from 1), the band |S_t - 1| < ``band``
    shaded with its share; injected noise tokens, if any, apart."""
    return _save(scale_histogram(table, band, dpi, bins), Path(path), dpi)


def scale_histogram(table: pd.DataFrame, band: float = S_BAND, dpi: int = 120, bins: int = 60):
    """The figure of ``write_scale_histogram``."""
    values = table["S"].to_numpy(dtype=float)
    noise = table["is_noise"].to_numpy(dtype=bool)
    share = float(near_one(table, band).mean())
    low, high = min(values.min(), 1 - band), max(values.max(), 1 + band)
    edges = np.geomspace(low, high, bins + 1)
    fig, ax = plt.subplots(figsize=PANEL_SIZE, dpi=dpi)
    ax.axvspan(1 - band, 1 + band, color="#bbbbbb", alpha=0.6, label=f"S ~ 1 (|S-1| < {band:g}): {share:.1%}")
    ax.hist(values[~noise], bins=edges, color="#4c72b0", alpha=0.85, label=f"clean tokens ({(~noise).sum()})")
    if noise.any():
        ax.hist(values[noise], bins=edges, color=NOISE_COLOR, alpha=0.6, label=f"injected noise tokens ({noise.sum()})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _log_ticks(ax.xaxis, low, high)
    ax.set_xlabel("S_t (RankTuner relative scale, practical form)")
    ax.set_ylabel("tokens")
    ax.set_title("Relative scale of the response tokens", fontsize=10)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def _log_ticks(axis, low: float, high: float, count: int = 5) -> None:
    """``count`` labelled ticks evenly spaced on a log axis from ``low`` to ``high`` (the one nearest 1 moved to 1),
    written as plain numbers, and no minor labels: over a narrow range (S_t within 0.95..1.05) matplotlib labels its
    minor ticks in scientific notation, which overlap."""
    ticks = np.geomspace(low, high, count)
    if low < 1 < high:
        ticks[np.abs(np.log(ticks)).argmin()] = 1.0
    ticks = sorted({float(f"{t:.3g}") for t in ticks})
    axis.set_ticks(ticks)
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    axis.set_minor_formatter(NullFormatter())
