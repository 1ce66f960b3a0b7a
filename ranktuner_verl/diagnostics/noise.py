"""The noise-injection diagnosis (RankTuner, Yu et al., arXiv 2602.01745, Tab. 1): injection and metrics.

Noise tokens are put into the SFT responses; a signal of importance that is robust to noise should not rank them
first. Among the ``top_share`` highest-scored tokens (10% in the paper; the scores: ``rankings``) we measure:
- token precision = |top ∩ noise| / |top|        (share of the top tokens that are noise)
- token recall    = |top ∩ noise| / |noise|      (share of the noise tokens that reach the top)
- sequence hit rate = share of sequences with at least one noise token in the top.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

import numpy as np

from .examples import TokenizedExample, encode_text

NOISE_KINDS = ("random", "filler", "swap")
FILLER_WORDS = (" um", " uh", " like", " you know", " basically", " actually", " so", " well")


def _plain_vocabulary(tokenizer) -> list[int]:
    special = set(tokenizer.all_special_ids)
    return [i for i in range(len(tokenizer)) if i not in special]


def _insert(example: TokenizedExample, pieces: list[list[int]], rng: random.Random) -> TokenizedExample:
    """Put each piece (a list of token ids) into a distinct gap of the content, before content token j."""
    content = example.response_ids[example.content]
    gaps = sorted(rng.sample(range(len(content) + 1), len(pieces)))
    new_content, new_noise, previous = [], [], 0
    for gap, piece in zip(gaps, pieces):
        new_content += content[previous:gap] + piece
        new_noise += example.is_noise[example.content][previous:gap] + [True] * len(piece)
        previous = gap
    new_content += content[previous:]
    new_noise += example.is_noise[example.content][previous:]
    start, stop = example.content.start, example.content.stop
    return replace(
        example,
        response_ids=example.response_ids[:start] + new_content + example.response_ids[stop:],
        is_noise=example.is_noise[:start] + new_noise + example.is_noise[stop:],
        content=slice(start, start + len(new_content)),
    )


def _swap(example: TokenizedExample, count: int, rng: random.Random) -> TokenizedExample | None:
    """Swap ``count`` non-overlapping pairs of adjacent, different content tokens; both tokens of a pair are noise."""
    ids, noise = list(example.response_ids), list(example.is_noise)
    candidates = [j for j in range(example.content.start, example.content.stop - 1) if ids[j] != ids[j + 1]]
    rng.shuffle(candidates)
    chosen: list[int] = []
    for j in candidates:
        if len(chosen) == count:
            break
        if all(abs(j - c) > 1 for c in chosen):
            chosen.append(j)
    if len(chosen) < count:
        return None
    for j in chosen:
        ids[j], ids[j + 1] = ids[j + 1], ids[j]
        noise[j] = noise[j + 1] = True
    return replace(example, response_ids=ids, is_noise=noise)


def inject_noise(examples: list[TokenizedExample], tokenizer, kind: str = "random", rate: float = 0.05,
                 seed: int = 0, skip_short: bool = False) -> list[TokenizedExample]:
    """Noisy copies of ``examples``: ``round(rate * n)`` noise events in a response of ``n`` content tokens.

    Kinds: ``random`` inserts uniform non-special vocabulary tokens; ``filler`` inserts filler words (" um",
    " like", ...; every token of the word is noise); ``swap`` exchanges adjacent tokens (both are noise).
    Prompts and the template's end-of-turn tokens are never touched. Each example gets its own generator seeded
    by ``(seed, index)``, so the result does not depend on the order or the subset of examples.
    A response too short for one noise event raises, unless ``skip_short`` drops it.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"Unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}.")
    if not 0 < rate <= 1:
        raise ValueError(f"Noise rate {rate} is outside (0, 1]; it is the number of noise events per response token.")
    if not examples:
        raise ValueError("No examples to inject noise into; pass a data file with at least one example.")
    vocabulary = _plain_vocabulary(tokenizer) if kind == "random" else None
    fillers = [encode_text(tokenizer, word) for word in FILLER_WORDS] if kind == "filler" else None
    noisy, short = [], []
    for example in examples:
        rng = random.Random(f"{seed}:{example.index}")
        n_content = example.content.stop - example.content.start
        count = round(rate * n_content)
        result = None
        if count >= 1 and kind == "random":
            result = _insert(example, [[rng.choice(vocabulary)] for _ in range(count)], rng)
        elif count >= 1 and kind == "filler":
            result = _insert(example, [rng.choice(fillers) for _ in range(count)], rng)
        elif count >= 1 and kind == "swap" and 2 * count <= n_content:
            result = _swap(example, count, rng)
        if result is None:
            short.append(f"{example.index} ({n_content} tokens)")
        else:
            noisy.append(result)
    if short and not skip_short:
        listed = ", ".join(short[:5]) + (f" and {len(short) - 5} more" if len(short) > 5 else "")
        raise ValueError(f"{len(short)} response(s) are too short for {kind} noise at rate {rate}: example(s) "
                         f"{listed}. Raise the rate, or drop them with skip_short (--skip-short).")
    if not noisy:
        raise ValueError(f"Every response is too short for {kind} noise at rate {rate}; raise the rate.")
    return noisy


def top_count(top_share: float, sizes: np.ndarray) -> np.ndarray:
    """How many tokens the top holds in a group of each size: ``ceil(top_share * size)``."""
    return np.ceil(top_share * np.asarray(sizes) - 1e-9).astype(np.int64)


def top_mask(weights: np.ndarray, top_share: float, groups: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Boolean mask of the ``ceil(top_share * n)`` largest weights (per group when ``groups`` is given).

    Ties are broken in a seeded random order, so a constant weight (plain SFT) picks a random subset, not the
    first tokens.
    """
    if not 0 < top_share <= 1:
        raise ValueError(f"top_share {top_share} is outside (0, 1].")
    weights = np.asarray(weights, dtype=np.float64)
    groups = np.zeros(len(weights), dtype=np.int64) if groups is None else np.asarray(groups)
    tiebreak = np.random.default_rng(seed).random(len(weights))
    order = np.lexsort((tiebreak, -weights, groups))  # by group, then weight descending, then tie-break
    sorted_groups = groups[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    sizes = np.diff(np.r_[starts, len(order)])
    rank_in_group = np.arange(len(order)) - np.repeat(starts, sizes)
    limit = np.repeat(top_count(top_share, sizes), sizes)
    mask = np.zeros(len(weights), dtype=bool)
    mask[order[rank_in_group < limit]] = True
    return mask


def top_share_metrics(weights, is_noise, sequence, top_share: float = 0.1, scope: str = "global",
                      seed: int = 0) -> dict[str, float]:
    """Token precision, token recall and sequence hit rate of the noise among the top-weighted tokens.

    ``scope="global"`` ranks all tokens together (the top 10% of the data set); ``"sequence"`` takes the top 10%
    of each response.
    """
    if scope not in ("global", "sequence"):
        raise ValueError(f"Unknown scope {scope!r}; choose 'global' or 'sequence'.")
    is_noise, sequence = np.asarray(is_noise, dtype=bool), np.asarray(sequence)
    if not is_noise.any():
        raise ValueError("No noise tokens among the tokens; inject noise before measuring the diagnosis.")
    top = top_mask(weights, top_share, sequence if scope == "sequence" else None, seed)
    hits = top & is_noise
    hit_sequences = np.unique(sequence[hits])
    return {
        "token_precision": hits.sum() / top.sum(),
        "token_recall": hits.sum() / is_noise.sum(),
        "sequence_hit_rate": len(hit_sequences) / len(np.unique(sequence)),
    }


def chance_metrics(is_noise, sequence, top_share: float = 0.1, scope: str = "global") -> dict[str, float]:
    """What ``top_share_metrics`` expects of a uniformly random order (plain SFT's constant weight), exactly.

    In a group of n tokens with m noise tokens, a random top of k = ``top_count`` tokens holds k m / n noise tokens
    on average (hypergeometric), and misses every noise token with probability C(n - m, k) / C(n, k). So precision =
    the noise share, recall = k / n (above ``top_share`` by the rounding up), hit rate = the mean over responses of
    1 - C(n - m, k) / C(n, k) with (n, k) of the whole set (``scope="global"``) or of the response.
    """
    is_noise, sequence = np.asarray(is_noise, dtype=bool), np.asarray(sequence)
    _, group, sizes = np.unique(sequence, return_inverse=True, return_counts=True)
    noise = np.bincount(group, weights=is_noise, minlength=len(sizes))
    if scope == "global":
        n, k = np.full(len(sizes), len(is_noise)), np.full(len(sizes), top_count(top_share, [len(is_noise)])[0])
        picked = k[0] * noise.sum() / n[0]
        top = k[0]
    else:
        n, k = sizes, top_count(top_share, sizes)
        picked, top = (k * noise / n).sum(), k.sum()
    missed = np.array([_none_drawn(int(a), int(b), int(c)) for a, b, c in zip(n, noise, k)])
    return {"token_precision": picked / top, "token_recall": picked / noise.sum(),
            "sequence_hit_rate": float(np.mean(1 - missed))}


def _none_drawn(n: int, m: int, k: int) -> float:
    """C(n - m, k) / C(n, k): a random k of n tokens holds none of m marked ones."""
    if k > n - m:
        return 0.0
    return math.exp(math.lgamma(n - m + 1) - math.lgamma(n - m - k + 1) - math.lgamma(n + 1) + math.lgamma(n - k + 1))
