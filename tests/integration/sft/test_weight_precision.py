"""The weights in verl's SFT loss come from the engine's fp32 statistics of the logits, never from verl's
``log_probs``, and stay fp32 until they multiply them (docs/methods.md, "Decisions").

verl computes ``log_probs`` with flash-attn's cross-entropy where it can; elsewhere (this CPU, an NPU, a GPU node
without flash-attn, ``VERL_DISABLE_FLASH_ATTN_CE=1``) with a log-softmax in the logits' dtype: bf16 logits give bf16
log-probabilities. Here verl's own ``logprobs_from_logits`` and our ``token_stats`` run on the same bf16 logits, and
the loss's weights and value are checked against an fp64 evaluation. (The RL policy loss: tests/integration/
rl/test_rl_actor.py, through verl's actor with a bf16 model.)
"""

from __future__ import annotations

import functools

import pytest
import torch

from ranktuner_verl.integration.engine_hook import stat_key
from ranktuner_verl.integration.sft.loss import WEIGHTS, WeightedSFTLoss
from ranktuner_verl.methods import METHODS, get_method
from ranktuner_verl.stats import reference_stats

LENGTHS = (40, 24)


@functools.lru_cache(maxsize=None)
def bf16_batch():
    """Two sequences of bf16 logits (V = 3000) from flat to confident, labels mostly the likeliest token."""
    g = torch.Generator().manual_seed(0)
    n = sum(LENGTHS)
    z = torch.randn(n, 3000, generator=g) * torch.logspace(-0.5, 1.2, n)[:, None]
    z[::3, 5] += 9
    labels = torch.where(torch.rand(n, generator=g) < 0.7, z.argmax(1), torch.randint(0, 3000, (n,), generator=g))
    return z.to(torch.bfloat16), labels


@functools.lru_cache(maxsize=None)
def reference(top_k: int = 20) -> dict:
    """The fp64 statistics of ``bf16_batch``'s logits (computed once per top_k)."""
    logits, labels = bf16_batch()
    return reference_stats(logits.double(), labels, top_k=top_k)


def _jagged(values: torch.Tensor) -> torch.Tensor:
    offsets = torch.tensor([0, LENGTHS[0], sum(LENGTHS)])
    return torch.nested.nested_tensor_from_jagged(values, offsets)


#: every method with a signal at its defaults, and RankTuner's exact form (E[R])
CASES = [(name, {}) for name, spec in METHODS.items() if spec.family != "no signal"] + [("ranktuner", {"form": "exact"})]


@pytest.mark.parametrize("name, params", CASES, ids=[f"{n}{p or ''}" for n, p in CASES])
def test_sft_loss_weights_come_from_fp32_statistics_not_bf16_log_probs(name, params):
    from verl.utils import tensordict_utils as tu
    from verl.utils.torch_functional import logprobs_from_logits

    from ranktuner_verl.stats import token_stats

    logits, labels = bf16_batch()
    log_probs = logprobs_from_logits(logits, labels).requires_grad_()  # verl's own
    assert log_probs.dtype == torch.bfloat16
    loss_fn = WeightedSFTLoss(name, **params)
    stats = token_stats(logits, labels, loss_fn.engine_stat_names, **loss_fn.stat_kwargs)  # what the hook hands over
    model_output = {"log_probs": _jagged(log_probs), **{stat_key(k): _jagged(v) for k, v in stats.items()}}
    loss_mask = torch.ones(sum(LENGTHS), dtype=torch.int64)
    loss_mask[[0, 1, LENGTHS[0]]] = 0  # prompt tokens
    data = tu.get_tensordict({"loss_mask": _jagged(loss_mask)}, {"batch_num_tokens": 61, "dp_size": 1})

    loss, metrics = loss_fn(model_output, data)

    mask = torch.roll(loss_mask, -1).bool()
    method = get_method(name, **params)
    want = METHODS[name].fn(reference(**method.stat_kwargs), mask, **method.params)
    torch.testing.assert_close(metrics[WEIGHTS].double(), want[mask], rtol=1e-5, atol=1e-6)
    want_loss = -(want * log_probs.detach().double())[mask].sum() / 61
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-5, atol=0)
    loss.backward()  # verl's log-probs are the ones differentiated, each by -w_t / N
    torch.testing.assert_close(log_probs.grad.double(), torch.where(mask, -want / 61, 0.0).to(torch.bfloat16).double(),
                               rtol=1e-2, atol=0)
