"""The diagnostics of a training run: from an HF model dir (the end of a run, or any checkpoint) and a data file.

Reports the distribution of every method's weights on the responses and the share of tokens in RankTuner's noise
region |S_t - 1| < 0.05, where the relative scale leaves the base weight nearly unchanged (high-entropy,
low-probability tokens; RankTuner, Yu et al., arXiv 2602.01745). Writes ``report.md``, ``report.json``,
``weight_summary.csv``, ``weight_histograms.png`` and ``relative_scale.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..methods import METHODS
from .examples import load_examples, tokenize_examples
from .forward import build_methods, load_model, load_tokenizer, resolve_model_dir, token_table, weight_columns
from .plots import NOISE_REGION_BAND, in_noise_region, write_scale_histogram, write_weight_histograms


def weight_summary(table: pd.DataFrame, band: float = NOISE_REGION_BAND) -> pd.DataFrame:
    """Per method: mean and percentiles of w_t, and the mean weight inside and outside the noise region."""
    in_region = in_noise_region(table, band)
    rows = []
    for method in weight_columns(table):
        w = table[f"w:{method}"].to_numpy(dtype=float)
        rows.append({
            "method": method, "mean": w.mean(), "p10": np.percentile(w, 10), "median": np.median(w),
            "p90": np.percentile(w, 90),
            "mean_in_noise_region": w[in_region].mean() if in_region.any() else float("nan"),
            "mean_outside": w[~in_region].mean() if (~in_region).any() else float("nan"),
        })
    return pd.DataFrame(rows)


def write_report(table: pd.DataFrame, out_dir: str | Path, source: dict, band: float = NOISE_REGION_BAND) -> Path:
    """Write the report files for a token table; ``source`` (model, data, ...) is printed at the top."""
    out_dir = Path(out_dir)
    summary = weight_summary(table, band)
    numbers = {
        **source,
        "examples": int(table["example"].nunique()),
        "response_tokens": len(table),
        "mean_nll": float(-table["log_prob"].mean()),
        "mean_p": float(table["p"].mean()),
        "noise_region_band": band,
        "noise_region_share": float(in_noise_region(table, band).mean()),
        "methods": summary.set_index("method").to_dict(orient="index"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_weight_histograms(table, out_dir / "weight_histograms.png")
    write_scale_histogram(table, out_dir / "relative_scale.png", band)
    summary.to_csv(out_dir / "weight_summary.csv", index=False)
    (out_dir / "report.json").write_text(json.dumps(numbers, indent=2))
    lines = ["# Token-weight report", ""]
    lines += [f"- {key}: {value}" for key, value in source.items()]
    lines += [
        f"- examples: {numbers['examples']}, response tokens: {numbers['response_tokens']}",
        f"- mean NLL: {numbers['mean_nll']:.4f}, mean p_t: {numbers['mean_p']:.4f}",
        f"- share of tokens in the noise region |S_t - 1| < {band:g}: {numbers['noise_region_share']:.2%}",
        "",
        "| method | mean w | p10 | median | p90 | mean w in noise region | mean w outside |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r.method} | {r.mean:.4g} | {r.p10:.4g} | {r.median:.4g} | {r.p90:.4g} | "
              f"{r.mean_in_noise_region:.4g} | {r.mean_outside:.4g} |" for r in summary.itertuples()]
    lines += ["", "![weights per method](weight_histograms.png)", "", "![relative scale](relative_scale.png)", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def run_report(model_dir: str | Path, data_path: str | Path, out_dir: str | Path, methods: list[str] | None = None,
               max_examples: int | None = 256, batch_tokens: int = 8192, device: str = "auto",
               dtype: str = "auto", progress: bool = True) -> Path:
    """Load the model (an HF dir or a verl checkpoint with ``huggingface/`` weights), score ``data_path`` and write
    the report to ``out_dir``. Call it at the end of a run or on any checkpoint."""
    chosen = build_methods(list(methods or METHODS))
    model_dir = resolve_model_dir(model_dir)
    tokenizer = load_tokenizer(model_dir)
    examples = tokenize_examples(tokenizer, load_examples(data_path, max_examples))
    table = token_table(load_model(model_dir, device, dtype), tokenizer, examples, chosen, batch_tokens=batch_tokens,
                        progress=progress)
    return write_report(table, out_dir, {"model": str(model_dir), "data": str(data_path)})
