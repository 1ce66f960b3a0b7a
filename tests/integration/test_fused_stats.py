"""``fused_stats`` around verl's real ``FusedLinearForPPO``: a pass-through outside ``collecting``; inside, the
statistics of exactly the logits verl's kernel computes its log-probs from; clear errors otherwise."""

from __future__ import annotations

import pytest
import torch

from ranktuner_verl.integration import fused_stats
from ranktuner_verl.stats import token_stats

NEEDS = frozenset({"rank", "entropy", "p_max", "expected_rank"})


def head(seed=0, n=7, hidden=16, vocab=300):
    g = torch.Generator().manual_seed(seed)
    embedding = torch.nn.Embedding(vocab, hidden)  # a tied head: verl passes the embedding matrix
    torch.nn.init.normal_(embedding.weight, std=0.5, generator=g)
    h = torch.randn(1, n, hidden, generator=g, requires_grad=True)  # (1, total_nnz, H) as with remove-padding
    return h, embedding.weight, torch.randint(0, vocab, (1, n), generator=g)


def kernel():
    from verl.utils.experimental.torch_functional import FusedLinearForPPO

    return FusedLinearForPPO(impl_backend="torch")


def test_outside_collecting_verl_kernel_is_unchanged():
    h, w, labels = head()
    fused_stats._install()
    log_probs, entropy = kernel()(h, w, labels, temperature=0.7)
    original = fused_stats._ORIGINAL_ATTR
    from verl.utils.experimental.torch_functional import FusedLinearForPPO

    want_lp, want_h = getattr(FusedLinearForPPO, original)(kernel(), h, w, labels, 0.7)
    assert torch.equal(log_probs, want_lp) and torch.equal(entropy, want_h)


def test_inside_collecting_the_statistics_are_those_of_verl_logits():
    h, w, labels = head(1)
    with fused_stats.collecting(NEEDS, {"top_k": 5}):
        log_probs, _ = kernel()(hidden_states=h, vocab_weights=w, input_ids=labels, temperature=0.7)
        stats = fused_stats.take(None, True, NEEDS)
    logits = (h.detach() @ w.detach().t()).squeeze(0) / 0.7
    want = token_stats(logits, labels.squeeze(0), NEEDS | {"log_prob"})
    assert set(stats) == NEEDS
    for name in NEEDS:
        torch.testing.assert_close(stats[name], want[name], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_probs.squeeze(0).detach(), want["log_prob"], rtol=1e-5, atol=1e-5)
    log_probs.sum().backward()  # verl's gradients still flow: the statistics took nothing from the graph
    assert h.grad is not None and torch.isfinite(h.grad).all()


def test_a_forward_that_never_called_the_kernel_says_so():
    with fused_stats.collecting(NEEDS, {}):
        with pytest.raises(RuntimeError, match="did not go through verl's FusedLinearForPPO.*use_fused_kernels=False"):
            fused_stats.take(None, True, NEEDS)


def test_two_kernel_calls_in_one_forward_are_refused():
    h, w, labels = head(2)
    with fused_stats.collecting(NEEDS, {}):
        kernel()(h, w, labels)
        with pytest.raises(RuntimeError, match="ran twice"):
            kernel()(h, w, labels)


@pytest.mark.parametrize("fused, options, refused", [
    (False, {"impl_backend": "triton"}, False), (True, {}, False), (True, {"impl_backend": "torch"}, False),
    (True, {"impl_backend": "liger"}, False), (True, {"impl_backend": "triton"}, True)])
def test_only_the_triton_backend_is_unsupported(fused, options, refused):
    problem = fused_stats.unsupported_backend(fused, options)
    assert (problem is not None) == refused
    if refused:
        assert "impl_backend='triton'" in problem and "impl_backend=torch or liger" in problem
