"""`onnxship bench`, `onnxship bench compare`, `onnxship bench merge` (torch-free).

`bench compare` / `bench merge` are routed by onnxship.cli to the parsers `bench-compare` and
`bench-merge` registered here (argparse cannot mix a positional file list with sub-commands).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxship.commands.common import (
    add_command,
    add_config_flags,
    add_session_config,
    config_from_args,
    fraction,
    positive_float,
)

if TYPE_CHECKING:
    from onnxship.runtime_bench.session import SessionConfig
    from onnxship.runtime_bench.session_options import LoadedSessionConfig

BENCH_DESCRIPTION = """\
Measure latency of .onnx files on one ONNX Runtime execution provider. Per model: session
creation and first inference timed separately, then per batch size --warmup untimed runs and
--iterations timed runs (or until --time-budget), reported as p50/p90/p99/mean/std/min and
throughput. Inputs come from the model's input spec (the first dynamic axis is the batch) as
fixed-seed random data, or from --npz. A Markdown table goes to stdout; --json / --csv save it.

related:  onnxship bench compare A.json B.json     B/A ratios, noise flagged
          onnxship bench merge A.json B.json ...   one table across machines
"""

# Deployment scenarios (MLPerf LoadGen) and per-target session options.
SCENARIO_HELP = """\
--scenario single-stream: batch-1 queries one after another, p50/p90/p99 with CIs;
  offline: samples/s at the best of --batch-sizes; server: Poisson arrivals at a QPS,
  --concurrency workers, the highest QPS whose p99 (from scheduled arrival, queueing
  included) stays <= --slo-ms.
--tune-session OUT.json: threads, spinning, graph level and execution mode searched for
  one model at one batch size; --session-config FILE runs exactly those options."""

EXAMPLES = """\
examples:
  onnxship bench artifacts/student-int8.onnx artifacts/student-fp32.onnx --json cpu.json
  onnxship bench model.onnx --provider cuda --batch-sizes 1,64,1024 --cuda-graph
  onnxship bench model.onnx --time-budget 5 --threads 4 --no-spinning
  onnxship bench a.onnx b.onnx --scenario server --slo-ms 5 --json server.json --plot s.png
  onnxship bench model.onnx --tune-session tuned.json --batch-sizes 64
exit codes: 0 measured, 2 bad input (not an ONNX file, truncated, missing external data,
batch size <= 0, dynamic dim without --dim, unknown or unavailable EP, unknown scenario,
--slo-ms <= 0, a QPS the generator cannot issue, --ci-level outside (0, 1), a session
config naming options this onnxruntime lacks); a server SLO missed at every QPS is exit 0
"""


HELP = "latency of .onnx files on an ONNX Runtime EP (also: bench compare, bench merge)"


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "bench", _add_arguments, run, HELP, BENCH_DESCRIPTION, EXAMPLES)
    cmp = sub.add_parser(
        "bench-compare",
        help="B/A latency ratios of two bench results (also spelled: bench compare)",
        description="Pair the rows of two `onnxship bench --json` files by model name, batch "
        "size, EP and io mode; print B/A ratios of p50 and flag differences within the "
        "measurements' spread (interquartile range) or under --noise-floor as noise. "
        "Exit 0, or 1 with --fail-above when a row is slower beyond it.",
    )
    cmp.add_argument("a", type=Path, metavar="A.json")
    cmp.add_argument("b", type=Path, metavar="B.json")
    cmp.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the comparison")
    cmp.add_argument(
        "--fail-above", type=positive_float, default=None, metavar="RATIO",
        help="exit 1 when a row is 'slower' with B/A p50 above RATIO (e.g. 1.10)",
    )  # fmt: skip
    cmp.add_argument(
        "--noise-floor", type=fraction, default=0.05, metavar="F",
        help="differences under F x A's p50 are called noise (run-to-run drift; default: 0.05)",
    )  # fmt: skip
    cmp.set_defaults(func=run_compare)

    mrg = sub.add_parser(
        "bench-merge",
        help="one table from bench results of many machines (also spelled: bench merge)",
        description="Merge `onnxship bench --json` files (e.g. one per target machine) into one "
        "table whose rows carry the machine (host, CPU, ISA, cores, onnxruntime) they came from. "
        "`onnxship tune` records (BUNDLE/targets/ID.json) or bundle folders give one row per "
        "target and artifact (speed-up vs teacher-fp32 with its CI, accuracy there), the "
        "recommended artifact marked per target, and the targets that disagree.",
    )
    mrg.add_argument("files", nargs="+", type=Path, metavar="RESULT.json",
                     help="bench --json files, tune records (targets/ID.json) or bundle folders")  # fmt: skip
    mrg.add_argument(
        "--json", type=Path, default=None, metavar="OUT", help="write the merged results"
    )
    mrg.add_argument(
        "--csv", type=Path, default=None, metavar="OUT", help="write the merged rows as CSV"
    )
    mrg.set_defaults(func=run_merge)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from onnxship.runtime_bench.bench import BenchConfig
    from onnxship.runtime_bench.scenarios import ScenarioConfig
    from onnxship.runtime_bench.session_options import TuneConfig

    bench = BenchConfig()
    parser.add_argument("models", nargs="+", type=Path, metavar="MODEL.onnx")
    add_config_flags(
        parser, bench, "provider", "batch_sizes", "threads", "warmup", "iterations",
        "time_budget_s", "spinning", "graph_optimization", "provider_options", "dim_values",
        "npz", "seed", "io_binding", "cuda_graph",
    )  # fmt: skip
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="OUT",
        help="write the results (schema_version 1)",
    )
    parser.add_argument(
        "--csv", type=Path, default=None, metavar="OUT", help="write the result rows as CSV"
    )
    add_config_flags(parser, bench, "progress")
    group = parser.add_argument_group("scenarios and session options", SCENARIO_HELP)
    add_config_flags(group, ScenarioConfig(), "scenario", "slo_ms", "concurrency", "qps")
    add_config_flags(parser, ScenarioConfig(), "budget_s")
    add_config_flags(parser, bench, "ci_level")
    group.add_argument(
        "--plot", type=Path, default=None, metavar="OUT.png",
        help="--scenario server: draw p99 vs QPS per model with the SLO (needs matplotlib)",
    )  # fmt: skip
    add_session_config(
        group,
        "run exactly the session options in FILE (from --tune-session); --threads, "
        "--no-spinning and --graph-opt are refused with it",
    )
    group.add_argument(
        "--tune-session", type=Path, default=None, metavar="OUT.json",
        help="search session options for one model at one batch size; write the choice",
    )  # fmt: skip
    add_config_flags(group, TuneConfig(), "margin")


def _session_from_args(
    args: argparse.Namespace,
) -> tuple[str, SessionConfig, LoadedSessionConfig | None]:
    """(provider, SessionConfig, loaded file or None) from --session-config or the flags."""
    from onnxship.runtime_bench.errors import BenchError
    from onnxship.runtime_bench.session import SessionConfig, resolve_provider
    from onnxship.runtime_bench.session_options import load_session_config

    if args.session_config is None:
        session = SessionConfig(
            intra_op_threads=args.threads, allow_spinning=not args.no_spinning,
            graph_optimization=args.graph_opt, provider_options=tuple(args.provider_option),
        )  # fmt: skip
        return resolve_provider(args.provider), session, None
    loaded = load_session_config(args.session_config)
    clashes = [flag for flag, given in (("--threads", args.threads != 1),
               ("--no-spinning", args.no_spinning), ("--graph-opt", args.graph_opt != "all"),
               ("--provider-option", bool(args.provider_option))) if given]  # fmt: skip
    if clashes:
        raise BenchError(
            f"--session-config {args.session_config} sets the session options; drop "
            f"{', '.join(clashes)} (or edit the file)"
        )
    if args.provider != "cpu" and resolve_provider(args.provider) != loaded.provider:
        raise BenchError(
            f"--provider {args.provider} but --session-config {args.session_config} was made "
            f"for {loaded.provider}; drop --provider or use a config for that EP"
        )
    return loaded.provider, loaded.session, loaded


def run_scenario_command(args: argparse.Namespace) -> int:
    from onnxship.runtime_bench.errors import BenchError
    from onnxship.runtime_bench.results import write_json
    from onnxship.runtime_bench.scenarios import ScenarioConfig, run_scenario, scenario_markdown

    provider, session, _ = _session_from_args(args)
    cfg = config_from_args(
        args, ScenarioConfig(), provider=provider, session=session, batch_sizes=args.batch_sizes,
        ci_level=args.ci_level, seed=args.seed, npz=args.npz, dim_values=tuple(args.dim),
    )  # fmt: skip
    if args.plot is not None and cfg.scenario.value != "server":
        raise BenchError(f"--plot draws the server scenario; got --scenario {args.scenario}")
    doc = run_scenario(args.models, cfg)
    if args.json is not None:
        write_json(doc, args.json)
    if args.plot is not None:
        from onnxship.report import write_server_plot

        write_server_plot(args.plot, doc["results"])
    print(scenario_markdown(doc))
    return 0


def run_tune_command(args: argparse.Namespace) -> int:
    from onnxship.core.artifact import sha256_file
    from onnxship.core.env import machine_fingerprint
    from onnxship.runtime_bench.errors import BenchError
    from onnxship.runtime_bench.session_options import (
        TuneConfig,
        session_config_document,
        tune_session,
        write_session_config,
    )

    if len(args.models) != 1 or len(args.batch_sizes) != 1:
        raise BenchError(
            f"--tune-session tunes one model at one batch size (options depend on both); got "
            f"{len(args.models)} model(s) and --batch-sizes {','.join(map(str, args.batch_sizes))}"
            "; run it once per model and batch size, e.g. --batch-sizes 64"
        )
    provider, session, _ = _session_from_args(args)
    cfg = config_from_args(
        args, TuneConfig(), batch_size=args.batch_sizes[0], budget_s=args.budget_s or 20.0,
        ci_level=args.ci_level, baseline=session, seed=args.seed, npz=args.npz,
        dim_values=tuple(args.dim),
    )  # fmt: skip
    result = tune_session(args.models[0], provider, cfg)
    chosen = result.pop("chosen")
    doc = session_config_document(
        chosen, provider, io_binding=result["io_binding"], cuda_graph=result["cuda_graph"],
        tuned_for={"model": str(args.models[0]), "model_sha256": sha256_file(args.models[0]),
                   "batch_size": cfg.batch_size},
        evidence=result,
        fingerprint=machine_fingerprint(provider, intra_op_threads=chosen.intra_op_threads,
                                        allow_spinning=chosen.allow_spinning),
    )  # fmt: skip
    write_session_config(args.tune_session, doc)
    gain = result["gain"]
    if result["defaults_are_best"]:
        why = "" if gain is None else f" (stage winner {gain['options']}: {gain['verdict']})"
        print(f"{args.models[0]} batch {cfg.batch_size}: defaults are best: "
              f"{result['chosen_label']}{why}; wrote {args.tune_session}")  # fmt: skip
    else:
        print(f"{args.models[0]} batch {cfg.batch_size}: {result['chosen_label']}, "
              f"{gain['speedup']:.3f}x the defaults, {cfg.ci_level:.0%} CI "
              f"[{gain['ci'][0]:.3f}, {gain['ci'][1]:.3f}]; wrote {args.tune_session}")  # fmt: skip
    return 0


def run(args: argparse.Namespace) -> int:
    from onnxship.runtime_bench.bench import BUDGET_ONLY_ITERATIONS, BenchConfig, benchmark_models
    from onnxship.runtime_bench.errors import BenchError

    if not 0 < args.ci_level < 1:
        raise BenchError(f"--ci-level must be a fraction in (0, 1), got {args.ci_level}; e.g. 0.95")
    if args.tune_session is not None:
        if args.scenario is not None:
            raise BenchError("--tune-session and --scenario are separate runs; give one of them")
        return run_tune_command(args)
    if args.scenario is not None:
        return run_scenario_command(args)
    from onnxship.runtime_bench.results import markdown_table

    iterations = args.iterations
    if iterations is None:
        iterations = BUDGET_ONLY_ITERATIONS if args.time_budget is not None else 100
    provider, session, loaded = _session_from_args(args)
    # The session's options come from --session-config when given, else from their flags.
    cfg = config_from_args(
        args, BenchConfig(), provider=provider, iterations=iterations,
        threads=session.intra_op_threads, spinning=session.allow_spinning,
        graph_optimization=session.graph_optimization, provider_options=session.provider_options,
        **({} if loaded is None else
           {"io_binding": loaded.io_binding, "cuda_graph": loaded.cuda_graph, "session": session}),
    )  # fmt: skip
    doc = benchmark_models(args.models, cfg)
    _write_result(doc, args)
    print(markdown_table(doc))
    return 0


def _write_result(doc: Mapping[str, Any], args: argparse.Namespace) -> None:
    """A result document to --json and --csv, each where given."""
    from onnxship.runtime_bench.results import write_csv, write_json

    if args.json is not None:
        write_json(doc, args.json)
    if args.csv is not None:
        write_csv(doc, args.csv)


def run_compare(args: argparse.Namespace) -> int:
    from onnxship.runtime_bench.results import compare, compare_markdown, load_result, write_json

    a, b = load_result(args.a), load_result(args.b)
    result = compare(a, b, a_name=str(args.a), b_name=str(args.b), noise_floor=args.noise_floor)
    if args.json is not None:
        write_json(result, args.json)
    print(compare_markdown(result))
    if args.fail_above is not None:
        bad = [
            r for r in result["rows"]
            if r["verdict"] == "slower" and r["ratio_p50"] > args.fail_above
        ]  # fmt: skip
        if bad:
            from onnxship.core.errors import CheckFailedError

            worst = max(bad, key=lambda r: r["ratio_p50"])
            raise CheckFailedError(
                f"{len(bad)} row(s) of {args.b} are slower than {args.a} beyond "
                f"--fail-above {args.fail_above}: worst {worst['model_name']} batch "
                f"{worst['batch_size']} at {worst['ratio_p50']:.3f}x p50"
            )
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from onnxship.runtime_bench.results import load_result, merge, merge_markdown
    from onnxship.runtime_bench.target_table import records_from, targets_markdown

    tuned = [p for p in args.files if p.is_dir() or _is_target_record(p)]
    if tuned:
        records = [r for p in tuned for r in records_from(p)]
        print(targets_markdown(records))
        if len(tuned) == len(args.files):
            return 0
        print()
    files = [p for p in args.files if p not in tuned]
    docs = [load_result(p) for p in files]
    merged = merge(docs, [str(p) for p in files])
    _write_result(merged, args)
    print(merge_markdown(merged))
    return 0


def _is_target_record(path: Path) -> bool:
    import json

    from onnxship.runtime_bench.target_table import is_target_record

    try:
        return is_target_record(json.loads(path.read_text()))
    except (OSError, ValueError):
        return False
