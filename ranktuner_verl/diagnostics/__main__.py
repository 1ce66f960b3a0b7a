"""``python -m ranktuner_verl.diagnostics noise|heatmap|plots|report ...``: see ``--help`` of each command.

noise    inject noise into the responses, run the model once, and write the top-share tables under each ranking
         (--rank-by; Markdown, CSV), the per-token records (tokens.jsonl), a heat map and the plots.
heatmap  token heat maps (HTML and PNG) of a few examples, from a model and data or from a tokens.jsonl.
plots    R_t-p_t and E[R_t]-H_t scatter plots, weight histograms, and their data as CSV.
report   the weight histograms and S~1 share of a trained model (end of a run or any checkpoint); with --kind,
         the noise tables too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..methods import METHODS
from .forward import build_methods, split_methods
from .heatmap import CHARS_PER_PANEL, panel_columns, pick_examples, write_heatmap_html, write_heatmap_png
from .noise import NOISE_KINDS
from .plots import write_plots
from .rankings import RANKINGS, ranking_markdown, ranking_table
from .report import write_report
from .table import STATISTICS, read_tokens, table_from_model, weight_column, write_tokens


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is outside (0, 1]")
    return value


def _rankings(text: str) -> list[str]:
    chosen = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in chosen if r not in RANKINGS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown ranking(s) {unknown}; choose from {', '.join(RANKINGS)}")
    return chosen


def _common(parser: argparse.ArgumentParser, tokens_input: bool = True):
    parser.add_argument("--model", help="HF model dir, a verl checkpoint's global_step_N, or a checkpoint root")
    parser.add_argument("--data", help="SFT examples: .parquet or .jsonl ('messages', or 'prompt'+'response')")
    if tokens_input:
        parser.add_argument("--tokens", help="instead of --model/--data: a tokens.jsonl written by an earlier run")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--methods", type=split_methods, default=list(METHODS),
                        help="comma-separated methods, each a name or name:key=value,key=value "
                             f"(default: {','.join(METHODS)})")
    parser.add_argument("--max-examples", type=int, default=None, help="use the first N examples")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="padded tokens per forward batch")
    parser.add_argument("--logit-chunk", type=int, default=1024, help="tokens per LM-head chunk (memory bound)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _noise(parser: argparse.ArgumentParser, kind: str | None):
    parser.add_argument("--kind", choices=NOISE_KINDS, default=kind,
                        help="noise: random tokens, filler words, swapped neighbours" + ("" if kind else
                                                                                         " (default: no noise)"))
    parser.add_argument("--rate", type=float, default=0.05, help="noise events per response token")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-short", action="store_true", help="drop responses too short for one noise event")
    parser.add_argument("--rank-by", type=_rankings, default=["signal"],
                        help=f"comma-separated rankings, from {','.join(RANKINGS)} (default: signal, the paper's)")
    parser.add_argument("--top-share", type=_share, default=0.1, help="share of top-ranked tokens (default 0.1)")
    parser.add_argument("--scope", choices=("global", "sequence"), default="global",
                        help="rank the top tokens over the whole set or within each response")


def _figures(parser: argparse.ArgumentParser):
    parser.add_argument("--color-by", nargs="+", default=["weight"],
                        help=f"heat map panels: weight (every method), w:<method>, {', '.join(STATISTICS)}")
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
    _noise(noise, "random")
    noise.add_argument("--no-figures", action="store_true", help="only the tables and tokens.jsonl")
    _figures(noise)
    heatmap = commands.add_parser("heatmap", help="token heat maps, HTML and PNG")
    _common(heatmap)
    _figures(heatmap)
    plots = commands.add_parser("plots", help="rank/probability scatter plots and weight histograms")
    _common(plots)
    report = commands.add_parser("report", help="weights and S~1 share of a trained model (+ noise tables)")
    _common(report, tokens_input=False)
    _noise(report, None)
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
        panel_columns(list(STATISTICS) + [weight_column(label) for label in methods], args.color_by)
    return methods


def _table(args, methods: dict):
    if getattr(args, "tokens", None):
        return read_tokens(args.tokens)
    noise = getattr(args, "kind", None)
    noise = None if noise is None else {"kind": noise, "rate": args.rate, "seed": args.seed,
                                        "skip_short": args.skip_short}
    return table_from_model(args.model, args.data, methods, max_examples=args.max_examples, noise=noise,
                            batch_tokens=args.batch_tokens, logit_chunk=args.logit_chunk, device=args.device,
                            dtype=args.dtype, progress=not args.quiet)


def _noise_tables(table, args, out: Path) -> str:
    source = (f"tokens of {args.tokens}" if getattr(args, "tokens", None) else
              f"model {args.model}, data {args.data}, noise {args.kind} at rate {args.rate}, seed {args.seed}")
    result = ranking_table(table, args.rank_by, args.top_share, args.scope, args.seed)
    markdown = ranking_markdown(result, table, args.top_share, args.scope, source)
    out.mkdir(parents=True, exist_ok=True)
    (out / "noise_table.md").write_text(markdown)
    result.to_csv(out / "noise_table.csv", index=False)
    return markdown


def _write_heatmap(table, args, out: Path):
    write_heatmap_html(table, out / "heatmap.html", args.color_by, args.examples, args.count)
    write_heatmap_png(table, out / "heatmap.png", args.color_by, args.examples, args.count, args.width_px)


def run(args) -> list[Path]:
    methods = _check_inputs(args)
    out = Path(args.out)
    table = _table(args, methods)
    if hasattr(args, "color_by"):  # check the heat map's choices against the table before writing anything
        panel_columns(list(table.columns), args.color_by)
        pick_examples(table, args.examples, args.count)
    if args.command == "report":
        source = {"model": str(args.model), "data": str(args.data)}
        if args.kind:
            source["noise"] = f"{args.kind} at rate {args.rate}, seed {args.seed} (the numbers below include it)"
        noise = _noise_tables(table, args, out) if args.kind else None
        return write_report(table, out, source, noise) + ([out / "noise_table.md", out / "noise_table.csv"]
                                                          if args.kind else [])
    if args.command == "noise":
        print(_noise_tables(table, args, out))
        if not args.tokens:
            write_tokens(table, out / "tokens.jsonl")
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
