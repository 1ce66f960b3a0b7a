"""One PPO/GRPO actor update through verl's real actor machinery, on CPU: the RL tests and ``bench_rl`` use it.

verl's PPO trainer needs rollout servers (vLLM/sglang), but its actor update does not: as verl's own
``tests/models/test_engine.py`` does, build the actor's ``TrainingWorker`` (FSDP2 engine), infer the old log-probs,
attach advantages and run ``train_batch`` with ``partial(ppo_loss, config=actor_config)``. Run it in-process
(``run_updates``) or under torchrun for Ulysses (``python -m torch.distributed.run ... -m
ranktuner_verl.integration.rl.actor_step SPEC.json OUT.pt``); the tensors the policy loss saw are recorded.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from contextlib import contextmanager, nullcontext
from functools import partial

import torch

# the per-case knobs and their defaults: loss_mode, token_weight options, engine settings, batch shape
DEFAULTS = dict(loss_mode="vanilla", token_weight={}, temperature=1.0, use_remove_padding=True, ulysses=1,
                param_dtype="fp32", batch=6, prompt_len=12, response_len=20, seed=0, steps=1, lr=1e-2,
                micro_batch=3, old_log_prob_noise=0.3, record=True, record_logits=False, hook=True, fused=False)


def _env_for_one_process() -> None:
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def make_batch(vocab: int, batch: int, prompt_len: int, response_len: int, seed: int):
    """Left-padded prompts, right-padded responses (random lengths), advantages of both signs (GRPO-like: one per
    sequence, broadcast over its tokens)."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (batch, prompt_len + response_len), generator=g)
    prompt_valid = torch.randint(prompt_len // 2, prompt_len + 1, (batch,), generator=g)
    response_valid = torch.randint(response_len // 2, response_len + 1, (batch,), generator=g)
    positions = torch.arange(prompt_len + response_len)
    attention_mask = ((positions >= prompt_len - prompt_valid[:, None])
                      & (positions < prompt_len + response_valid[:, None])).long()
    advantages = torch.randn(batch, generator=g)[:, None].expand(batch, response_len).contiguous()
    return input_ids, attention_mask, advantages


def run_updates(model_path: str, **spec) -> dict:
    """Old log-probs, then ``steps`` actor updates; returns metrics, the recorded policy-loss inputs, parameters."""
    spec = {**DEFAULTS, **spec}
    from verl.utils import tensordict_utils as tu
    from verl.utils.metric import Metric

    actor = _Actor(model_path, spec)
    records, metrics, seconds, initial_params = [], [], [], _parameters(actor.worker)
    recording = _recording(records, spec["record_logits"]) if spec["record"] else nullcontext()
    with recording, _hook_removed(not spec["hook"]):
        actor.use_loss(spec)
        for _ in range(spec["steps"]):
            output, elapsed = actor.update()
            seconds.append(elapsed)
            if output is not None:
                metrics.append({key: Metric.aggregate_dp(value) if isinstance(value, list) and
                                isinstance(value[0], Metric) else value
                                for key, value in tu.get(output, "metrics").items()})
    return {"metrics": metrics, "seconds": seconds, "records": records, "params": _parameters(actor.worker),
            "initial_params": initial_params, "old_log_probs": actor.fields["old_log_probs"],
            "input_ids": actor.fields["input_ids"], "attention_mask": actor.fields["attention_mask"],
            "advantages": actor.fields["advantages"]}


def time_interleaved(model_path: str, variants: dict[str, dict], rounds: int, **spec) -> dict[str, list[float]]:
    """Seconds of each actor update, the ``variants`` (name -> ``loss_mode`` / ``token_weight``) taking turns on one
    worker and one batch for ``rounds`` rounds, so that a slow spell of the machine hits every variant alike."""
    from verl.utils import tensordict_utils as tu

    spec = {**DEFAULTS, **spec}
    actor = _Actor(model_path, spec)
    seconds = {name: [] for name in variants}
    for _ in range(rounds):
        for name, variant in variants.items():
            variant = {**spec, **variant}
            actor.use_loss(variant)
            output, elapsed = actor.update()
            if variant["loss_mode"] != "vanilla" and "actor/weight_mean" not in tu.get(output, "metrics"):
                raise RuntimeError(f"variant {name!r}: the update logged no token weights; its loss did not run")
            seconds[name].append(elapsed)
    return seconds


class _Actor:
    """verl's actor ``TrainingWorker`` (FSDP2 engine) on a GRPO-like batch whose old log-probs it inferred."""

    def __init__(self, model_path: str, spec: dict):
        _env_for_one_process()
        import verl  # noqa: F401  (loads the plugin: CPU platform, engine hook, policy-loss registration)
        from verl import DataProto
        from verl.utils import tensordict_utils as tu
        from verl.utils.model import compute_position_id_with_mask
        from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig
        from verl.workers.engine_workers import TrainingWorker, TrainingWorkerConfig
        from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

        model_config = HFModelConfig(path=model_path, use_remove_padding=spec["use_remove_padding"],
                                     override_config={"attn_implementation": "sdpa"}, use_fused_kernels=spec["fused"],
                                     fused_kernel_options={"impl_backend": "torch"})
        engine_config = FSDPEngineConfig(
            forward_only=False, strategy="fsdp2", ulysses_sequence_parallel_size=spec["ulysses"],
            use_remove_padding=spec["use_remove_padding"], use_dynamic_bsz=False,
            micro_batch_size_per_gpu=spec["micro_batch"], infer_micro_batch_size_per_gpu=spec["micro_batch"],
            mixed_precision={"param_dtype": spec["param_dtype"], "reduce_dtype": "fp32", "buffer_dtype": "fp32"},
        )
        self.worker = TrainingWorker(TrainingWorkerConfig(
            model_type="language_model", model_config=model_config, engine_config=engine_config,
            optimizer_config=FSDPOptimizerConfig(lr=spec["lr"], optimizer="SGD", weight_decay=0.0, clip_grad=1e6),
            checkpoint_config=None))
        self.worker.reset()

        vocab = model_config.hf_config.vocab_size
        input_ids, attention_mask, advantages = make_batch(vocab, spec["batch"], spec["prompt_len"],
                                                           spec["response_len"], spec["seed"])
        prompt_len = spec["prompt_len"]
        self.fields = {"input_ids": input_ids, "attention_mask": attention_mask,
                       "prompts": input_ids[:, :prompt_len], "responses": input_ids[:, prompt_len:],
                       "response_mask": attention_mask[:, prompt_len:],
                       "position_ids": compute_position_id_with_mask(attention_mask)}
        self.meta = {"temperature": spec["temperature"], "global_token_num": attention_mask.sum(-1).tolist()}
        data = left_right_2_no_padding(DataProto.from_single_dict(
            self.fields, meta_info={**self.meta, "compute_loss": False}).to_tensordict())
        inferred = self.worker.infer_batch(data)  # None on ranks that do not hold outputs (Ulysses ranks but the first)
        old_log_probs = [None if inferred is None else no_padding_2_padding(tu.get(inferred, "log_probs"), data)]
        if torch.distributed.get_world_size() > 1:
            torch.distributed.broadcast_object_list(old_log_probs, src=0)
        # off-policy by a known amount, so that some ratios leave the clip range (clip fractions > 0)
        noise = spec["old_log_prob_noise"] * torch.randn(old_log_probs[0].shape,
                                                         generator=torch.Generator().manual_seed(spec["seed"] + 1))
        self.fields.update(old_log_probs=old_log_probs[0] + noise, advantages=advantages)
        self.batch_size = spec["batch"]

    def use_loss(self, spec: dict) -> None:
        """verl's ``ppo_loss`` with ``spec``'s ``loss_mode`` and ``token_weight``, as the actor worker gets it."""
        from verl.workers.config import ActorConfig
        from verl.workers.utils.losses import ppo_loss

        from ranktuner_verl.integration.rl.policy_loss import TokenWeightedPolicyLossConfig

        config = ActorConfig(
            strategy="fsdp2", rollout_n=1, ppo_micro_batch_size_per_gpu=spec["micro_batch"], clip_ratio=0.2,
            policy_loss=TokenWeightedPolicyLossConfig(loss_mode=spec["loss_mode"], token_weight=spec["token_weight"]))
        self.worker.set_loss_fn(partial(ppo_loss, config=config))

    def update(self):
        """One ``train_batch``: (its output, its wall time in seconds)."""
        from verl import DataProto
        from verl.utils import tensordict_utils as tu
        from verl.workers.utils.padding import left_right_2_no_padding

        batch = left_right_2_no_padding(DataProto.from_single_dict(self.fields, meta_info=self.meta).to_tensordict())
        tu.assign_non_tensor(batch, global_batch_size=self.batch_size)
        started = time.perf_counter()
        output = self.worker.train_batch(batch)
        return output, time.perf_counter() - started


def _parameters(worker) -> dict[str, torch.Tensor]:
    return {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for name, p in worker.engine.module.named_parameters()}


@contextmanager
def _recording(records: list, record_logits: bool):
    """Record what the weighted policy loss computes from (its statistics, log-probs, masks, weights), and with
    ``record_logits`` the logits the engine produced, by wrapping the real functions (nothing is replaced)."""
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    from ranktuner_verl.integration.rl import policy_loss

    token_weights, prepare = policy_loss.token_weights, FSDPEngineWithLMHead.prepare_model_outputs

    def recorded_weights(options, stats, log_prob, advantages, response_mask):
        weights = token_weights(options, stats, log_prob, advantages, response_mask)
        records.append({"stats": {k: v.detach().clone() for k, v in stats.items()}, "weights": weights.clone(),
                        "log_prob": log_prob.detach().clone(), "response_mask": response_mask.clone(),
                        "advantages": advantages.clone(), "weights_require_grad": weights.requires_grad})
        return weights

    def recorded_prepare(self, output, output_args, micro_batch, logits_processor_func):
        if logits_processor_func is not None:
            records.append({"logits": output.logits.detach().clone(), "output_args": {
                k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in output_args.items()}})
        return prepare(self, output, output_args, micro_batch, logits_processor_func)

    policy_loss.token_weights = recorded_weights
    if record_logits:
        FSDPEngineWithLMHead.prepare_model_outputs = recorded_prepare
    try:
        yield
    finally:
        policy_loss.token_weights = token_weights
        FSDPEngineWithLMHead.prepare_model_outputs = prepare


@contextmanager
def _hook_removed(remove: bool):
    """verl's own ``prepare_model_outputs`` in place of the hook: a worker where the plugin is not active."""
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    from ranktuner_verl.integration.engine_hook import _ORIGINAL_ATTR

    hooked = FSDPEngineWithLMHead.prepare_model_outputs
    if remove:
        FSDPEngineWithLMHead.prepare_model_outputs = getattr(FSDPEngineWithLMHead, _ORIGINAL_ATTR)
    try:
        yield
    finally:
        FSDPEngineWithLMHead.prepare_model_outputs = hooked


def run_cases(model_path: str, cases: dict[str, dict]) -> dict[str, dict]:
    """``run_updates`` for each named case in this process; a case that raises gives {"error": message}."""
    results = {}
    for name, spec in cases.items():
        try:
            results[name] = run_updates(model_path, **spec)
        except Exception as error:  # noqa: BLE001  (recorded for the caller to check)
            results[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    return results


def main(spec_path: str, out_path: str) -> None:
    """torchrun entry: {"model_path", "cases"} (JSON) in, rank 0's ``run_cases`` result out (torch.save)."""
    spec = json.loads(open(spec_path).read())
    results = run_cases(spec["model_path"], spec["cases"])
    for name, result in results.items():
        if "traceback" in result:
            print(f"rank {os.environ.get('RANK', '0')}, case {name}:\n{result['traceback']}", file=sys.stderr)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(results, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:3])
