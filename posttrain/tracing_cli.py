"""`posttrain trace`: causal tracing (ROME-style, docs/methods.md §5.1) of the facts a model knows.

Writes <output>/trace.json (effect tables and `suggested_layers`, read by `unlearn` with `layers: auto`), one
heatmap per kind (trace_hidden.png, trace_mlp.png, trace_attn.png) and facts.jsonl (per-fact results; rerun the
same command to resume).

Facts: a JSON-lines file (or pg:facts/<kind>, or a hub id) whose rows have `subject`, `prompt` (containing the
subject; the answer follows it) and `answer`.
"""

from __future__ import annotations

from posttrain.errors import HelpFormatter, OneLineArgumentParser, exit_on_usage_error
from posttrain.io import check_output_folder
from posttrain.tracing import NOISE_STD_SOURCES, TraceConfig


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(prog="posttrain trace", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or hub id")
    parser.add_argument("--facts", required=True, help="facts: JSON lines, pg:facts/<kind> or a hub id")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--split", default="train", help="dataset split of --facts")
    parser.add_argument("--num_facts", type=int, default=None, help="trace only the first N facts")
    parser.add_argument("--noise_factor", type=float, default=3.0, help="noise std in units of the embedding std")
    parser.add_argument("--noise_std_source", default="subjects", choices=NOISE_STD_SOURCES,
                        help="embedding std of the subject tokens traced, or of the whole embedding matrix")
    parser.add_argument("--num_noisy", type=int, default=10, help="corrupted copies per restoration")
    parser.add_argument("--window", type=int, default=10, help="layers restored together for mlp and attn")
    parser.add_argument("--kinds", default="hidden,mlp,attn", help="comma-separated: hidden, mlp, attn")
    parser.add_argument("--min_effect_share", type=float, default=0.5,
                        help="suggested layers: the smallest contiguous set holding this share of the MLP effect "
                             "at the last subject token")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--batch_size", type=int, default=256, help="corrupted rows per forward pass")
    parser.add_argument("--dtype", default="float32", help="model weights dtype (float32, bfloat16, auto)")
    parser.add_argument("--trust_remote_code", action="store_true", help="run the model repository's own code")
    return parser


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    from posttrain.console import quiet_libraries
    from posttrain.models import check_model_path, load_causal_lm, load_tokenizer
    from posttrain.tracing import load_facts, prepare_trace, run_trace
    from posttrain.tracing_report import summary_lines

    args = build_parser().parse_args(argv)
    config = TraceConfig(noise_factor=args.noise_factor, num_noisy=args.num_noisy, window=args.window,
                         kinds=tuple(kind.strip() for kind in args.kinds.split(",") if kind.strip()),
                         noise_std_source=args.noise_std_source, min_effect_share=args.min_effect_share,
                         num_facts=args.num_facts, seed=args.seed, batch_size=args.batch_size)
    check_model_path(args.model, "--model")
    check_output_folder(args.output, "--output")
    with quiet_libraries():
        facts = load_facts(args.facts, args.split, config.num_facts)
        tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
        prepare_trace(tokenizer, facts, args.output, config, args.model)  # the facts' mistakes, before the model loads
        model = load_causal_lm(args.model, trust_remote_code=args.trust_remote_code, dtype=args.dtype)
        summary = run_trace(model, tokenizer, facts, args.output, config, args.model)
    print("\n".join(summary_lines(summary)))
    print(f"trace written to {args.output}/trace.json")


if __name__ == "__main__":
    main()
