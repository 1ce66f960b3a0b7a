"""The statistics from hidden states (``stats.hidden``) against the fp64 oracle (``stats.reference_stats``)."""

import math

import pytest
import torch

from ranktuner_verl.stats import EXPECTED_RANK_BIN_WIDTH, STATS, reference_stats, token_stats
from ranktuner_verl.stats.hidden import token_stats_from_hidden

ALL = tuple(STATS)


def random_head(n, hidden, vocab, seed, scale=1.0):
    """Hidden states, an LM head and labels; logits of std ~ 3 * scale."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g)
    w = torch.randn(vocab, hidden, generator=g) * (3 * scale / math.sqrt(hidden))
    return h, w, torch.randint(0, vocab, (n,), generator=g)


@pytest.mark.parametrize("chunk_rows", [1, 3, None])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_the_oracle(chunk_rows, temperature):
    h, w, labels = random_head(11, 16, 257, 0)
    got = token_stats_from_hidden(h, w, labels, ALL, temperature=temperature, top_k=7, chunk_rows=chunk_rows)
    want = reference_stats(h.double() @ w.double().t() / temperature, labels, top_k=7)
    assert set(got) == set(ALL)
    for name in ALL:
        torch.testing.assert_close(got[name].double(), want[name], rtol=2e-5, atol=2e-5, msg=name)


def test_batch_dims_and_only_what_is_asked():
    h, w, labels = random_head(12, 8, 50, 1)
    flat = token_stats_from_hidden(h, w, labels, {"rank", "entropy"})
    batched = token_stats_from_hidden(h.view(3, 4, 8), w, labels.view(3, 4), {"rank", "entropy"}, chunk_rows=5)
    assert set(batched) == {"rank", "entropy"}
    for name in flat:
        assert batched[name].shape == (3, 4)
        torch.testing.assert_close(batched[name].view(-1), flat[name], rtol=1e-6, atol=1e-6)


def test_equals_token_stats_on_the_materialised_logits_under_bf16_autocast():
    """Under verl's mixed precision the logits are bf16 (the matmul runs in autocast, as in verl's fused kernel, and as
    the unfused LM head computes them): the statistics are ``token_stats`` of exactly these logits."""
    h, w, labels = random_head(9, 32, 3000, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = (h @ w.t()) / 0.7
        got = token_stats_from_hidden(h, w, labels, ALL, temperature=0.7, chunk_rows=4)
        want = token_stats(logits, labels, ALL)
    assert logits.dtype == torch.bfloat16
    exact = reference_stats(logits.double(), labels)  # fp64 oracle on the same bf16 logits
    for name in ALL:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-6, msg=name)
        bound = 1e-4 * exact[name].abs() if name == "expected_rank" else 2e-5  # E[R]: the histogram's bound
        assert ((got[name].double() - exact[name]).abs() <= bound + 1e-6).all(), name


def test_bad_input_names_the_problem():
    h, w, labels = random_head(4, 8, 30, 3)
    with pytest.raises(ValueError, match="valid:"):
        token_stats_from_hidden(h, w, labels, {"rank", "perplexity"})
    with pytest.raises(ValueError, match=r"weight \[V, H\]"):
        token_stats_from_hidden(h, w[:, :4], labels, {"rank"})
    with pytest.raises(ValueError, match="labels"):
        token_stats_from_hidden(h, w, labels[:3], {"rank"})
    with pytest.raises(ValueError, match="temperature"):
        token_stats_from_hidden(h, w, labels, {"rank"}, temperature=0.0)


def test_largest_allocation_is_one_chunk_of_logits_not_n_times_v():
    """With 8x the tokens the largest single allocation is the same, and it is bounded by a chunk of rows."""
    vocab, chunk = 10_000, 4  # above the exact-sort threshold: the histogram path

    def largest_alloc(n):
        h, w, labels = random_head(n, 16, vocab, 0)
        with torch.profiler.profile(profile_memory=True) as prof:
            token_stats_from_hidden(h, w, labels, ALL, chunk_rows=chunk)
        return max(e.cpu_memory_usage for e in prof.events())

    sizes = [largest_alloc(n) for n in (8, 64)]
    assert sizes[1] <= sizes[0]
    n_bins = (2 * math.log(vocab) + 10) / EXPECTED_RANK_BIN_WIDTH + 1
    assert sizes[0] <= chunk * max(vocab, n_bins) * 8  # one [chunk, max(V, bins)] tensor of 8-byte elements
    assert sizes[1] <= 64 * vocab * 4 / 4  # a quarter of the [64, V] fp32 logits of the larger case, at most


def _sharded_head_rank(rank: int, world: int, port: int) -> None:
    """One rank of a tensor-parallel LM head: the weight a DTensor sharded over the vocabulary, as verl's fused path
    receives it; the statistics of the fused branch must be those of the whole head."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from ranktuner_verl.integration.fused_stats import _Request

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        h, w, labels = random_head(7, 16, 301, 5)
        sharded = distribute_tensor(w, init_device_mesh("cpu", (world,)), [Shard(0)])
        assert sharded.to_local().shape[0] < w.shape[0]  # each rank holds a slice of the vocabulary
        request = _Request(frozenset(ALL), {"top_k": 7})
        request.compute(h, sharded, labels, 0.7)
        want = token_stats_from_hidden(h, w, labels, ALL, temperature=0.7, top_k=7)
        for name in ALL:
            torch.testing.assert_close(request.stats[name], want[name], rtol=0, atol=0, msg=name)
    finally:
        dist.destroy_process_group()


def test_a_vocabulary_sharded_dtensor_head_gives_the_whole_heads_statistics():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_sharded_head_rank, args=(2, port), nprocs=2, join=True)
