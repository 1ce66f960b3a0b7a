"""Diagnostics of token weighting: the noise-injection test (RankTuner Tab. 1) under four rankings, token heat maps,
rank/probability plots and a report on a trained model. Command line: ``python -m ranktuner_verl.diagnostics --help``.

Pure PyTorch + transformers + matplotlib (Agg); no verl import.
"""

from .examples import Example, TokenizedExample, load_examples, tokenize_examples
from .forward import build_methods, load_model, load_tokenizer, split_methods
from .heatmap import write_heatmap_html, write_heatmap_png
from .noise import inject_noise, top_share_metrics
from .plots import write_plots
from .rankings import RANKINGS, ranking_markdown, ranking_table
from .report import run_report, write_report
from .table import read_tokens, table_from_model, token_table, write_tokens

__all__ = [
    "RANKINGS", "Example", "TokenizedExample", "build_methods", "inject_noise", "load_examples", "load_model",
    "load_tokenizer", "ranking_markdown", "ranking_table", "read_tokens", "run_report", "split_methods",
    "table_from_model", "token_table", "tokenize_examples", "top_share_metrics", "write_heatmap_html",
    "write_heatmap_png", "write_plots", "write_report", "write_tokens",
]
