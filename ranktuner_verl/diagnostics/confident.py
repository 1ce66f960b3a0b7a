"""A small model with a learned prior in the confident regime, built locally from real math solutions.

    python -m ranktuner_verl.diagnostics.confident --out confident_model        # the docs' version (~4 min)

RankTuner's noise diagnosis (Yu et al., arXiv 2602.01745, Tab. 1) looks at a fine-tuned model on its SFT data, where
most tokens are predicted confidently (p_t > 0.5, H_t < 2 bits). A random model is nowhere near that regime. This
builds one: a byte-level BPE tokenizer trained on the first ``n_examples`` MATH500 solutions (those of at most
``max_tokens`` tokens) and a small Qwen2 trained on them with the plain SFT loss (response tokens only) until it
knows them well. The output folder is an HF model dir that also holds ``sft.jsonl``: the conversations it was trained
on, the SFT data the diagnosis then perturbs. Deterministic: the same settings give the same weights (CPU).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from ranktuner_verl.data.jsonl import read_jsonl
from ranktuner_verl.data.prompts import to_messages
from ranktuner_verl.data.tiny import build_tokenizer, qwen2_model

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "eval" / "math_oai.jsonl"


@dataclass(frozen=True)
class ConfidentSettings:
    """What the model is built from. The defaults are the docs' version; tests use a reduced one."""

    n_examples: int = 64
    max_tokens: int = 160  # skip solutions longer than this (in tokens of the trained tokenizer)
    vocab_size: int = 768
    hidden_size: int = 96
    num_layers: int = 2
    epochs: int = 80
    batch_size: int = 8
    lr: float = 6e-3
    seed: int = 0


#: a reduced build for the tests: 16 short solutions, a smaller model; well under a minute on 2 cores
QUICK = ConfidentSettings(n_examples=16, max_tokens=128, vocab_size=512, hidden_size=64, num_layers=2, epochs=60,
                          batch_size=4, lr=6e-3)


def _tokenize(tokenizer, conversation: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) exactly as the diagnostics read the row (``tokenize_example``)."""
    from ranktuner_verl.diagnostics.examples import Example, tokenize_example

    messages = conversation["messages"]
    tokenized = tokenize_example(tokenizer, Example(messages[:-1], messages[-1]["content"]))
    return tokenized.prompt_ids, tokenized.response_ids


def _train(model, pairs: list[tuple[list[int], list[int]]], settings: ConfidentSettings, pad_id: int,
           progress: bool) -> list[float]:
    """Plain SFT (mean NLL of the response tokens), AdamW with a cosine schedule, one CPU thread; returns the mean
    NLL per epoch."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same sums on every machine (and no thread contention on a shared one)
    try:
        return _epochs(model, pairs, settings, pad_id, progress)
    finally:
        torch.set_num_threads(threads)


def _epochs(model, pairs, settings: ConfidentSettings, pad_id: int, progress: bool) -> list[float]:
    import torch
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(settings.seed)
    steps = settings.epochs * math.ceil(len(pairs) / settings.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    history = []
    for _ in tqdm(range(settings.epochs), desc="training the confident model", disable=not progress):
        order = torch.randperm(len(pairs), generator=generator).tolist()
        total, count = 0.0, 0
        for start in range(0, len(order), settings.batch_size):
            batch = [pairs[i] for i in order[start:start + settings.batch_size]]
            width = max(len(p) + len(r) for p, r in batch)
            ids = torch.full((len(batch), width), pad_id)
            labels = torch.full((len(batch), width), -100)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (prompt, response) in enumerate(batch):
                n = len(prompt) + len(response)
                ids[row, :n] = torch.tensor(prompt + response)
                labels[row, len(prompt):n] = torch.tensor(response)
                mask[row, :n] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            targets = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            n_tokens = int((targets != -100).sum())
            total, count = total + loss.item() * n_tokens, count + n_tokens
        history.append(total / count)
    model.eval()
    return history


def build_confident_model(out_dir: str | Path, settings: ConfidentSettings = ConfidentSettings(),
                          source: str | Path = DEFAULT_SOURCE, progress: bool = True) -> Path:
    """Build the tokenizer, train the model and write both, ``sft.jsonl`` and ``build.json`` to ``out_dir``."""
    from transformers import AutoTokenizer

    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist; pass --source with a jsonl of 'problem' + 'solution' rows "
                                "(MATH500: ../shared/data/eval/math_oai.jsonl).")
    rows = read_jsonl(source)
    if not rows or not {"problem", "solution"} <= rows[0].keys():
        raise ValueError(f"{source} holds no 'problem' + 'solution' rows.")
    out_dir = Path(out_dir)
    trained = build_tokenizer(out_dir, settings.vocab_size, corpus=[r["problem"] for r in rows]
                              + [r["solution"] for r in rows])
    model = qwen2_model(trained, hidden_size=settings.hidden_size, num_layers=settings.num_layers, seed=settings.seed)
    model.config.save_pretrained(out_dir)
    # Tokenise as every reader of the folder will: with the config beside it, AutoTokenizer picks the model's own
    # tokenizer class, whose pre-tokenizer differs from the freshly trained object's.
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    chosen, pairs = [], []
    for row in rows:
        conversation = {"messages": to_messages(row["problem"], row["solution"])}
        prompt, response = _tokenize(tokenizer, conversation)
        if len(response) <= settings.max_tokens:
            chosen.append(conversation)
            pairs.append((prompt, response))
        if len(chosen) == settings.n_examples:
            break
    if len(chosen) < settings.n_examples:
        raise ValueError(f"{source} has only {len(chosen)} solutions of at most {settings.max_tokens} tokens; "
                         f"lower n_examples or raise max_tokens.")
    history = _train(model, pairs, settings, tokenizer.pad_token_id, progress)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "sft.jsonl").write_text("".join(json.dumps(row) + "\n" for row in chosen))
    info = {"source": str(source), "settings": asdict(settings), "response_tokens": sum(len(r) for _, r in pairs),
            "epoch_nll": [round(x, 4) for x in history]}
    (out_dir / "build.json").write_text(json.dumps(info, indent=2))
    return out_dir


def main(argv: list[str] | None = None) -> int:
    defaults = ConfidentSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (an HF model dir with sft.jsonl)")
    parser.add_argument("--source", default=str(DEFAULT_SOURCE), help="jsonl of 'problem' + 'solution' rows")
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    out, source = args.pop("out"), args.pop("source")
    build_confident_model(out, ConfidentSettings(**args), source)
    print(f"wrote {out} (train data: {Path(out) / 'sft.jsonl'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
