"""``python -m ranktuner_verl.diagnostics noise|heatmap|plots|report ...``: see ``--help`` of each command.

noise    inject noise into the responses, run the model once, and write the top-share table (Markdown, CSV),
         the per-token records (tokens.jsonl), a heat map and the plots.
heatmap  token heat maps (HTML and PNG) of a few examples, from a model and data or from a tokens.jsonl.
plots    R_t-p_t and E[R_t]-H_t scatter plots, weight histograms, and their data as CSV.
report   the weight histograms and noise-region share of a trained model (end of a run or any checkpoint).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from ..methods import METHODS
from .examples import load_examples, tokenize_examples
from .forward import build_methods, load_model, load_tokenizer, token_table, weight_columns
from .heatmap import CHARS_PER_PANEL, STAT_LABELS, panel_columns, pick_examples, write_heatmap_html, write_heatmap_png
from .noise import NOISE_KINDS, inject_noise, noise_table, table_markdown
from .plots import write_plots
from .report import run_report


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is outside (0, 1]")
    return value


def _common(parser: argparse.ArgumentParser, tokens_input: bool = True):
    parser.add_argument("--model", help="HF model dir (or a verl checkpoint's global_step_N folder)")
    parser.add_argument("--data", help="SFT examples: .parquet or .jsonl ('messages', or 'prompt'+'response')")
    if tokens_input:
        parser.add_argument("--tokens", help="instead of --model/--data: a tokens.jsonl written by an earlier run")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--methods", nargs="+", default=list(METHODS),
                        help="methods as name or name:key=value,key=value (default: all six)")
    parser.add_argument("--max-examples", type=int, default=None, help="use the first N examples")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="padded tokens per forward batch")
    parser.add_argument("--logit-chunk", type=int, default=1024, help="tokens per LM-head chunk (memory bound)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _figures(parser: argparse.ArgumentParser):
    parser.add_argument("--color-by", nargs="+", default=["weight"],
                        help=f"heat map panels: weight (every method), w:<method>, {', '.join(STAT_LABELS)}")
    parser.add_argument("--examples", type=int, nargs="+", default=None, help="example ids to draw in the heat map")
    parser.add_argument("--count", type=int, default=4, help="how many examples the heat map shows")
    parser.add_argument("--width-px", type=int, default=None,
                        help=f"heat map PNG width (default: {CHARS_PER_PANEL} characters a panel)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ranktuner_verl.diagnostics", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    noise = commands.add_parser("noise", help="the noise-injection diagnosis (RankTuner Tab. 1)")
    _common(noise)
    noise.add_argument("--kind", choices=NOISE_KINDS, default="random", help="noise: random tokens, filler words, "
                       "swapped neighbours")
    noise.add_argument("--rate", type=float, default=0.05, help="noise events per response token")
    noise.add_argument("--seed", type=int, default=0)
    noise.add_argument("--skip-short", action="store_true", help="drop responses too short for one noise event")
    noise.add_argument("--top-share", type=_share, default=0.1, help="share of highest-weight tokens (default 0.1)")
    noise.add_argument("--scope", choices=("global", "sequence"), default="global",
                       help="rank the top tokens over the whole set or within each response")
    noise.add_argument("--no-figures", action="store_true", help="only the table and tokens.jsonl")
    _figures(noise)
    heatmap = commands.add_parser("heatmap", help="token heat maps, HTML and PNG")
    _common(heatmap)
    _figures(heatmap)
    plots = commands.add_parser("plots", help="rank/probability scatter plots and weight histograms")
    _common(plots)
    report = commands.add_parser("report", help="weights and noise-region share of a trained model")
    _common(report, tokens_input=False)
    report.set_defaults(max_examples=256)
    return parser


def _check_inputs(args) -> dict:
    """Fail before any work: the inputs given, the methods, the heat map columns. Returns the methods."""
    if getattr(args, "tokens", None):
        if args.model or args.data:
            raise ValueError("Give either --tokens or --model with --data, not both.")
        if not Path(args.tokens).is_file():
            raise FileNotFoundError(f"--tokens {args.tokens} does not exist; pass the tokens.jsonl of an earlier run.")
        return {}
    if not args.model or not args.data:
        raise ValueError("Give --model and --data (or --tokens with the tokens.jsonl of an earlier run).")
    methods = build_methods(args.methods)
    if hasattr(args, "color_by"):
        panel_columns(list(STAT_LABELS) + [f"w:{label}" for label in methods], args.color_by)
    return methods


def _token_table(args, methods: dict, inject: bool = False) -> pd.DataFrame:
    if args.tokens:
        return pd.read_json(args.tokens, lines=True, dtype={"token": str})
    tokenizer = load_tokenizer(args.model)
    examples = tokenize_examples(tokenizer, load_examples(args.data, args.max_examples))
    if inject:
        examples = inject_noise(examples, tokenizer, args.kind, args.rate, args.seed, args.skip_short)
    model = load_model(args.model, args.device, args.dtype)
    return token_table(model, tokenizer, examples, methods, args.batch_tokens, args.logit_chunk, not args.quiet)


def _write_heatmap(table: pd.DataFrame, args, out: Path):
    write_heatmap_html(table, out / "heatmap.html", args.color_by, args.examples, args.count)
    write_heatmap_png(table, out / "heatmap.png", args.color_by, args.examples, args.count, args.width_px)


def run(args) -> list[Path]:
    methods = _check_inputs(args)
    out = Path(args.out)
    if args.command == "report":
        return [run_report(args.model, args.data, out, args.methods, args.max_examples, args.batch_tokens,
                           args.device, args.dtype, not args.quiet)]
    table = _token_table(args, methods, inject=args.command == "noise" and not args.tokens)
    if hasattr(args, "color_by"):  # check the heat map's choices against the table before writing anything
        panel_columns(list(table.columns), args.color_by)
        pick_examples(table, args.examples, args.count)
    if args.command == "noise":
        result = noise_table(table, weight_columns(table), args.top_share, args.scope, args.seed)
        caption = (f"Noise-injection diagnosis: {int(table['is_noise'].sum())} noise tokens of {len(table)} "
                   f"({table['is_noise'].mean():.2%}), {table['example'].nunique()} responses"
                   + ("" if args.tokens else f", kind {args.kind}, rate {args.rate}, seed {args.seed}") + ".")
        markdown = table_markdown(result, args.top_share, args.scope, caption)
        out.mkdir(parents=True, exist_ok=True)
        (out / "noise_table.md").write_text(markdown)
        result.to_csv(out / "noise_table.csv", index=False)
        if not args.tokens:
            table.to_json(out / "tokens.jsonl", orient="records", lines=True, force_ascii=False)
        print(markdown)
        if not args.no_figures:
            _write_heatmap(table, args, out)
            write_plots(table, out)
    elif args.command == "heatmap":
        _write_heatmap(table, args, out)
    else:
        write_plots(table, out)
    return sorted(out.iterdir())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        written = run(args)
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("wrote: " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
