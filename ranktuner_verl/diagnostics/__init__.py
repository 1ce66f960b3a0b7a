"""Diagnostics of token weighting: the noise-injection test (RankTuner Tab. 1), token heat maps, rank/probability
plots and a report on a trained model. Command line: ``python -m ranktuner_verl.diagnostics --help``.

Pure PyTorch + transformers + matplotlib (Agg); no verl import.
"""

from .examples import Example, TokenizedExample, load_examples, tokenize_examples
from .forward import build_methods, load_model, load_tokenizer, token_table
from .heatmap import write_heatmap_html, write_heatmap_png
from .noise import inject_noise, noise_table, top_share_metrics
from .plots import write_plots
from .report import run_report, write_report

__all__ = [
    "Example", "TokenizedExample", "build_methods", "inject_noise", "load_examples", "load_model", "load_tokenizer",
    "noise_table", "run_report", "token_table", "tokenize_examples", "top_share_metrics", "write_heatmap_html",
    "write_heatmap_png", "write_plots", "write_report",
]
