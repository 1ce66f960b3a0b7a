"""Actor update time of the token-weighted policy losses through verl's real actor worker on CPU, as a ratio to
verl's ``vanilla`` in the same run.

    python -m ranktuner_verl.bench.rl [--vocab 151936] [--hidden 64] [--steps 12] [--methods ranktuner]

A tiny Qwen2 body (hidden 64, 2 layers) with a realistic vocabulary (Qwen's 151,936), so the loss head and our
statistics dominate the update: the worst case for their overhead (``--hidden 896``: the head of Qwen2.5-0.5B).
Each variant runs ``train_batch`` on the same GRPO-like batch on one actor worker, the variants taking turns update by
update (``actor_step.time_interleaved``); the time is the median over its updates after the first, the ratio the
median over the rounds of its update's time over the same round's ``vanilla`` update (``paired_ratio``: a slow spell
of the machine then cancels, where a ratio of medians would keep it). Cases and targets: ``bench.cases``.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from ranktuner_verl.bench.cases import BenchParser, add_methods_argument, chosen_cases

BASELINE = "vanilla"  # verl's own policy loss


def paired_ratio(seconds: dict[str, list[float]], name: str, baseline: str = BASELINE) -> float:
    """Median over the rounds after the first of ``seconds[name][i] / seconds[baseline][i]``."""
    ratios = [a / b for a, b in zip(seconds[name], seconds[baseline])]
    return statistics.median(ratios[1:] or ratios)


def main(argv=None) -> None:
    parser = BenchParser(__doc__)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=64, help="64: the head dominates (worst case); 896: Qwen2.5-0.5B")
    parser.add_argument("--steps", type=int, default=12, help="updates per variant, taking turns; the first is not timed")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--response-len", type=int, default=192)
    add_methods_argument(parser)
    args = parser.parse_args(argv)
    chosen = chosen_cases(parser, args.methods)
    variants = {BASELINE: {"loss_mode": BASELINE}, **{label: case.policy_loss for label, case in chosen.items()}}

    from ranktuner_verl.data.tiny import build_model
    from ranktuner_verl.integration.rl.actor_step import time_interleaved

    shape = dict(batch=args.batch, micro_batch=args.micro_batch, prompt_len=args.prompt_len,
                 response_len=args.response_len, param_dtype="fp32")
    with tempfile.TemporaryDirectory() as tmp:
        build_model(Path(tmp) / "model", vocab_size=args.vocab, hidden_size=args.hidden)
        seconds = time_interleaved(str(Path(tmp) / "model"), variants, args.steps, **shape)
    times = {name: statistics.median(values[1:] or values) for name, values in seconds.items()}
    tokens = args.batch * (args.prompt_len + args.response_len)
    print(f"actor update (train_batch), V={args.vocab}, hidden {args.hidden}, {args.batch} sequences <= {tokens} "
          f"tokens, micro-batch {args.micro_batch}, median of {max(args.steps - 1, 1)} rounds")
    for name, median in times.items():
        limit = chosen[name].target("rl") if name in chosen else None
        target = f"  (target <= {limit}x)" if limit else ""
        print(f"  {name:<20} {median:8.3f} s   {paired_ratio(seconds, name):5.2f}x{target}")


if __name__ == "__main__":
    main()
