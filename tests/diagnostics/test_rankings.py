"""The four rankings of the noise diagnosis on a hand-built case whose answer is known for each."""

import pandas as pd
import pytest
import torch

from ranktuner_verl.diagnostics.examples import TokenizedExample
from ranktuner_verl.diagnostics.forward import build_methods
from ranktuner_verl.diagnostics.rankings import CHANCE, RANKINGS, ranking_markdown, ranking_table
from ranktuner_verl.diagnostics.table import SIGNALS
from ranktuner_verl.diagnostics.table import TABLE_STATS, build_table
from ranktuner_verl.methods import METHODS
from ranktuner_verl.stats import token_stats

METHOD_SPECS = ["sft", "dft", "talr", "deft", "eaft:top_k=4", "ranktuner"]


@pytest.fixture(scope="module")
def hand_table():
    """10 responses of 10 tokens; responses 0-4 hold 2 injected tokens each (10 of 100: the top 10%).

    Every token sees the same logits [4, 0, ..., 0] over 8 tokens. A clean token's label is token 0 (p = 0.886),
    an injected one's is token 5 (p = 0.016). So: -log p puts the noise first; p puts it last; p * (-log p) is
    0.107 (clean) against 0.067 (noise); p * ||pi - e_y|| is 0.108 against 0.021; the plain NLL and the plain
    gradient norm put the noise first; and every token has the same entropy, so EAFT's signal is constant.
    """
    examples, labels = [], []
    for index in range(10):
        noise = [index < 5 and j in (3, 7) for j in range(10)]
        ids = [5 if flag else 0 for flag in noise]
        examples.append(TokenizedExample(index, [1], ids, slice(0, 10), noise))
        labels += ids
    logits = torch.zeros(100, 8)
    logits[:, 0] = 4.0
    methods = build_methods(METHOD_SPECS)
    needs = TABLE_STATS.union(*(m.needs for m in methods.values()))
    stats = token_stats(logits, torch.tensor(labels), needs, top_k=4)
    return build_table(examples, {0: "a", 5: "z"}, stats, methods)


def _row(result: pd.DataFrame, ranking: str, row: str) -> tuple:
    found = result[(result["ranking"] == ranking) & (result["row"] == row)]
    assert len(found) == 1, (ranking, row, result)
    return tuple(found[["token_precision", "token_recall", "sequence_hit_rate"]].iloc[0].round(6))


def test_each_ranking_has_its_known_answer(hand_table):
    result = ranking_table(hand_table, list(RANKINGS))
    everything, nothing = (100.0, 100.0, 50.0), (0.0, 0.0, 0.0)
    probability = "probability-dominant: -log p_t (dft, talr, deft)"
    assert _row(result, "signal", probability) == everything
    assert _row(result, "signal", "entropy-dominant: H_t (the entropy EAFT uses) (eaft:top_k=4)") == \
        _row(result, "signal", CHANCE)  # a constant signal ranks at random, with the same tie-break as chance
    assert _row(result, "weight", "dft") == nothing
    assert _row(result, "weight", "sft") == _row(result, "weight", CHANCE)
    for ranking in ("loss-share", "grad-share"):
        assert _row(result, ranking, "sft") == everything  # the plain NLL and its gradient are largest on noise
        assert _row(result, ranking, "dft") == nothing  # p_t damps both below the clean tokens'
    rows = result.groupby("ranking", sort=False)["row"].apply(list).to_dict()
    assert list(rows) == list(RANKINGS) and all(r[0] == CHANCE for r in rows.values())
    assert "sft" not in " ".join(rows["signal"])  # plain SFT has no signal: the chance row is its ranking
    assert rows["weight"] == [CHANCE] + METHOD_SPECS


def test_chance_row_is_its_expectation_and_the_caption_says_it(hand_table):
    """A random 10% of the tokens holds 10% of the noise, 10% noise (noise share 10%); a response with 2 of the 100
    tokens misses the top with probability C(98, 10) / C(100, 10) = 90 * 89 / (100 * 99)."""
    result = ranking_table(hand_table, ["weight"])
    chance = result.iloc[0]
    assert chance["row"] == CHANCE
    assert (chance["token_precision"], chance["token_recall"]) == pytest.approx((10, 10))
    assert chance["sequence_hit_rate"] == pytest.approx(100 * 0.5 * (1 - 90 * 89 / (100 * 99)))
    text = ranking_markdown(result, hand_table, 0.1, "global", "a hand-built case")
    assert "precision = the noise share (10.00%), recall = the top's share of the tokens (10.00%" in text
    assert f"| {CHANCE} | 10.00% | 10.00% | {chance['sequence_hit_rate']:.2f}% |" in text


def test_markdown_names_each_ranking_and_the_noise_share(hand_table):
    result = ranking_table(hand_table, ["signal", "grad-share"])
    text = ranking_markdown(result, hand_table, 0.1, "global", "a hand-built case")
    assert "10 injected noise tokens of 100 (10.00%) in 10 responses" in text
    assert "**Ranked by signal**" in text and "**Ranked by grad-share**" in text
    assert text.count(f"| {CHANCE} |") == 2 and "| signal (methods) |" in text


def test_every_registered_method_has_a_family_with_a_signal():
    assert {spec.family for spec in METHODS.values()} <= set(SIGNALS)


def test_unknown_ranking_is_named(hand_table):
    with pytest.raises(ValueError, match="Unknown ranking.*'share'.*signal, weight, loss-share, grad-share"):
        ranking_table(hand_table, ["share"])
