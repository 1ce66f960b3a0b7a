"""The fused weighted NLL against autograd through log_softmax, and DEFT's official objective."""

import pytest
import torch

from ranktuner_verl import get_method, token_stats, token_weights, weighted_nll
from tests.test_methods import VARIANTS


def reference_loss(name, logits, labels, mask, **params):
    """sum_t m_t sg(w_t) (-log p_t) / sum m, by plain autograd through log_softmax."""
    w = token_weights(name, logits.detach(), labels, mask, **params)
    log_p = torch.log_softmax(logits.float(), -1).gather(1, labels[:, None]).squeeze(1)
    return -(w * log_p * mask).sum() / mask.sum()


@pytest.mark.parametrize("name, params", VARIANTS, ids=[f"{n}{p or ''}" for n, p in VARIANTS])
def test_value_and_gradient_equal_autograd(name, params):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(37, 301, generator=g) * 3
    labels = torch.randint(0, 301, (37,), generator=g)
    mask = torch.rand(37, generator=g) > 0.3
    fused, ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = weighted_nll(name, fused, labels, mask, chunk_rows=5, **params)
    want = reference_loss(name, ref, labels, mask, **params)
    (2.5 * loss).backward()  # an upstream gradient other than 1 reaches the backward pass
    (2.5 * want).backward()
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fused.grad, ref.grad, rtol=1e-4, atol=1e-7)
    assert fused.grad[~mask].abs().max() == 0  # tokens outside the mask get no gradient


def test_chunking_does_not_change_the_result():
    logits = torch.randn(20, 97) * 2
    labels = torch.randint(0, 97, (20,))
    losses = []
    for rows in (1, 6, 20, 64):
        z = logits.clone().requires_grad_()
        weighted_nll("ranktuner", z, labels, chunk_rows=rows, form="exact").backward()
        losses.append(z.grad)
    for grad in losses[1:]:
        torch.testing.assert_close(grad, losses[0], rtol=1e-6, atol=1e-9)


def test_bf16_logits_get_bf16_gradients():
    z = (torch.randn(8, 50) * 2).bfloat16().requires_grad_()
    weighted_nll("dft", z, torch.randint(0, 50, (8,))).backward()
    assert z.grad.dtype == torch.bfloat16 and torch.isfinite(z.grad.float()).all()


def test_deft_weight_form_has_the_official_gradient():
    """DEFT (Wang et al., arXiv 2602.11424): the objective -(p^a - 1)/a with a = sg(sum pi^2) has gradient
    sg(p^a) * grad(-log p), i.e. the gradient of our weighted NLL."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(16, 40, generator=g) * 2
    labels = torch.randint(0, 40, (16,), generator=g)
    official = logits.clone().requires_grad_()
    probs = torch.softmax(official, -1)
    a = (probs * probs).sum(-1).detach()
    p = probs.gather(1, labels[:, None]).squeeze(1)
    (-(p**a - 1) / a).mean().backward()
    ours = logits.clone().requires_grad_()
    weighted_nll("deft", ours, labels).backward()
    torch.testing.assert_close(ours.grad, official.grad, rtol=1e-5, atol=1e-8)
    # and the comparison is not vacuous: plain NLL has another gradient
    plain = logits.clone().requires_grad_()
    weighted_nll("sft", plain, labels).backward()
    assert (plain.grad - official.grad).abs().max() > 1e-3


def test_empty_batch_gives_zero_loss():
    z = torch.zeros(0, 10, requires_grad=True)
    loss = weighted_nll("ranktuner", z, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0 and z.grad.shape == (0, 10)


def test_stats_and_weights_are_detached():
    z = torch.randn(4, 9, requires_grad=True)
    stats = token_stats(z, torch.zeros(4, dtype=torch.long), get_method("ranktuner").needs)
    assert not any(v.requires_grad for v in stats.values())
    assert not get_method("ranktuner").weights(stats).requires_grad
