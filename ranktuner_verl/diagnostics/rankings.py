"""Four ways to rank the tokens for the noise diagnosis (RankTuner, Yu et al., arXiv 2602.01745, Tab. 1).

Tab. 1 of the paper compares *signals of importance*: probability-dominant (a low p_t marks an important token),
entropy-dominant (a high H_t) and RankTuner's relative scale S_t = 1 / I_t (S_t > 1: under-learned). A method's
training weight is another thing: every method with a factor p_t puts an injected token (p ~ 1e-5) last by
construction. What a method amplifies in training is its share of the loss or of the gradient, a third ranking.

    signal      the importance signal of the method's family (``methods.FAMILIES``, ``table.SIGNALS``); like-for-like with the paper's Tab. 1
    weight      the training weight w_t
    loss-share  w_t * l_t, l_t = -log p_t: the token's share of the weighted loss
    grad-share  w_t * ||grad_z l_t||: its share of the gradient on the logits

Every table has a chance row: a constant score (plain SFT's weight), which ranks the tokens in a random order; it
and any other constant score show what a random order gives on average, exactly (``noise.chance_metrics``):
precision = the noise share, recall = the top's share of the tokens (not one random draw, which with a few hundred
noise tokens can land far from it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..methods import METHODS
from .noise import chance_metrics, top_share_metrics
from .table import SIGNALS, method_labels, signal_column, weight_column

RANKINGS = {
    "signal": "the importance signal of each method's family",
    "weight": "the training weight w_t",
    "loss-share": "the share of the weighted loss w_t * l_t (l_t = -log p_t)",
    "grad-share": "the share of the logit gradient w_t * ||grad_z l_t||",
}
CHANCE = "chance (random order)"


def scores(table: pd.DataFrame, label: str, ranking: str) -> np.ndarray:
    """The score of every token of ``table`` for method ``label`` under ``ranking`` (larger ranks first)."""
    if ranking == "signal":
        return table[signal_column(label)].to_numpy(dtype=np.float64)
    weight = table[weight_column(label)].to_numpy(dtype=np.float64)
    if ranking == "weight":
        return weight
    if ranking == "loss-share":
        return weight * -table["log_prob"].to_numpy(dtype=np.float64)
    if ranking == "grad-share":
        return weight * table["grad_norm"].to_numpy(dtype=np.float64)
    raise ValueError(f"Unknown ranking {ranking!r}; choose from {', '.join(RANKINGS)}.")


def _rows(table: pd.DataFrame, ranking: str) -> list[tuple[str, np.ndarray]]:
    """(row label, scores) of one table: the chance row, then one row per method; under ``signal`` the methods
    sharing one signal (same values) share one row, named by family and signal."""
    rows: list[tuple[str, np.ndarray]] = [(CHANCE, np.ones(len(table)))]
    if ranking != "signal":
        return rows + [(label, scores(table, label, ranking)) for label in method_labels(table)]
    groups: list[tuple[list[str], np.ndarray]] = []
    for label in method_labels(table):
        if METHODS[label.partition(":")[0]].family == "no signal":
            continue  # plain SFT: its ranking is the chance row
        values = scores(table, label, "signal")
        same = next((g for g in groups if np.array_equal(g[1], values)), None)
        if same:
            same[0].append(label)
        else:
            groups.append(([label], values))
    for labels, values in groups:
        family = METHODS[labels[0].partition(":")[0]].family
        rows.append((f"{family}: {SIGNALS[family]} ({', '.join(labels)})", values))
    return rows


def ranking_table(table: pd.DataFrame, rankings: list[str], top_share: float = 0.1, scope: str = "global",
                  seed: int = 0) -> pd.DataFrame:
    """One row per (ranking, row): token precision, token recall and sequence hit rate in percent."""
    unknown = [r for r in rankings if r not in RANKINGS]
    if unknown:
        raise ValueError(f"Unknown ranking(s) {unknown}; choose from {', '.join(RANKINGS)}.")
    result = []
    for ranking in rankings:
        for row, values in _rows(table, ranking):
            if np.ptp(values) == 0:  # one score for all: a random order, reported as its expectation, not one draw
                metrics = chance_metrics(table["is_noise"], table["example"], top_share, scope)
            else:
                metrics = top_share_metrics(values, table["is_noise"], table["example"], top_share, scope, seed)
            result.append({"ranking": ranking, "row": row, **{k: 100 * v for k, v in metrics.items()}})
    return pd.DataFrame(result)


def ranking_markdown(result: pd.DataFrame, table: pd.DataFrame, top_share: float, scope: str, source: str) -> str:
    """One Markdown table per ranking, each with a caption naming its ranking, the top share and the noise share."""
    pct = f"{100 * top_share:g}%"
    where = "over all response tokens" if scope == "global" else "within each response"
    noise = table["is_noise"].to_numpy(dtype=bool)
    share = (f"{int(noise.sum())} injected noise tokens of {len(table)} ({noise.mean():.2%}) in "
             f"{table['example'].nunique()} responses")
    chance = result[result["row"] == CHANCE].iloc[0]
    parts = [f"Noise-injection diagnosis: {source}. {share}. Top tokens: the {pct} highest scores {where}; "
             f"the chance row is the expectation over random orders: precision = the noise share "
             f"({chance.token_precision:.2f}%), recall = the top's share of the tokens ({chance.token_recall:.2f}%: "
             f"{pct} rounded up to whole tokens).\n"]
    for ranking, rows in result.groupby("ranking", sort=False):
        parts.append(f"**Ranked by {ranking}**: {RANKINGS[ranking]}.\n\n"
                     f"| {'signal (methods)' if ranking == 'signal' else 'method'} | token precision (top {pct}) | "
                     f"token recall (top {pct}) | sequence hit rate |\n|---|---:|---:|---:|\n"
                     + "".join(f"| {r.row} | {r.token_precision:.2f}% | {r.token_recall:.2f}% | "
                               f"{r.sequence_hit_rate:.2f}% |\n" for r in rows.itertuples()))
    return "\n".join(parts)
