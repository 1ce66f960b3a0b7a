"""The diagnostics of a training run: from a model (the end of a run, or any checkpoint) and a data file.

Reports the distribution of every method's weights on the responses and the share of tokens with S_t ~ 1
(|S_t - 1| < 0.05), where RankTuner's relative scale leaves the base weight nearly unchanged (the paper's "noise
region": high-entropy, low-probability tokens; Yu et al., arXiv 2602.01745). That band is a property of S_t, not of
injected noise: the "injected noise tokens" of the noise diagnosis are another thing. Writes ``report.md``,
``report.json``, ``weight_summary.csv``, ``weight_histograms.png`` and ``relative_scale.png`` (and, with noise,
the noise tables).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..methods import METHODS
from .forward import build_methods
from ..methods import S_BAND
from .plots import near_one, write_scale_histogram, write_weight_histograms
from .table import method_labels, table_from_model, weight_column


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def weight_summary(table: pd.DataFrame, band: float = S_BAND) -> pd.DataFrame:
    """Per method: mean and percentiles of w_t, and the mean weight inside and outside the band |S_t - 1| < band
    (None where a side holds no token)."""
    inside = near_one(table, band)
    rows = []
    for label in method_labels(table):
        w = table[weight_column(label)].to_numpy(dtype=float)
        rows.append({"method": label, "mean": w.mean(), "p10": np.percentile(w, 10), "median": np.median(w),
                     "p90": np.percentile(w, 90), "mean_s_near_one": _mean(w[inside]),
                     "mean_elsewhere": _mean(w[~inside])})
    return pd.DataFrame(rows)


def _cell(value) -> str:
    return "none" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def write_report(table: pd.DataFrame, out_dir: str | Path, source: dict, noise_tables: str | None = None,
                 band: float = S_BAND) -> list[Path]:
    """Write the report files for a token table; ``source`` (model, data, ...) is printed at the top,
    ``noise_tables`` (Markdown of the noise diagnosis) at the end. Returns the files written, ``report.md`` first."""
    out_dir = Path(out_dir)
    summary = weight_summary(table, band)
    numbers = {
        **source,
        "examples": int(table["example"].nunique()),
        "response_tokens": len(table),
        "mean_nll": float(-table["log_prob"].mean()),
        "mean_p": float(table["p"].mean()),
        "s_band": band,
        "s_near_one_share": float(near_one(table, band).mean()),
        "methods": {r["method"]: {k: v for k, v in r.items() if k != "method"} for r in summary.to_dict("records")},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "report.md", write_weight_histograms(table, out_dir / "weight_histograms.png"),
               write_scale_histogram(table, out_dir / "relative_scale.png", band),
               out_dir / "weight_summary.csv", out_dir / "report.json"]
    summary.to_csv(out_dir / "weight_summary.csv", index=False)
    (out_dir / "report.json").write_text(json.dumps(numbers, indent=2))
    lines = ["# Token-weight report", ""]
    lines += [f"- {key}: {value}" for key, value in source.items()]
    lines += [
        f"- examples: {numbers['examples']}, response tokens: {numbers['response_tokens']}",
        f"- mean NLL: {numbers['mean_nll']:.4f}, mean p_t: {numbers['mean_p']:.4f}",
        f"- share of tokens with S_t ~ 1 (|S_t - 1| < {band:g}, RankTuner's practical form; the paper's \"noise "
        f"region\", not injected noise): {numbers['s_near_one_share']:.2%}",
        "",
        "| method | mean w | p10 | median | p90 | mean w where S_t ~ 1 | mean w elsewhere |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r.method} | {r.mean:.4g} | {r.p10:.4g} | {r.median:.4g} | {r.p90:.4g} | "
              f"{_cell(r.mean_s_near_one)} | {_cell(r.mean_elsewhere)} |" for r in summary.itertuples()]
    lines += ["", "![weights per method](weight_histograms.png)", "", "![relative scale](relative_scale.png)", ""]
    if noise_tables:
        lines += ["## Injected noise", "", noise_tables]
    written[0].write_text("\n".join(lines))
    return written


def run_report(model_dir: str | Path, data_path: str | Path, out_dir: str | Path, methods: list[str] | None = None,
               max_examples: int | None = 256, batch_tokens: int = 8192, logit_chunk: int = 1024,
               device: str = "auto", dtype: str = "auto", progress: bool = True) -> list[Path]:
    """Score ``data_path`` under the model (any form ``table_from_model`` accepts) and write the report to
    ``out_dir`` (returns the files written). Call it at the end of a run or on any checkpoint."""
    table = table_from_model(model_dir, data_path, build_methods(list(methods or METHODS)),
                             max_examples=max_examples, batch_tokens=batch_tokens, logit_chunk=logit_chunk,
                             device=device, dtype=dtype, progress=progress)
    return write_report(table, out_dir, {"model": str(model_dir), "data": str(data_path)})
