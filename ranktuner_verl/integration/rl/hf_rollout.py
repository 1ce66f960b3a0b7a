"""``actor_rollout_ref.rollout.name=hf``: a transformers rollout, so verl's real PPO/GRPO trainer runs on a CPU.

verl 0.9.1 ships only GPU rollouts (vLLM, SGLang, TensorRT-LLM). This one has the same three parts:

- ``HFReplica`` (driver side, ``RolloutReplicaRegistry``): starts one ``HFRolloutServer`` Ray actor per replica,
  next to the replica's first trainer worker;
- ``HFRolloutServer`` (the server the agent loop calls): ``generate(prompt_ids, sampling_params) -> TokenOutput``
  with token ids and log-probs. verl's agent loop sends one request per sample, all at once; the server collects
  the requests that arrive together and decodes them as one batch (one batch per prompt length, so no row is padded
  and every row sees exactly the forward the actor recomputes);
- ``HFServerAdapter`` (trainer-worker side, verl's worker rollout registry): after every actor update verl hands it
  the FSDP actor's full weights, which it sends to its server. Sleep and wake-up are no-ops (nothing to free on a CPU).

Sampling: temperature (0 = greedy, as verl's validation asks), top-k, top-p, up to ``max_tokens`` new tokens or an
end-of-sequence token. The log-probs returned are those of the temperature-scaled logits, before top-k/top-p:
what verl's actor recomputes (``training/rollout_probs_diff_max`` compares the two); at temperature 0 those of the
plain logits. The server keeps fp32 weights and computes under autocast to ``rollout.dtype`` when that is bf16/fp16,
as verl's FSDP actor does with its mixed precision.

Registered only where the plugin's CPU platform is active (``rl.on_cpu``): on an accelerator it changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import ray
import torch

from verl.utils.config import omega_conf_to_dataclass
from verl.workers.config import HFModelConfig
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

GATHER_SECONDS = 0.02  # a batch closes once no new request arrived for this long
_log = logging.getLogger(__name__)


def server_name(rollout_name: str, replica_rank: int) -> str:
    """The Ray actor name of a replica's server (the worker-side adapter looks it up by this name)."""
    return f"{rollout_name}_rollout_server_{replica_rank}"


def filter_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Set to -inf the logits outside each row's top-k (k <= 0: all) and outside its top-p nucleus (the smallest set
    of most likely tokens whose probability reaches p; Holtzman et al., arXiv 1904.09751). ``logits``: (B, V)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.size(-1), device=logits.device).expand_as(logits)
    k = torch.where(top_k > 0, top_k, logits.size(-1)).unsqueeze(-1)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # probability of the tokens ranked above each one
    drop = (ranks >= k) | (mass_before >= top_p.unsqueeze(-1))
    drop[:, 0] = False  # the most likely token always stays
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


class HFRolloutServer:
    """A Ray actor holding a transformers copy of the policy; batches the agent loop's requests (module docstring)."""

    def __init__(self, config, model_config, replica_rank: int):
        from transformers import AutoModelForCausalLM

        self.config = omega_conf_to_dataclass(config)
        self.model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.replica_rank = replica_rank
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_config.local_path, dtype=torch.float32, attn_implementation="sdpa").eval()
        tokenizer = self.model_config.tokenizer
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        self.eos_ids = torch.tensor(sorted(i for i in eos if i is not None))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(self.eos_ids[0])
        self.autocast_dtype = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
                               "fp16": torch.float16}.get(str(self.config.dtype))
        self.generator = torch.Generator().manual_seed(int(self.config.seed) + replica_rank)
        self.global_steps = None
        self.weight_version = 0  # how many weight updates this server has received
        self._queue: list[tuple[list[int], dict, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self._model_lock = threading.Lock()  # a weight update never lands in the middle of a batch

    # --- the agent loop's entry point -----------------------------------------------------------------------------
    async def generate(self, request_id, *, prompt_ids, sampling_params, image_data=None, video_data=None,
                       **kwargs) -> TokenOutput:
        if image_data or video_data or kwargs.get("audio_data"):
            raise NotImplementedError("the hf rollout generates text only: no image, video or audio inputs")
        future = asyncio.get_running_loop().create_future()
        self._queue.append((list(prompt_ids), dict(sampling_params), future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._serve())
        return await future

    async def _serve(self) -> None:
        while self._queue:
            seen = -1
            while len(self._queue) != seen and len(self._queue) < self.config.max_num_seqs:
                seen = len(self._queue)
                await asyncio.sleep(GATHER_SECONDS)
            batch, self._queue = self._queue[: self.config.max_num_seqs], self._queue[self.config.max_num_seqs:]
            try:
                outputs = await asyncio.to_thread(self._generate_all, [(ids, params) for ids, params, _ in batch])
            except Exception as error:  # noqa: BLE001  (every waiting request gets the error)
                for _, _, future in batch:
                    future.set_exception(error)
                continue
            for (_, _, future), output in zip(batch, outputs, strict=True):
                future.set_result(output)

    def _generate_all(self, requests: list[tuple[list[int], dict]]) -> list[TokenOutput]:
        """Decode the requests, one batch per prompt length; outputs in request order."""
        by_length: dict[int, list[int]] = {}
        for index, (ids, _) in enumerate(requests):
            by_length.setdefault(len(ids), []).append(index)
        outputs: list[TokenOutput | None] = [None] * len(requests)
        with self._model_lock:
            for indices in by_length.values():
                for index, output in zip(indices, self._decode([requests[i] for i in indices]), strict=True):
                    outputs[index] = output
        return outputs

    def _max_new_tokens(self, prompt_len: int, params: dict) -> int:
        room = self.config.max_model_len - prompt_len if self.config.max_model_len else self.config.response_length
        if room < 1:
            raise ValueError(f"the prompt ({prompt_len} tokens) leaves no room within rollout.max_model_len="
                             f"{self.config.max_model_len}; raise it or shorten the prompts (data.max_prompt_length)")
        asked = params.get("max_tokens", params.get("max_new_tokens")) or self.config.response_length
        return max(1, min(int(asked), self.config.response_length, room))

    @torch.no_grad()
    def _decode(self, requests: list[tuple[list[int], dict]]) -> list[TokenOutput]:
        """Sample continuations of equal-length prompts with a KV cache; log-probs of the temperature-scaled logits."""
        params = [p for _, p in requests]
        temperature = torch.tensor([float(p.get("temperature", 1.0)) for p in params])
        greedy = temperature <= 0
        scale = torch.where(greedy, torch.ones_like(temperature), temperature).unsqueeze(-1)
        top_k = torch.tensor([int(p.get("top_k", -1) or -1) for p in params])
        top_p = torch.tensor([float(p.get("top_p", 1.0) or 1.0) for p in params])
        limit = torch.tensor([self._max_new_tokens(len(ids), p) for ids, p in requests])
        tokens = torch.tensor([ids for ids, _ in requests])
        rows = tokens.size(0)
        new_tokens, new_log_probs = [], []
        done = torch.zeros(rows, dtype=torch.bool)
        past, step_input = None, tokens
        autocast = (torch.autocast("cpu", dtype=self.autocast_dtype) if self.autocast_dtype is not None
                    else torch.autocast("cpu", enabled=False))
        for step in range(int(limit.max())):
            with autocast:
                out = self.model(input_ids=step_input, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[:, -1].float() / scale
            log_probs = logits.log_softmax(-1)
            probs = filter_top_k_top_p(logits, top_k, top_p).softmax(-1)
            sampled = torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
            token = torch.where(greedy, logits.argmax(-1), sampled)
            new_tokens.append(token)
            new_log_probs.append(log_probs.gather(-1, token.unsqueeze(-1)).squeeze(-1))
            done |= torch.isin(token, self.eos_ids) | (step + 1 >= limit)
            if bool(done.all()):
                break
            step_input = token.unsqueeze(-1)
        new_tokens, new_log_probs = torch.stack(new_tokens, 1), torch.stack(new_log_probs, 1)
        outputs = []
        for row in range(rows):
            ends = torch.isin(new_tokens[row], self.eos_ids).nonzero()
            length = min(int(ends[0]) + 1 if len(ends) else new_tokens.size(1), int(limit[row]))
            outputs.append(TokenOutput(
                token_ids=new_tokens[row, :length].tolist(), log_probs=new_log_probs[row, :length].tolist(),
                stop_reason="completed", extra_fields={"global_steps": self.global_steps}))
        return outputs

    # --- weights, sent by HFServerAdapter after every actor update ------------------------------------------------
    def update_weights(self, state_dict: dict[str, torch.Tensor], global_steps: int | None = None) -> int:
        with self._model_lock:
            missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
            tied = {"lm_head.weight"} if self.model.config.tie_word_embeddings else set()
            if unexpected or set(missing) - tied:
                raise RuntimeError(f"the actor's weights do not fit the rollout model: missing {missing}, "
                                   f"unexpected {unexpected}")
            self.weight_version += 1
        if global_steps is not None:
            self.global_steps = global_steps
        return self.weight_version

    def get_weight_version(self) -> int:
        return self.weight_version

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    # --- what verl's replica and checkpoint manager call; nothing to do on a CPU ----------------------------------
    async def wake_up(self, tags=None) -> None:
        return None

    async def sleep(self) -> None:
        return None

    clear_kv_cache = release_kv_cache = resume_kv_cache = resume_generation = stop_profile = sleep

    async def wait_for_requests_to_drain(self) -> None:
        while self._queue or (self._worker is not None and not self._worker.done()):
            await asyncio.sleep(GATHER_SECONDS)

    async def abort_all_requests(self, reject_request: bool = False, **kwargs) -> dict:
        await self.wait_for_requests_to_drain()  # a CPU batch is short: let it finish rather than abort it
        return {"aborted_count": 0, "request_ids": []}

    async def start_profile(self, **kwargs) -> None:
        return None


class HFReplica(RolloutReplica):
    """One ``HFRolloutServer`` per replica (rollout tensor/pipeline/data parallel sizes must be 1)."""

    async def launch_servers(self):
        if self.world_size != 1:
            raise ValueError(
                "the hf rollout runs one process per replica: set actor_rollout_ref.rollout.tensor_model_parallel_size"
                f", data_parallel_size and pipeline_model_parallel_size to 1 (their product is {self.world_size})")
        if not self.workers:
            raise ValueError("the hf rollout runs only next to verl's trainer workers (hybrid engine), not standalone")
        node_id = await self.workers[0].__ray_call__.remote(lambda _self: ray.get_runtime_context().get_node_id())
        server = ray.remote(HFRolloutServer).options(
            name=server_name(self.config.name, self.replica_rank),
            num_cpus=0,  # shares the trainer worker's CPUs: rollout and update take turns
            max_concurrency=self.max_concurrency,
            scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id=node_id,
                                                                                              soft=False),
        ).remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"{self.config.name}-rollout-{self.replica_rank}"  # no HTTP server: the router's key


class HFServerAdapter(BaseRollout):
    """The trainer worker's side: sends the FSDP actor's weights to this replica's server after every update."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        world = (self.config.tensor_model_parallel_size * self.config.data_parallel_size
                 * self.config.pipeline_model_parallel_size)
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.sends = rank % world == 0  # the replica's first rank talks to its server
        self._server = None

    def _server_handle(self):
        if self._server is None:
            self._server = ray.get_actor(server_name(self.config.name, self.replica_rank))
        return self._server

    async def update_weights(self, weights, global_steps: int | None = None, wire_format: str = "named_tensors",
                             **kwargs):
        if wire_format != "named_tensors" or kwargs.get("peft_config") is not None:
            raise NotImplementedError("the hf rollout takes full weights only (no delta sync, no unmerged LoRA; "
                                      "set actor_rollout_ref.model.lora.merge=True)")
        state = {}
        for name, tensor in weights:  # every rank iterates: gathering a sharded tensor is a collective
            if self.sends:
                state[name] = tensor.detach().to("cpu", dtype=torch.float32, copy=True)
        if self.sends:
            await self._server_handle().update_weights.remote(state, global_steps)

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None
