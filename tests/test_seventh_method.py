"""A 7th method needs only its registry entry: registered here (a throw-away one), it runs through the SFT loss in
verl's calling convention, the RL policy loss, the benchmarks' cases, the GPU check and the diagnostics, and every
list of methods names it, with no other file touched."""

from __future__ import annotations

import pytest
import torch

from ranktuner_verl.methods import METHODS, Param, get_method, method_names, register

NAME = "sqrt_p"


@pytest.fixture
def seventh():
    @register(NAME, source="a test's throw-away method", needs=(), family="probability-dominant",
              params={"power": Param(0.5, low=0.0, low_open=True)})
    def sqrt_p(stats, mask, power):
        """w_t = p_t^power."""
        return (stats["log_prob"] * power).exp()

    yield NAME
    del METHODS[NAME]


def _p_power(log_prob: torch.Tensor, power: float = 0.5) -> torch.Tensor:
    return (log_prob.detach().float() * power).exp()


def test_the_sft_loss_in_verls_calling_convention(seventh):
    from ranktuner_verl.integration.sft.loss import WeightedSFTLoss
    from ranktuner_verl.weighted_nll import weighted_nll
    from tests.test_weighted_nll_oracles import _verl_samples, verl_sft_inputs

    from ranktuner_verl.integration.engine_hook import stat_key
    from ranktuner_verl.stats import token_stats

    gen = torch.Generator().manual_seed(0)
    logits, model_output, data, labels = verl_sft_inputs(_verl_samples(gen), gen)
    loss_fn = WeightedSFTLoss(NAME, power=0.25)
    offsets = model_output["log_probs"].offsets()  # the engine hook's statistics, its p_t included
    model_output.update({stat_key(k): torch.nested.nested_tensor_from_jagged(v, offsets)
                         for k, v in token_stats(logits.detach(), labels, loss_fn.engine_stat_names).items()})
    loss, metrics = loss_fn(model_output, data)
    mask = torch.roll(data["loss_mask"].values(), shifts=-1, dims=0).bool()
    log_p = model_output["log_probs"].values()
    want = -(_p_power(log_p, 0.25) * log_p)[mask].sum() / mask.sum()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(weighted_nll(NAME, logits.detach(), labels, mask, power=0.25), want.detach())
    assert not torch.allclose(loss, -log_p[mask].mean())  # the weights act


def test_the_rl_policy_loss(seventh):
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, get_policy_loss_fn

    from ranktuner_verl.integration import engine_hook
    from ranktuner_verl.integration.rl import policy_loss

    assert NAME in policy_loss.weighted_modes() and "sft" not in policy_loss.weighted_modes()
    options = policy_loss.parse_options(NAME, {"power": 0.25, "clamp_max": 10.0, "mean_one": False})
    log_prob = torch.log(torch.tensor([[0.9, 0.04, 0.5], [0.2, 0.3, 0.01]]))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    weights = policy_loss.token_weights(options, {"log_prob": log_prob}, log_prob, torch.ones_like(log_prob), mask)
    want = torch.where(mask.bool(), _p_power(log_prob, 0.25), torch.ones_like(log_prob))
    torch.testing.assert_close(weights, want)
    try:
        policy_loss.register()
        assert get_policy_loss_fn(NAME) is policy_loss.weighted_policy_loss
    finally:
        POLICY_LOSS_REGISTRY.pop(NAME, None)
        engine_hook._POLICY_LOSS_REQUESTS.pop(NAME, None)


def test_the_benchmarks_and_the_gpu_check(seventh):
    from ranktuner_verl.bench import core, gpu_check
    from ranktuner_verl.bench.cases import Case, cases, select
    from ranktuner_verl.bench.core import make_inputs

    assert Case(NAME) in cases() and Case(NAME) in cases(every_choice=True)
    assert [case.label for case in select(cases(), NAME, always="sft")] == ["sft", NAME]
    assert Case(NAME).overrides == [f"loss={NAME}"] and Case(NAME).policy_loss == {"loss_mode": NAME}
    assert NAME in core._cases()
    logits, labels = make_inputs(4, 300, torch.float32)
    checked = dict(gpu_check.check_accuracy(logits, labels))
    assert checked[f"weights {NAME}"] <= 1


def test_the_diagnostics_and_the_method_lists(seventh):
    from ranktuner_verl.diagnostics.forward import build_methods
    from ranktuner_verl.diagnostics.table import SIGNALS, signal_of

    method = get_method(NAME)
    log_prob = torch.log(torch.tensor([0.9, 0.1]))
    torch.testing.assert_close(signal_of(method, {"log_prob": log_prob}), -log_prob.double())
    assert METHODS[NAME].family in SIGNALS
    assert build_methods([NAME])
    assert method_names(f"sft,{NAME}") == ["sft", NAME]
