"""Sampling completions for benchmark problems, resumable (the backends are in ``ranktuner_verl.eval.backends``).

The prompt is the model's chat template applied to the benchmark's system prompt (math and multiple choice: the
Qwen2.5-Math CoT prompt) and the problem as the user turn (docs/methods.md, "The paper's setup"). Sampling
defaults are the paper's: n = 16, temperature 1.0, top_p 1.0, 4096 new tokens, seed 0.

A problem's missing samples are one request with one seed, derived from (seed, problem id, first missing sample),
so a problem's samples do not depend on which other problems run with them. ``generate_completions`` appends a
problem's finished completions to ``completions.jsonl`` and skips the samples already there, so an interrupted
run resumes where it stopped and ends with the same completions as an uninterrupted one (HF: problem by problem;
vLLM: chunk by chunk). ``generation.json`` records the settings, the stop tokens, the context length and the
effective new-token budget (the context minus the longest prompt, when that is below ``max_new_tokens``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

from ranktuner_verl.eval.backends import Request, SamplingConfig, problem_seed
from ranktuner_verl.eval.benchmarks import Problem, as_sampled, per_sample_order
from ranktuner_verl.data.jsonl import read_jsonl
from ranktuner_verl.data.prompts import COT_SYSTEM_PROMPT, to_messages

logger = logging.getLogger(__name__)

COMPLETIONS_FILE = "completions.jsonl"
PROBLEMS_FILE = "problems.jsonl"
SETTINGS_FILE = "generation.json"


def chat_prompt_ids(tokenizer, question: str, system_prompt: str = COT_SYSTEM_PROMPT) -> list[int]:
    """Token ids of the chat-templated prompt (system prompt, question as the user turn, assistant turn opened)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; evaluation "
                         "prompts are chat-formatted, so use a model directory whose tokenizer_config has one")
    text = tokenizer.apply_chat_template(to_messages(question, system_prompt=system_prompt), tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


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
    prompts = {p.id: tuple(chat_prompt_ids(backend.tokenizer, p.question, system_prompt)) for p in problems}
    budget = token_budget(sampling.max_new_tokens, backend.context_length, [len(x) for x in prompts.values()])
    settings = {"model": backend.model_path, "backend": backend.name, "system_prompt": system_prompt,
                **asdict(sampling), "stop_tokens": backend.stop_tokens, "context_length": backend.context_length,
                "effective_max_new_tokens": budget}
    if budget["capped_prompts"]:
        logger.warning("%s: the %d-token context leaves %d of %d prompts fewer than max_new_tokens=%d new tokens "
                       "(as few as %d); recorded in generation.json", out_dir, backend.context_length,
                       budget["capped_prompts"], len(problems), sampling.max_new_tokens, budget["min"])
    out_dir.mkdir(parents=True, exist_ok=True)
    _claim_folder(out_dir, problems, settings)

    path = out_dir / COMPLETIONS_FILE
    done = read_completions(path, repair=True)
    todo = []
    for problem in problems:
        missing = tuple(s for s in range(sampling.n) if (problem.id, s) not in done)
        if not missing:
            continue
        if per_sample_order(problem):  # each sample sees its own choice order: one request per sample
            groups = [((s,), tuple(chat_prompt_ids(backend.tokenizer, as_sampled(problem, s).question, system_prompt)))
                      for s in missing]
        else:
            groups = [(missing, prompts[problem.id])]
        for samples, prompt in groups:
            limit = new_token_limit(sampling.max_new_tokens, backend.context_length, len(prompt))
            todo.append(Request(problem.id, samples, prompt, problem_seed(sampling.seed, problem.id, samples[0]),
                                limit))
    total = len(problems) * sampling.n
    if todo:
        logger.info("%s: %d of %d completions to generate", out_dir, sum(len(r.samples) for r in todo), total)
        with open(path, "a", encoding="utf-8") as sink, \
                tqdm(total=total, initial=total - sum(len(r.samples) for r in todo), desc=f"generating {out_dir.name}",
                     unit="sample", disable=not progress) as bar:
            for request, results in backend.generate(todo, sampling):
                records = [{"id": request.problem_id, "sample": sample, "seed": request.seed, **result}
                           for sample, result in zip(request.samples, results)]
                sink.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
                sink.flush()
                done.update({(r["id"], r["sample"]): r for r in records})
                bar.update(len(records))
    return [done[(p.id, s)] for p in problems for s in range(sampling.n)]


def new_token_limit(max_new_tokens: int, context: int | None, prompt_length: int) -> int:
    """The new tokens a prompt really gets: ``min(max_new_tokens, context - prompt length)`` (no context: no cap)."""
    return min(max_new_tokens, context - prompt_length) if context else max_new_tokens


def token_budget(max_new_tokens: int, context: int | None, prompt_lengths: Sequence[int]) -> dict:
    """``new_token_limit`` over the prompts: min, max and how many prompts the context caps. A prompt that fills
    the context is an error."""
    budgets = [new_token_limit(max_new_tokens, context, n) for n in prompt_lengths]
    if min(budgets) < 1:
        longest = max(prompt_lengths)
        raise ValueError(f"a prompt of {longest} tokens leaves no room in the model's {context}-token context; "
                         "raise --max-model-len (vllm) or use a model with a longer context")
    return {"min": min(budgets), "max": max(budgets), "capped_prompts": sum(b < max_new_tokens for b in budgets)}


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
