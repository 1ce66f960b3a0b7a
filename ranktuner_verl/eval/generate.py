"""Sampling completions for benchmark problems, resumable, with two backends behind one interface.

- ``HFBackend`` ("hf"): Hugging Face transformers, CPU by default; for the tests and small models.
- ``VLLMBackend`` ("vllm"): vLLM on GPUs, tensor parallel inside a replica. vLLM is imported only when this
  backend is built.
Both run data parallel on request: one process per replica, each pinned to its own GPUs (or CPU cores).

The prompt is the model's chat template applied to the Qwen2.5-Math CoT system prompt and the problem as the user
turn (docs/methods.md, "The paper's setup"). Sampling defaults are the paper's: n = 16, temperature 1.0, top_p 1.0,
4096 new tokens, seed 0; no top-k, no repetition penalty, whatever the model's generation_config says.

Every sample is its own request with its own seed, derived from (seed, problem id, sample index), so a sample's
text does not depend on which other samples run with it. ``generate_completions`` appends each finished completion
to ``completions.jsonl`` and skips the (problem, sample) pairs already there, so an interrupted run resumes where it
stopped and ends with the same completions as an uninterrupted one (HF: sample by sample; vLLM: chunk by chunk).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ranktuner_verl.data.benchmarks import Problem
from ranktuner_verl.data.jsonl import read_jsonl
from ranktuner_verl.data.prompts import COT_SYSTEM_PROMPT, to_messages

logger = logging.getLogger(__name__)

COMPLETIONS_FILE = "completions.jsonl"
PROBLEMS_FILE = "problems.jsonl"
SETTINGS_FILE = "generation.json"


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
    """One sample to draw: the prompt's token ids and the sample's own seed."""

    problem_id: str
    sample: int
    prompt_token_ids: tuple[int, ...]
    seed: int


def sample_seed(seed: int, problem_id: str, sample: int) -> int:
    """A 31-bit seed for one sample, fixed by (run seed, problem id, sample index) alone."""
    digest = hashlib.sha256(f"{seed}\x00{problem_id}\x00{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def chat_prompt_ids(tokenizer, question: str, system_prompt: str = COT_SYSTEM_PROMPT) -> list[int]:
    """Token ids of the chat-templated prompt (system prompt, question as the user turn, assistant turn opened)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; evaluation "
                         "prompts are chat-formatted, so use a model directory whose tokenizer_config has one")
    text = tokenizer.apply_chat_template(to_messages(question, system_prompt=system_prompt), tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------------------


class Backend:
    """The interface: ``generate(requests, sampling)`` yields (request, result) as results finish, result =
    ``{"completion": text, "num_tokens": int, "finish_reason": "stop" | "length"}``; ``tokenizer`` builds prompts.

    With more than one replica, requests are split over one process per replica (``run_data_parallel``), each
    running this backend with one replica; ``options`` are the constructor arguments such a replica gets.
    """

    name: str

    def __init__(self, model_path: str | Path, options: dict, replicas: list[str | None]):
        from transformers import AutoTokenizer

        self.model_path = str(Path(model_path).resolve())
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.options, self.replicas = options, replicas

    def generate(self, requests: Sequence[Request], sampling: SamplingConfig) -> Iterator[tuple[Request, dict]]:
        if len(self.replicas) > 1:
            return run_data_parallel(self.name, self.model_path, self.options, self.replicas, requests, sampling)
        return self._generate_here(requests, sampling)

    def _generate_here(self, requests: Sequence[Request], sampling: SamplingConfig):
        raise NotImplementedError


class HFBackend(Backend):
    """Hugging Face transformers ``generate``, one sample at a time, seeded per sample.

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
        eos = self._model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else self.tokenizer.eos_token_id])
        if None in eos_ids:
            raise ValueError(f"{self.model_path}: neither generation_config nor the tokenizer names an EOS token")
        greedy = sampling.temperature == 0
        config = GenerationConfig(  # everything explicit: the model's own generation_config must not leak in
            do_sample=not greedy, temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p, top_k=0, repetition_penalty=1.0,
            max_new_tokens=sampling.max_new_tokens, eos_token_id=sorted(eos_ids),
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(eos_ids),
        )
        for request in requests:
            input_ids = torch.tensor([request.prompt_token_ids], device=self.options["device"])
            torch.manual_seed(request.seed)
            with torch.no_grad():
                output = self._model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                              generation_config=config)
            new_tokens = output[0, input_ids.shape[1]:].tolist()
            stopped = bool(new_tokens) and new_tokens[-1] in eos_ids
            yield request, {
                "completion": self.tokenizer.decode(new_tokens, skip_special_tokens=True),
                "num_tokens": len(new_tokens),
                "finish_reason": "stop" if stopped else "length",
            }


class VLLMBackend(Backend):
    """vLLM: ``tensor_parallel_size`` GPUs per replica, ``data_parallel_size`` replicas, each in its own process.

    Requests go to vLLM ``chunk_size`` at a time; a chunk's completions are written when the chunk finishes, so an
    interruption loses at most one chunk per replica.
    """

    name = "vllm"

    def __init__(self, model_path: str | Path, tensor_parallel_size: int = 1, data_parallel_size: int = 1,
                 chunk_size: int = 1024, gpu_memory_utilization: float = 0.9, max_model_len: int | None = None,
                 dtype: str = "auto"):
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
        chunk_size = self.options["chunk_size"]
        for start in range(0, len(requests), chunk_size):
            chunk = requests[start:start + chunk_size]
            params = [SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                                     max_tokens=sampling.max_new_tokens, seed=r.seed) for r in chunk]
            prompts = [{"prompt_token_ids": list(r.prompt_token_ids)} for r in chunk]
            for request, output in zip(chunk, self._llm.generate(prompts, params, use_tqdm=False)):
                sample = output.outputs[0]
                yield request, {"completion": sample.text, "num_tokens": len(sample.token_ids),
                                "finish_reason": "stop" if sample.finish_reason == "stop" else "length"}


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
                                "ranktuner_verl.integration.checkpoints PATH (the eval CLI and eval.sh do this)")
    return BACKENDS[name](model_path, **options)


# ----------------------------------------------------------------------------------------------------------------
# The resumable driver
# ----------------------------------------------------------------------------------------------------------------


def generate_completions(backend, problems: Sequence[Problem], out_dir: str | Path, sampling: SamplingConfig,
                         system_prompt: str = COT_SYSTEM_PROMPT, progress: bool = True) -> list[dict]:
    """Sample ``sampling.n`` completions per problem into ``out_dir/completions.jsonl``, resuming what is there.

    ``out_dir`` also gets ``problems.jsonl`` (id, question, gold answer) and ``generation.json`` (the settings). A
    folder holding another model's, benchmark's or sampling setting's completions is refused; only ``n`` may grow.
    Returns the records ``{id, sample, seed, completion, num_tokens, finish_reason}`` in problem order.
    """
    from tqdm.auto import tqdm

    if not problems:
        raise ValueError("no problems to generate for: the benchmark is empty")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError("problem ids are not unique; the benchmark loader must give every problem its own id")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"model": backend.model_path, "backend": backend.name, "system_prompt": system_prompt,
                **asdict(sampling)}
    _claim_folder(out_dir, problems, settings)

    path = out_dir / COMPLETIONS_FILE
    done = read_completions(path, repair=True)
    todo = []
    for problem in problems:
        missing = [s for s in range(sampling.n) if (problem.id, s) not in done]
        if missing:
            prompt = tuple(chat_prompt_ids(backend.tokenizer, problem.question, system_prompt))
            todo += [Request(problem.id, s, prompt, sample_seed(sampling.seed, problem.id, s)) for s in missing]
    total = len(problems) * sampling.n
    if todo:
        logger.info("%s: %d of %d completions to generate", out_dir, len(todo), total)
        with open(path, "a", encoding="utf-8") as sink, \
                tqdm(total=total, initial=total - len(todo), desc=f"generating {out_dir.name}", unit="sample",
                     disable=not progress) as bar:
            for request, result in backend.generate(todo, sampling):
                record = {"id": request.problem_id, "sample": request.sample, "seed": request.seed, **result}
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                sink.flush()
                done[(request.problem_id, request.sample)] = record
                bar.update()
    return [done[(p.id, s)] for p in problems for s in range(sampling.n)]


def read_completions(path: str | Path, repair: bool = False) -> dict[tuple[str, int], dict]:
    """The records of a ``completions.jsonl`` keyed by (problem id, sample); a missing file is empty.

    A last line without its newline is what a killed writer leaves; with ``repair`` it is cut off (and generated
    again), otherwise it is an error like any other unreadable line.
    """
    path = Path(path)
    if not path.exists():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        if not repair:
            raise ValueError(f"{path} ends in a partial line (an interrupted run); resume the run to repair it")
        keep = data.rfind(b"\n") + 1
        logger.warning("%s: dropping a partial last line left by an interrupted run", path)
        with open(path, "r+b") as handle:
            handle.truncate(keep)
        data = data[:keep]
    records = {}
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records[(str(record["id"]), int(record["sample"]))] = record
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ValueError(f"{path}:{number} is not a completion record; the file is corrupted, "
                             f"move it away to start over") from None
    return records


def read_problems(out_dir: str | Path) -> list[Problem]:
    """The problems a results folder was generated for (its ``problems.jsonl``)."""
    path = Path(out_dir) / PROBLEMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {out_dir} holds no generation results "
                                f"(python -m ranktuner_verl.eval run ... writes them)")
    return [Problem(**row) for row in read_jsonl(path)]


def write_problems(out_dir: str | Path, problems: Iterable[Problem]) -> None:
    """Write ``problems.jsonl`` (id, question, gold answer) atomically."""
    write_text_atomic(Path(out_dir) / PROBLEMS_FILE,
                      "".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in problems))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _claim_folder(out_dir: Path, problems: Sequence[Problem], settings: dict) -> None:
    """Record problems and settings in a fresh folder; in a used one, refuse if they differ (``n`` may grow)."""
    settings_path = out_dir / SETTINGS_FILE
    if not settings_path.exists():
        if (out_dir / COMPLETIONS_FILE).exists():
            raise ValueError(f"{out_dir} has completions but no {SETTINGS_FILE}; use a new output folder")
        write_problems(out_dir, problems)
        write_text_atomic(settings_path, json.dumps(settings, indent=2) + "\n")
        return
    previous = json.loads(settings_path.read_text(encoding="utf-8"))
    changed = sorted(k for k in set(settings) | set(previous) if k != "n" and previous.get(k) != settings.get(k))
    if changed:
        details = ", ".join(f"{k}: {previous.get(k)!r} -> {settings.get(k)!r}" for k in changed)
        raise ValueError(f"{out_dir} holds completions made with other settings ({details}); "
                         "use a new output folder, or the same settings to resume")
    if read_problems(out_dir) != list(problems):
        raise ValueError(f"{out_dir} holds completions for other problems (a different benchmark, file or --limit); "
                         "use a new output folder")
    if settings["n"] > previous["n"]:
        write_text_atomic(settings_path, json.dumps(settings, indent=2) + "\n")
