"""The CPU rollout (``actor_rollout_ref.rollout.name=hf``): registered in verl's two registries only where the CPU
platform is active, and its server's batched decoding against a plain transformers forward (the actor's view)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import types

import pytest
import torch

PROBE = """
import json, verl
import verl.workers.rollout.base as base, verl.workers.rollout.replica as replica
import verl.single_controller.ray.base as ray_base
print("RESULT " + json.dumps({
    "replica": "hf" in replica.RolloutReplicaRegistry._registry,
    "worker": ("hf", "async") in base._ROLLOUT_REGISTRY,
    "resource_check": ray_base.ResourcePoolManager._check_resource_available.__module__,
}))
"""


def _probe(env: dict) -> dict:
    import json

    result = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_registered_on_a_cpu_machine_and_absent_where_an_accelerator_is_in_reach(tmp_path):
    """On this CPU machine: both registries know ``hf`` and the resource check counts CPUs. On a simulated GPU node
    (a fake ``nvidia-smi``, CUDA hidden as Ray hides it from a num_gpus=0 actor): verl's registries and check, as
    stock."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nexit 0\n")
    smi.chmod(0o755)
    gpu_node = {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": ""}
    assert _probe({}) == {"replica": True, "worker": True, "resource_check": "ranktuner_verl.integration.rl.on_cpu"}
    assert _probe(gpu_node) == {"replica": False, "worker": False,
                                "resource_check": "verl.single_controller.ray.base"}


def test_verls_worker_rollout_registry_is_still_the_private_dict_compat_writes():
    """Fails loudly when verl changes the worker-side registry (``compat.register_worker_rollout`` writes it)."""
    import verl.workers.rollout.base as base

    from ranktuner_verl.integration import compat
    from ranktuner_verl.integration.rl.hf_rollout import HFServerAdapter

    assert base._ROLLOUT_REGISTRY[("vllm", "async")] == "verl.workers.rollout.vllm_rollout.ServerAdapter"
    assert base.get_rollout_class("hf", "async") is HFServerAdapter
    with pytest.raises(RuntimeError, match="no longer has the worker rollout registry"):
        compat.register_worker_rollout(types.SimpleNamespace(_ROLLOUT_REGISTRY={}), "hf", "x.Y")


def test_top_k_top_p_keep_what_they_should():
    from ranktuner_verl.integration.rl.hf_rollout import filter_top_k_top_p

    logits = torch.log(torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.1, 0.4, 0.2, 0.3], [0.1, 0.4, 0.2, 0.3]]))
    kept = filter_top_k_top_p(logits, torch.tensor([2, -1, 0]), torch.tensor([1.0, 0.65, 1.0])).isfinite()
    assert kept.tolist() == [[False, True, False, True],   # top-2: 0.4, 0.3
                             [False, True, False, True],   # top-p 0.65: 0.4 + 0.3 reaches it
                             [True, True, True, True]]     # k <= 0, p = 1: everything


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The rollout server of a tiny copy3 model, built in this process (no Ray: the class is a plain one)."""
    from verl.workers.config import HFModelConfig, RolloutConfig

    from ranktuner_verl.data import copy3
    from ranktuner_verl.integration.rl.hf_rollout import HFRolloutServer

    model_dir = tmp_path_factory.mktemp("copy3") / "model"
    copy3.build_model(model_dir)
    config = RolloutConfig(name="hf", response_length=4, prompt_length=8, max_model_len=12, dtype="float32")
    return HFRolloutServer(config, HFModelConfig(path=str(model_dir)), replica_rank=0)


def _generate(server, prompts: list[list[int]], **params) -> list:
    async def all_at_once():  # as verl's agent loop sends them: one request per sample, concurrently
        return await asyncio.gather(*[server.generate(f"r{i}", prompt_ids=ids, sampling_params=dict(params))
                                      for i, ids in enumerate(prompts)])

    calls = []
    decode = server._decode
    server._decode = lambda requests: calls.append(len(requests)) or decode(requests)
    try:
        return asyncio.run(all_at_once()), calls
    finally:
        server._decode = decode


def test_concurrent_requests_decode_as_one_batch_per_prompt_length_with_the_actors_log_probs(server):
    """Eight samples of two prompts plus one longer prompt: two batches (8 + 1 rows, no padding). Each returned
    log-prob equals log_softmax(logits / T) of one forward over prompt + response, which is what verl's actor
    recomputes; responses stop at the end-of-sequence token or after max_tokens."""
    tok = server.model_config.tokenizer
    prompts = [tok("407=")["input_ids"]] * 4 + [tok("123=")["input_ids"]] * 4 + [tok("9876=")["input_ids"]]
    outputs, calls = _generate(server, prompts, temperature=0.7, top_p=1.0, top_k=-1, max_tokens=4)
    assert sorted(calls) == [1, 8]
    for ids, out in zip(prompts, outputs, strict=True):
        assert 1 <= len(out.token_ids) <= 4 and len(out.log_probs) == len(out.token_ids)
        ends = [i for i, t in enumerate(out.token_ids) if t in server.eos_ids.tolist()]
        assert ends in ([], [len(out.token_ids) - 1])
        full = torch.tensor([ids + out.token_ids])
        with torch.no_grad():
            logits = server.model(full).logits[0, len(ids) - 1:-1] / 0.7
        expected = logits.log_softmax(-1).gather(-1, torch.tensor(out.token_ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(out.log_probs), expected, atol=1e-5, rtol=0)


def test_temperature_zero_is_greedy_and_max_tokens_and_top_k_hold(server):
    tok = server.model_config.tokenizer
    prompt = tok("407=")["input_ids"]
    greedy, _ = _generate(server, [prompt] * 3, temperature=0, top_p=1.0, top_k=-1)
    assert greedy[0].token_ids == greedy[1].token_ids == greedy[2].token_ids
    with torch.no_grad():
        first = server.model(torch.tensor([prompt])).logits[0, -1]
    assert greedy[0].token_ids[0] == int(first.argmax())
    top1, _ = _generate(server, [prompt] * 6, temperature=1.0, top_k=1, max_tokens=2)
    assert all(out.token_ids == greedy[0].token_ids[:2] for out in top1)  # top-k 1 is greedy, however hot


def test_weight_updates_replace_the_models_weights_and_a_mismatch_is_refused(server):
    state = {name: torch.zeros_like(value) for name, value in server.model.state_dict().items()}
    version = server.get_weight_version()
    original = {name: value.clone() for name, value in server.model.state_dict().items()}
    try:
        assert server.update_weights(state, global_steps=3) == version + 1 and server.global_steps == 3
        assert all(bool((value == 0).all()) for value in server.model.state_dict().values())
        with pytest.raises(RuntimeError, match="do not fit the rollout model"):
            server.update_weights({"not.a.weight": torch.zeros(1)})
    finally:
        server.model.load_state_dict(original)
