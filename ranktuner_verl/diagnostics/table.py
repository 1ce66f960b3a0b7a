"""The token table: one row per response token, the one data structure every diagnostic reads.

This module owns its schema (column names, the ``w:`` and ``signal:`` prefixes), builds it from the statistics of a
forward pass, writes and reads ``tokens.jsonl``, and runs the whole chain model -> examples -> table
(``table_from_model``) that every command shares.

Columns
    example, position, token_id, token, is_noise      where the token is, what it is, whether it was injected
    p, log_prob, entropy_bits, rank, expected_rank    p_t, log p_t, H_t (bits), R_t, E[R_t]
    grad_norm                                         |grad_z l_t| = ||pi_t - e_y||_2, the logit gradient of the NLL
    S, S_exact                                        RankTuner's relative scale S_t, practical and exact forms
    w:<label>                                         the weight w_t of each method (label = its spec, e.g. dft)
    signal:<label>                                    its importance signal (``SIGNALS``)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..methods import FAMILIES, METHODS, get_method
from ..stats import nats_to_bits
from .examples import TokenizedExample, load_examples, tokenize_examples
from .forward import load_model, load_tokenizer, response_stats, stat_settings
from .noise import inject_noise

#: family of importance signal (``methods.FAMILIES``, Tab. 1 of Yu et al., arXiv 2602.01745) -> its signal.
SIGNALS = {
    "no signal": "constant",
    "probability-dominant": "-log p_t",
    "entropy-dominant": "H_t (the entropy EAFT uses)",
    "relative scale": "S_t",
}
assert set(SIGNALS) == set(FAMILIES), "every family of methods.FAMILIES has a signal"


def signal_of(method, stats: dict[str, torch.Tensor]) -> torch.Tensor:
    """The importance signal of ``method``'s family on the statistics (larger = more important)."""
    family = METHODS[method.name].family
    if family == "no signal":
        return torch.ones_like(stats["log_prob"])
    if family == "probability-dominant":
        return -stats["log_prob"].double()
    if family == "entropy-dominant":
        return stats["topk_entropy"] if method.params["entropy"] == "topk" else stats["entropy"]
    return get_method("ranktuner", **{**method.params, "base": "one"}).weights(stats)  # S_t of its form

WEIGHT = "w:"
SIGNAL = "signal:"
POSITION_COLUMNS = ("example", "position", "token_id", "token", "is_noise")
#: statistic column -> its label in figures
STATISTICS = {
    "p": "p_t (target probability)",
    "log_prob": "log p_t",
    "entropy_bits": "H_t (entropy, bits)",
    "rank": "R_t (rank of the target)",
    "expected_rank": "E[R_t] (expected rank)",
    "grad_norm": "|grad_z l_t| (logit gradient of the NLL)",
    "S": "S_t (relative scale, practical)",
    "S_exact": "S_t (relative scale, exact)",
}
#: the two RankTuner forms behind the S columns (their default options)
SCALE_METHODS = {"S": get_method("ranktuner", base="one"), "S_exact": get_method("ranktuner", base="one", form="exact")}
#: statistics every table holds, whatever the methods need
TABLE_STATS = frozenset({"log_prob", "entropy", "rank", "expected_rank", "sum_pi_squared"}).union(
    *(m.needs for m in SCALE_METHODS.values()))


def weight_column(label: str) -> str:
    return WEIGHT + label


def signal_column(label: str) -> str:
    return SIGNAL + label


def method_labels(table: pd.DataFrame) -> list[str]:
    """The method labels of a token table, in column order."""
    return [c[len(WEIGHT):] for c in table.columns if c.startswith(WEIGHT)]


def logit_grad_norm(log_prob: torch.Tensor, sum_pi_squared: torch.Tensor) -> torch.Tensor:
    """||pi - e_y||_2 = sqrt((1 - p)^2 + sum_{v != y} pi_v^2), the norm of d(-log p_y)/dz (softmax cross-entropy).

    In fp64 with 1 - p = -expm1(log p); sum_{v != y} pi_v^2 = sum pi^2 - p^2 is clamped to its range
    [0, (1 - p)^2], so the result always lies in [1, sqrt(2)] * (1 - p): its error is that of sum pi^2 (fp32,
    relative ~1e-6), which matters only where (1 - p)^2 is that small.
    """
    log_p = log_prob.double()
    miss = -torch.expm1(log_p)
    rest = (sum_pi_squared.double() - log_p.exp() ** 2).clamp(min=0)
    return torch.sqrt(miss ** 2 + torch.minimum(rest, miss ** 2))


def build_table(examples: list[TokenizedExample], token_text: dict[int, str], stats: dict[str, torch.Tensor],
                methods: dict) -> pd.DataFrame:
    """The table from per-token statistics (``stats``, examples concatenated in order) and the methods."""
    token_ids = [t for e in examples for t in e.response_ids]
    table = pd.DataFrame({
        "example": [e.index for e in examples for _ in e.response_ids],
        "position": [j for e in examples for j in range(len(e.response_ids))],
        "token_id": token_ids,
        "token": [token_text[t] for t in token_ids],
        "is_noise": [flag for e in examples for flag in e.is_noise],
        "p": stats["log_prob"].exp().numpy(),
        "log_prob": stats["log_prob"].numpy(),
        "entropy_bits": nats_to_bits(stats["entropy"]).numpy(),
        "rank": stats["rank"].numpy(),
        "expected_rank": stats["expected_rank"].numpy(),
        "grad_norm": logit_grad_norm(stats["log_prob"], stats["sum_pi_squared"]).numpy(),
    })
    for column, method in SCALE_METHODS.items():
        table[column] = method.weights(stats).float().numpy()
    for label, method in methods.items():
        table[weight_column(label)] = method.weights(stats).float().numpy()
    for label, method in methods.items():
        table[signal_column(label)] = signal_of(method, stats).double().numpy()
    return table


def check_table(table: pd.DataFrame, where: str = "the token table") -> pd.DataFrame:
    """The table itself, or ValueError naming the columns it lacks."""
    missing = [c for c in (*POSITION_COLUMNS, *STATISTICS) if c not in table.columns]
    labels = method_labels(table)
    missing += [signal_column(label) for label in labels if signal_column(label) not in table.columns]
    if missing or not labels:
        raise ValueError(f"{where} lacks columns {missing or ['w:<method>']}; it was written by another version of "
                         "the diagnostics: run the command on --model and --data again.")
    return table


def write_tokens(table: pd.DataFrame, path: str | Path) -> Path:
    """``tokens.jsonl``: one JSON object per token row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_json(path, orient="records", lines=True, force_ascii=False)
    return path


def read_tokens(path: str | Path) -> pd.DataFrame:
    """A table written by ``write_tokens`` (checked against the schema)."""
    table = pd.read_json(path, lines=True, dtype={"token": str})
    table["is_noise"] = table["is_noise"].astype(bool)
    return check_table(table, str(path))


def table_from_model(model_path: str | Path, data_path: str | Path, methods: dict, *, max_examples: int | None = None,
                     noise: dict | None = None, batch_tokens: int = 8192, logit_chunk: int = 1024,
                     device: str = "auto", dtype: str = "auto", progress: bool = True) -> pd.DataFrame:
    """Model -> examples (-> noise) -> table: the chain every command runs.

    ``model_path``: any form evaluation takes (an HF dir, a verl ``global_step_N``, a checkpoint root, a LoRA run:
    ``integration.checkpoints.resolve_model_dir``). ``noise``: keyword arguments of ``noise.inject_noise`` (kind,
    rate, seed, skip_short), or None for clean data. The examples are read and noised before the model loads.
    """
    from ..checkpoints import resolve_model_dir  # no verl import: it runs verl's merger as a command

    model_path = resolve_model_dir(model_path)
    tokenizer = load_tokenizer(model_path)
    examples = tokenize_examples(tokenizer, load_examples(data_path, max_examples))
    if noise is not None:
        examples = inject_noise(examples, tokenizer, **noise)
    model = load_model(model_path, device, dtype)
    return token_table(model, tokenizer, examples, methods, batch_tokens, logit_chunk, progress)


def token_table(model, tokenizer, examples: list[TokenizedExample], methods: dict, batch_tokens: int = 8192,
                logit_chunk: int = 1024, progress: bool = True) -> pd.DataFrame:
    """The table of ``examples`` under a loaded model (methods from ``forward.build_methods``)."""
    if not examples:
        raise ValueError("No examples to run the model over; pass a data file with at least one example.")
    needs = TABLE_STATS.union(*(m.needs for m in methods.values()))
    stats = response_stats(model, examples, needs, stat_settings(methods), batch_tokens, logit_chunk, progress)
    token_text = {t: tokenizer.decode([t]) for t in {t for e in examples for t in e.response_ids}}
    return build_table(examples, token_text, stats, methods)


def constant(values) -> bool:
    """Whether a column holds one value (a constant weight, such as plain SFT's)."""
    values = np.asarray(values, dtype=float)
    return values.size == 0 or bool(np.all(values == values[0]))
