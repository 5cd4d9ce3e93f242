"""`onnxship run`: the whole pipeline into one bundle."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from onnxship.commands.common import add_data_dir, add_dist_timeout

DESCRIPTION = """\
Run the whole pipeline into one bundle folder. The stages, in order (onnxship/stages/plan.py):
  train teacher -> export teacher FP32 -> prune -> distill (+ no-teacher ablation) -> export
  student FP32 -> INT8 (recipe search on the CPU EP) -> FP16 -> teacher INT8 and FP16 ->
  student search (screen, race, KD) -> export, INT8 and FP16 of the searched student -> eval
  every artifact on the test set (MNIST or your data) through ONNX Runtime -> bench every
  artifact on every available EP -> manifest.json, report.md, plots/.
The run is resumable: finished stages whose inputs and config are unchanged are reused; --force
redoes everything. Defaults: configs/mnist_simplecnn.toml (CLI flags override the file).
Data-parallel training: torchrun --nproc_per_node=N -m onnxship run ... runs train and distill
on every rank (DistributedDataParallel) and every other stage once, on rank 0, which alone
writes; the others wait. See README "Scaling up".
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "run",
        help="the whole pipeline: train, prune, distill, export, INT8, FP16, eval, bench, manifest",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML config (default: built-in defaults, the same as "
                        "configs/mnist_simplecnn.toml)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("runs/mnist_simplecnn"),
                        help="bundle folder (default: runs/mnist_simplecnn)")  # fmt: skip
    add_data_dir(parser)
    parser.add_argument("--force", action="store_true",
                        help="redo every stage; replace a bundle made with another config")  # fmt: skip
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective config as TOML and exit (nothing is run)")  # fmt: skip
    add_dist_timeout(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxship.pipeline import config_to_toml, load_config, run_pipeline

    overrides = {"data_dir": str(args.data_dir)} if args.data_dir else {}
    cfg = load_config(args.config, **overrides)
    if args.print_config:
        sys.stdout.write(config_to_toml(cfg))
        return 0
    from onnxship.models import distributed

    start = time.perf_counter()
    with distributed.session(cfg.train.device, args.dist_timeout) as ranks:
        result = run_pipeline(
            cfg,
            args.out,
            force=args.force,
            progress=lambda msg: print(msg, file=sys.stderr, flush=True) if ranks.is_main else None,
        )
    if not ranks.is_main:
        return 0
    from onnxship.manifest import read_manifest
    from onnxship.report import artifact_table, headline_lines

    manifest = read_manifest(result.manifest_path)
    print(artifact_table(manifest))
    head = headline_lines(manifest)
    if head:
        print("\n" + "\n".join(head))
    print(
        f"\nbundle: {result.out_dir} (manifest.json, report.md); {len(result.ran)} stages ran, "
        f"{len(result.skipped)} reused; {time.perf_counter() - start:.1f} s"
    )
    return 0
