"""What each RL loss mode does to the token weights and to the size of one update, on tokens sampled from a model.

    python -m ranktuner_verl.diagnostics.confident --out confident_model          # a small trained model (~4 min on a CPU)
    python -m ranktuner_verl.bench.rl_weights --model confident_model
    python -m ranktuner_verl.bench.rl_weights --model confident_model --random-init

An RL update sees tokens the policy sampled, not teacher-forced text. This samples ``--samples`` responses to each of
``--prompts`` prompts of the model's ``sft.jsonl`` (at ``--temperature``, no top-k/top-p; the log-probabilities and
statistics are those of logits / temperature, as verl computes them), then computes every loss mode's
weights exactly as the policy loss does (``ranktuner_verl.stats.token_stats``, the engine hook's function, and
``policy_loss.token_weights``, with the RL defaults), over all responses as one micro-batch, with
``token_weight.mean_one`` off and on. The update's size is the gradient norm of the first update of a step, where
the ratio is 1 and no clip acts: verl's vanilla token-mean loss is -mean_t A_t log pi(y_t), a weighted mode's
-mean_t w_t A_t log pi(y_t). A_t is GRPO's advantage (the reward minus its group's mean, over the group's standard
deviation) of a random 0/1 reward per response: the sign pattern of a real reward, whose values do not matter to
the scale. ``--random-init``: the same tokenizer and prompts with a freshly initialised model (flat distributions).
Prints one row per mode: the weight mean, p10, p50, p90 and share above 1 over the response tokens, and the
gradient norm over vanilla's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ranktuner_verl.bench.cases import BenchParser
from ranktuner_verl.integration.rl.policy_loss import loss_modes, parse_options, token_weights
from ranktuner_verl.stats import nats_to_bits, token_stats

#: (label, loss_mode, token_weight options) measured beside vanilla: every mode with its RL defaults, and
#: RankTuner's exact form.
VARIANTS = [(mode, mode, {}) for mode in loss_modes()] + [("ranktuner exact", "ranktuner", {"form": "exact"})]


def sample(model, tokenizer, prompts: list[str], samples: int, max_new: int, temperature: float,
           seed: int) -> dict:
    """``samples`` responses per prompt at ``temperature``: input ids [B, P + R], the response mask [B, R] (up to and
    including the end-of-sequence token), the prompt width P (prompts left-padded) and the temperature."""
    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**encoded, do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new,
                             num_return_sequences=samples, pad_token_id=tokenizer.pad_token_id)
    width = encoded["input_ids"].shape[1]
    responses = out[:, width:]
    ended = (responses == tokenizer.eos_token_id).long()
    after_eos = (ended.cumsum(1) - ended) > 0  # the tokens after the first end-of-sequence
    attention = torch.cat([encoded["attention_mask"].repeat_interleave(samples, 0), (~after_eos).long()], 1)
    return {"input_ids": out, "attention_mask": attention, "response_mask": ~after_eos, "prompt_width": width,
            "temperature": temperature}


def grpo_advantages(groups: int, samples: int, response_mask: torch.Tensor, seed: int) -> torch.Tensor:
    """A random 0/1 reward per response, normalised within its group of ``samples`` (GRPO), on every response token."""
    g = torch.Generator().manual_seed(seed)
    reward = torch.randint(0, 2, (groups, samples), generator=g).float()
    advantage = (reward - reward.mean(1, keepdim=True)) / (reward.std(1, keepdim=True) + 1e-6)
    return advantage.reshape(-1, 1) * response_mask


def response_log_probs(model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log pi(y_t) [B, R] with grad, the response logits / temperature [B, R, V] detached, and the labels [B, R]."""
    width = batch["prompt_width"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, width - 1 : -1]
    logits = logits / batch["temperature"]
    labels = batch["input_ids"][:, width:]
    log_prob = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1)
    return log_prob, logits.detach(), labels


def measure(model, batch, advantages: torch.Tensor) -> list[dict]:
    """One row per (variant, mean_one): weight quantiles over the response tokens and the update's gradient norm."""
    mask = batch["response_mask"]
    _, logits, labels = response_log_probs(model, batch)
    rows, baseline = [], None
    for label, mode, options in [("vanilla", None, {})] + VARIANTS:
        for mean_one in ((False,) if mode is None else (False, True)):
            if mode is None:
                weights = torch.ones(mask.shape)
            else:
                parsed = parse_options(mode, {**options, "mean_one": mean_one})
                names = parsed.engine_stat_names
                flat = token_stats(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), names,
                                   **parsed.stat_kwargs)
                stats = {name: value.view(mask.shape) for name, value in flat.items()}
                weights = token_weights(parsed, stats, stats.get("log_prob", torch.zeros(mask.shape)), advantages,
                                        mask)
            model.zero_grad()
            log_prob, _, _ = response_log_probs(model, batch)
            loss = -(weights * advantages * log_prob)[mask].sum() / mask.sum()
            loss.backward()
            norm = torch.sqrt(sum(p.grad.double().square().sum() for p in model.parameters() if p.grad is not None))
            baseline = norm if baseline is None else baseline
            w = weights[mask].double()
            q = torch.quantile(w, torch.tensor([0.1, 0.5, 0.9], dtype=torch.double)).tolist()
            rows.append({"mode": label, "mean_one": mean_one, "mean": w.mean().item(), "p10": q[0], "p50": q[1],
                         "p90": q[2], "gt1": (w > 1).double().mean().item(), "grad_ratio": (norm / baseline).item()})
    return rows


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = BenchParser(__doc__)
    parser.add_argument("--model", required=True, help="required: an HF model dir with sft.jsonl "
                        "(python -m ranktuner_verl.diagnostics.confident makes one)")
    parser.add_argument("--random-init", action="store_true", help="re-initialise the model's weights (flat)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4, help="responses per prompt (a GRPO group)")
    parser.add_argument("--max-new", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=1.0, help="the rollout temperature")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if args.random_init:
        torch.manual_seed(args.seed)
        model = type(model)(model.config)
    model.eval()
    rows = [json.loads(line) for line in (Path(args.model) / "sft.jsonl").read_text().splitlines()][: args.prompts]
    prompts = [tokenizer.apply_chat_template(row["messages"][:-1], tokenize=False, add_generation_prompt=True)
               for row in rows]
    batch = sample(model, tokenizer, prompts, args.samples, args.max_new, args.temperature, args.seed)
    advantages = grpo_advantages(len(prompts), args.samples, batch["response_mask"], args.seed)
    mask = batch["response_mask"]
    _, logits, _ = response_log_probs(model, batch)
    labels = torch.zeros(int(mask.sum()), dtype=torch.long)
    entropy_bits = nats_to_bits(token_stats(logits[mask], labels, {"entropy"})["entropy"])
    print(f"{args.model}{' (random init)' if args.random_init else ''}, T = {args.temperature}: {len(prompts)} "
          f"prompts x {args.samples} samples, {int(mask.sum())} response tokens, one micro-batch; entropy median "
          f"{entropy_bits.median():.2f} bits, {(entropy_bits < 2).double().mean():.0%} of the tokens below 2 bits")
    print("| mode | mean_one | weight mean | p10 | p50 | p90 | share > 1 | grad norm / vanilla |")
    print("|---|---|---|---|---|---|---|---|")
    for r in measure(model, batch, advantages):
        print(f"| {r['mode']} | {'on' if r['mean_one'] else 'off'} | {r['mean']:.3f} | {r['p10']:.3f} | "
              f"{r['p50']:.3f} | {r['p90']:.3f} | {r['gt1']:.2f} | {r['grad_ratio']:.2f} |")


if __name__ == "__main__":
    main()
