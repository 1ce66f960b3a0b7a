"""Generation backends: Hugging Face transformers ("hf", CPU or GPU) and vLLM ("vllm", GPUs), one interface.

A ``Request`` is one problem: its prompt and the samples still to draw, ``n`` of them in one call with one seed
per problem (vLLM: ``SamplingParams(n=..., seed=...)``; transformers: ``num_return_sequences`` after
``torch.manual_seed``), as the Qwen2.5-Math harness samples. Both backends

- stop on every token in ``stop_tokens`` (the chat template's end-of-turn token, the tokenizer's end-of-text,
  ``<|endoftext|>`` when the vocabulary has it, and the model's generation config EOS): a model fine-tuned on
  ChatML ends its turn with ``<|im_end|>`` even when its base tokenizer names only ``<|endoftext|>``;
- cap each request's new tokens at the context length minus the prompt (``Request.max_new_tokens``);
- ignore the model's own generation config for everything else (no top-k, no repetition penalty).

With more than one replica, requests are split over one process per replica (``run_data_parallel``). vLLM is
imported only when its backend is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

END_OF_TEXT = "<|endoftext|>"
DEFAULT_CHUNK_SIZE = 512  # vllm: problems per generate call (x n samples each)


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample; the defaults are the paper's evaluation setup."""

    n: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 4096
    seed: int = 0

    def __post_init__(self):
        problems = []
        if self.n < 1:
            problems.append(f"n (samples per problem) must be >= 1, got {self.n}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class Request:
    """One problem's samples to draw (``samples``: their indices), in one call seeded with ``seed``."""

    problem_id: str
    samples: tuple[int, ...]
    prompt_token_ids: tuple[int, ...]
    seed: int
    max_new_tokens: int


def problem_seed(seed: int, problem_id: str, first_sample: int = 0) -> int:
    """A 31-bit seed for one request, fixed by (run seed, problem id, first sample index) alone."""
    digest = hashlib.sha256(f"{seed}\x00{problem_id}\x00{first_sample}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def stop_tokens(tokenizer, model_path: str | Path | None = None) -> dict[str, int]:
    """token -> id of every token that ends a sample (see the module doc), sorted by id."""
    found, turn = {}, ""
    try:  # a template may refuse a conversation that ends with the assistant: then only the end-of-text tokens
        if getattr(tokenizer, "chat_template", None):
            turn = tokenizer.apply_chat_template([{"role": "user", "content": "q"},
                                                  {"role": "assistant", "content": "\x01"}], tokenize=False)
    except Exception as error:  # noqa: BLE001 - jinja raises whatever the template author chose
        logger.warning("%s: the chat template cannot render an assistant turn (%s); stopping at end-of-text only",
                       model_path, error)
    after = turn.split("\x01", 1)[1] if "\x01" in turn else ""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    for token_id in tokenizer(after, add_special_tokens=False)["input_ids"] if after.strip() else []:
        if token_id in special:  # the first special token after the assistant's text: the end of its turn
            found[tokenizer.convert_ids_to_tokens(token_id)] = token_id
            break
    ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TEXT)
           if END_OF_TEXT in tokenizer.get_vocab() else None]
    config = Path(model_path or "") / "generation_config.json"
    if model_path is not None and config.is_file():
        eos = json.loads(config.read_text()).get("eos_token_id")
        ids += eos if isinstance(eos, list) else [eos]
    for token_id in ids:
        if token_id is not None:
            found[tokenizer.convert_ids_to_tokens(token_id)] = token_id
    if not found:
        raise ValueError(f"{model_path}: the tokenizer, its chat template and the generation config name no "
                         "end-of-text token; generation could not stop")
    return dict(sorted(found.items(), key=lambda item: item[1]))


def context_length(model_path: str | Path) -> int | None:
    """The model's context (``max_position_embeddings`` of its config), or None if it states none."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    value = config.get("max_position_embeddings") or config.get("max_sequence_length")
    return int(value) if value else None


def vllm_sampling_kwargs(request: Request, sampling: SamplingConfig, stop_token_ids: Sequence[int]) -> dict:
    """The ``vllm.SamplingParams`` arguments of one request: all its samples in one call, one seed."""
    return dict(n=len(request.samples), temperature=sampling.temperature, top_p=sampling.top_p,
                max_tokens=request.max_new_tokens, seed=request.seed, stop_token_ids=sorted(stop_token_ids),
                skip_special_tokens=True)


class Backend:
    """The interface: ``generate(requests, sampling)`` yields (request, results) as requests finish, one result
    per sample of the request: ``{"completion": text, "num_tokens": int, "finish_reason": "stop" | "length"}``.

    ``tokenizer`` builds prompts; ``stop_tokens`` and ``context_length`` are recorded in ``generation.json``.
    ``options`` are the constructor arguments a data-parallel replica gets.
    """

    name: str

    def __init__(self, model_path: str | Path, options: dict, replicas: list[str | None]):
        from transformers import AutoTokenizer

        self.model_path = str(Path(model_path).resolve())
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.options, self.replicas = options, replicas
        self.stop_tokens = stop_tokens(self.tokenizer, self.model_path)
        self.context_length = options.get("max_model_len") or context_length(self.model_path)

    def generate(self, requests: Sequence[Request], sampling: SamplingConfig) -> Iterator[tuple[Request, list]]:
        if len(self.replicas) > 1:
            return run_data_parallel(self.name, self.model_path, self.options, self.replicas, requests, sampling)
        return self._generate_here(requests, sampling)

    def _generate_here(self, requests: Sequence[Request], sampling: SamplingConfig):
        raise NotImplementedError


class HFBackend(Backend):
    """Hugging Face transformers ``generate``: one call per problem, ``num_return_sequences`` = its samples.

    ``data_parallel_size`` > 1 runs that many replicas in their own processes: one GPU each with ``device="cuda"``,
    or a share of the CPU cores each with ``device="cpu"``.
    """

    name = "hf"

    def __init__(self, model_path: str | Path, device: str = "cpu", dtype: str = "float32",
                 data_parallel_size: int = 1):
        if data_parallel_size < 1:
            raise ValueError(f"data_parallel_size must be >= 1, got {data_parallel_size}")
        if data_parallel_size > 1 and device not in ("cpu", "cuda"):
            raise ValueError(f"data parallel replicas need device='cpu' or 'cuda' (one GPU each), got {device!r}")
        replicas = _device_groups(data_parallel_size, 1) if device == "cuda" else [None] * data_parallel_size
        super().__init__(model_path, dict(device=device, dtype=dtype), replicas)
        self._model = None

    def _generate_here(self, requests: Sequence[Request], sampling: SamplingConfig):
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig

        if self._model is None:
            self._model = AutoModelForCausalLM.from_pretrained(self.model_path,
                                                               dtype=getattr(torch, self.options["dtype"]))
            self._model.to(self.options["device"]).eval()
        stop_ids = sorted(self.stop_tokens.values())
        greedy = sampling.temperature == 0
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stop_ids[0]
        for request in requests:
            config = GenerationConfig(  # everything explicit: the model's own generation_config must not leak in
                do_sample=not greedy, temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p, top_k=0, repetition_penalty=1.0,
                max_new_tokens=request.max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad,
                num_return_sequences=1 if greedy else len(request.samples))  # greedy: n equal samples, made once
            input_ids = torch.tensor([request.prompt_token_ids], device=self.options["device"])
            torch.manual_seed(request.seed)
            with torch.no_grad():
                output = self._model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                              generation_config=config)
            results = [self._result(row[input_ids.shape[1]:].tolist(), stop_ids) for row in output]
            yield request, results * len(request.samples) if greedy else results

    def _result(self, new_tokens: list[int], stop_ids: list[int]) -> dict:
        """One sample's text up to and without its first stop token (the rest is padding)."""
        end = next((i for i, token in enumerate(new_tokens) if token in stop_ids), None)
        kept = new_tokens if end is None else new_tokens[:end + 1]
        return {"completion": self.tokenizer.decode(kept, skip_special_tokens=True), "num_tokens": len(kept),
                "finish_reason": "length" if end is None else "stop"}


class VLLMBackend(Backend):
    """vLLM: ``tensor_parallel_size`` GPUs per replica, ``data_parallel_size`` replicas, each in its own process.

    Requests go to vLLM ``chunk_size`` problems at a time (each with its n samples); a chunk's completions are
    written when the chunk finishes, so an interruption loses at most one chunk per replica.
    """

    name = "vllm"

    def __init__(self, model_path: str | Path, tensor_parallel_size: int = 1, data_parallel_size: int = 1,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, dtype: str = "auto"):
        try:
            import vllm  # noqa: F401 - fail here, before any work, if the GPU extra is missing
        except ImportError as error:
            raise ImportError("the vllm backend needs vLLM: pip install 'ranktuner-verl[gpu]' "
                              "(or use --backend hf on CPU)") from error
        if tensor_parallel_size < 1 or data_parallel_size < 1 or chunk_size < 1:
            raise ValueError("tensor_parallel_size, data_parallel_size and chunk_size must all be >= 1")
        options = dict(tensor_parallel_size=tensor_parallel_size, chunk_size=chunk_size,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, dtype=dtype)
        super().__init__(model_path, options, _device_groups(data_parallel_size, tensor_parallel_size))
        self._llm = None

    def _generate_here(self, requests: Sequence[Request], sampling: SamplingConfig):
        from vllm import LLM, SamplingParams

        if self._llm is None:
            engine = {k: v for k, v in self.options.items() if k != "chunk_size"}
            self._llm = LLM(model=self.model_path, seed=sampling.seed, **engine)
        stop_ids = list(self.stop_tokens.values())
        chunk_size = self.options["chunk_size"]
        for start in range(0, len(requests), chunk_size):
            chunk = requests[start:start + chunk_size]
            params = [SamplingParams(**vllm_sampling_kwargs(r, sampling, stop_ids)) for r in chunk]
            prompts = [{"prompt_token_ids": list(r.prompt_token_ids)} for r in chunk]
            for request, output in zip(chunk, self._llm.generate(prompts, params, use_tqdm=False)):
                yield request, [{"completion": s.text, "num_tokens": len(s.token_ids),
                                 "finish_reason": "stop" if s.finish_reason == "stop" else "length"}
                                for s in sorted(output.outputs, key=lambda s: s.index)]


def _device_groups(replicas: int, gpus_per_replica: int) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` of each replica: consecutive groups of the visible GPUs."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        import torch

        gpus = [str(i) for i in range(torch.cuda.device_count())]
    if replicas * gpus_per_replica > len(gpus):
        raise ValueError(f"{replicas} replica(s) x {gpus_per_replica} GPU(s) need {replicas * gpus_per_replica} "
                         f"GPUs, but {len(gpus)} are visible ({','.join(gpus) or 'none'}); use fewer")
    return [",".join(gpus[r * gpus_per_replica:(r + 1) * gpus_per_replica]) for r in range(replicas)]


def run_data_parallel(backend: str, model_path: str, options: dict, replicas: list[str | None],
                      requests: Sequence[Request], sampling: SamplingConfig) -> Iterator[tuple[Request, dict]]:
    """Split ``requests`` over one spawned process per replica (``CUDA_VISIBLE_DEVICES`` = its entry, unless None),
    each running a single-replica ``backend``; yield their results as they arrive, through one queue."""
    import multiprocessing
    import queue as queue_module

    if not requests:
        return
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_replica_worker, name=f"{backend}-replica{rank}", args=(
        backend, model_path, options, devices, len(replicas), list(requests[rank::len(replicas)]), sampling, results))
        for rank, devices in enumerate(replicas)]
    for worker in workers:
        worker.start()
    try:
        running = len(workers)
        while running:
            try:
                item = results.get(timeout=5)
            except queue_module.Empty:  # a worker killed outright (OOM, signal) never sends its None
                dead = [w.name for w in workers if w.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"data-parallel worker(s) {dead} died; their error is printed above")
                continue
            if item is None:
                running -= 1
            else:
                yield item
        for worker in workers:
            worker.join()
        failed = [w.name for w in workers if w.exitcode != 0]
        if failed:
            raise RuntimeError(f"data-parallel worker(s) {failed} failed; their error is printed above")
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
                worker.join()


def _replica_worker(backend: str, model_path: str, options: dict, devices: str | None, num_replicas: int,
                    requests: list[Request], sampling: SamplingConfig, results) -> None:
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices  # before CUDA starts in this process
    else:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_replicas))
    try:
        for item in BACKENDS[backend](model_path, **options).generate(requests, sampling):
            results.put(item)
    finally:
        results.put(None)


BACKENDS = {"hf": HFBackend, "vllm": VLLMBackend}


def make_backend(name: str, model_path: str | Path, **options):
    """Build backend ``name`` ("hf" or "vllm") for the model directory ``model_path``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown generation backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if not (Path(model_path) / "config.json").is_file():
        raise FileNotFoundError(f"{model_path} is not a Hugging Face model directory (no config.json); for a verl "
                                "checkpoint or a LoRA run resolve it first: python -m "
                                "ranktuner_verl.checkpoints PATH (the eval CLI and eval.sh do this)")
    return BACKENDS[name](model_path, **options)
