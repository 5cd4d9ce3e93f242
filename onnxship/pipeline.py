"""`onnxship run`: the whole pipeline, resumable, into one bundle folder.

    train -> export(teacher) -> prune -> distill -> export(student) -> quantize (INT8, recipe
    search on the CPU EP) -> fp16 -> eval (every artifact, MNIST test, ORT) -> bench (every
    artifact, every available EP) -> manifest.json, report.md, plots/

With `[model] factory = "pkg.module:function"` and `[data] kind = "npz" | "imagefolder"` the
same stages run on a user's own network and data (ONNX-side stages read the data as npz: the
carved validation split is written to `data/val.npz` for INT8 calibration and its accuracy
budget; the test split is `data/test.npz` for FP16 parity, eval and `verify`). Everything is
checked before the bundle folder is touched: a factory that does not import or build, data
that the model cannot take or whose labels exceed its classes, bad npz files.

Each stage's record carries a cache key: the sha256 of its config, its input files' sha256 and
the onnxship version. A rerun skips a stage whose key matches and whose outputs still hash to
what the record says; `--force` redoes everything. Every file is written atomically and the
record only after its outputs, so a run killed mid-stage (even kill -9) leaves no partial
artifact and the next run redoes just that stage.

Under torchrun every rank runs this function: train and distill are data-parallel, every other
stage runs on rank 0 while the others wait (`stage_run.cached_stage`, `Ranks.on_main`), and
only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from onnxship import __version__
from onnxship.calibrate.quantize import QuantizeConfig, int8_from_onnx
from onnxship.configio import dataclass_from_mapping, to_toml
from onnxship.core.artifact import (
    atomic_write_bytes,
    atomic_write_json,
    config_hash,
    jsonable,
    utc_now,
)
from onnxship.core.dataset import DatasetKind
from onnxship.errors import PipelineError
from onnxship.export.fp16 import Fp16Config, fp16_from_onnx
from onnxship.export.onnx_export import ExportConfig, onnx_from_checkpoint
from onnxship.manifest import ArtifactSpec, build_manifest, write_bundle_docs
from onnxship.measure import BenchSettings, EvalSettings, bench_stage, eval_stage
from onnxship.models import distributed
from onnxship.models.data import DataConfig, DataSplits, ensure_mnist, open_data
from onnxship.models.distill import DistillConfig, distilled_from_checkpoints
from onnxship.models.errors import ModelsError
from onnxship.models.prune import PruneConfig, pruned_from_checkpoint
from onnxship.models.registry import ModelFactory
from onnxship.models.train import TrainConfig, trained_from_data
from onnxship.search import SearchConfig, searched_from_checkpoints
from onnxship.stage_run import RunContext, cached_stage, checkpoint_inputs, mnist_inputs

log = logging.getLogger(__name__)

RUN_MARKER = ".onnxship-run.json"
RUN_LOCK = ".onnxship-run.lock"
BUNDLE_DIRS = ("artifacts", "checkpoints", "calibration", "stages", "results", "plots", "data")


@dataclass(frozen=True)
class ModelConfig:
    """`[model]`: a user's own network. factory: "pkg.module:function" returning an
    nn.Module (imported with the config file's folder first on sys.path), kwargs: its keyword
    arguments, state_dict: a plain state_dict to start from instead of training. Unset
    factory: the built-in registry model of `[train] arch`."""

    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    state_dict: str | None = None
    search_path: str | None = None  # set by load_config: the config file's folder

    def to_factory(self) -> ModelFactory | None:
        if self.factory is None:
            return None
        return ModelFactory(self.factory, dict(self.kwargs), self.search_path)


@dataclass(frozen=True)
class ExtraArtifacts:
    """Artifacts beyond the four the contract requires: the teacher in INT8 and FP16 too, so
    the report separates what compression bought from what precision bought."""

    teacher_int8: bool = True
    teacher_fp16: bool = True


@dataclass(frozen=True)
class PipelineConfig:
    data_dir: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # The default student: <= 10 % of the teacher's MACs, stated explicitly.
    prune: PruneConfig = field(default_factory=lambda: PruneConfig(macs_budget=0.1))
    distill: DistillConfig = field(default_factory=DistillConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    fp16: Fp16Config = field(default_factory=Fp16Config)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
    bench: BenchSettings = field(default_factory=BenchSettings)
    extra: ExtraArtifacts = field(default_factory=ExtraArtifacts)
    # The latency-searched student (searched-fp32/int8/fp16) and `recommended`.
    search: SearchConfig = field(default_factory=SearchConfig)


def load_config(path: str | os.PathLike[str] | None, **overrides: Any) -> PipelineConfig:
    """Defaults, then the TOML file, then CLI overrides (top-level keys such as data_dir)."""
    table: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise PipelineError(f"config file {p} does not exist; pass an existing TOML file")
        try:
            table = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise PipelineError(f"config file {p} is not valid TOML: {exc}") from exc
        _resolve_config_paths(table, p.parent)
    for key, value in overrides.items():
        if value is not None:
            table[key] = value
    where = str(path) if path is not None else "config"
    cfg = dataclass_from_mapping(PipelineConfig, table, where)
    if path is None or cfg.model.factory is None or cfg.model.search_path:
        return cfg
    # The factory's module is imported with the config file's folder first on sys.path.
    folder = os.fspath(Path(path).resolve().parent)
    return replace(cfg, model=replace(cfg.model, search_path=folder))


# Path values of a config file (as key paths into its table); relative ones are relative to the
# config file's folder (CONTRACT.md), resolved here, once, at load time.
CONFIG_PATH_KEYS: tuple[tuple[str, ...], ...] = (
    ("data_dir",),
    ("data", "train"),
    ("data", "test"),
    ("model", "state_dict"),
)


def _resolve_config_paths(table: dict[str, Any], base: Path) -> None:
    for keys in CONFIG_PATH_KEYS:
        holder: Any = table
        for key in keys[:-1]:
            holder = holder.get(key) if isinstance(holder, dict) else None
        value = holder.get(keys[-1]) if isinstance(holder, dict) else None
        if isinstance(value, str) and value:
            holder[keys[-1]] = os.path.abspath(base / os.path.expanduser(value))


def config_to_toml(cfg: PipelineConfig) -> str:
    header = f"# onnxship {__version__} effective pipeline config (onnxship run --config FILE)\n"
    return header + to_toml(jsonable(cfg))


# --------------------------------------------------------------------------------------------
# The bundle folder


def _prepare_out_dir(out_dir: Path, cfg: PipelineConfig, force: bool) -> None:
    """Refuse a folder holding another run's bundle (different config) unless --force."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PipelineError(f"--out {out_dir} is a file; pass a folder")
    marker = out_dir / RUN_MARKER
    key = config_hash(jsonable(cfg))
    previous = None
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text()).get("config_hash")
        except ValueError:
            previous = None
    holds_bundle = marker.is_file() or (out_dir / "manifest.json").is_file()
    if holds_bundle and previous != key and not force:
        raise PipelineError(
            f"{out_dir} holds another run's bundle made with a different config; pass "
            "--force to replace it, or choose another --out"
        )
    if holds_bundle and force:
        # Only folders onnxship itself creates are removed, never the user's other files.
        for name in BUNDLE_DIRS:
            shutil.rmtree(out_dir / name, ignore_errors=True)
        (out_dir / "manifest.json").unlink(missing_ok=True)
        (out_dir / "report.md").unlink(missing_ok=True)
    for name in BUNDLE_DIRS:
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        # Temporary files of a run that was killed mid-write (atomic_output's ".<name>.*.tmp").
        for stale in folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
    atomic_write_json(
        marker, {"config_hash": key, "onnxship_version": __version__, "created": utc_now()}
    )


@contextlib.contextmanager
def bundle_lock(out_dir: Path) -> Iterator[None]:
    """Hold an advisory lock (`fcntl.flock` on OUT/.onnxship-run.lock) for the whole run, so a
    second `onnxship run` on the same bundle refuses (exit 2) instead of interleaving writes.
    The kernel drops the lock when the process ends, even on kill -9: no stale lock."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PipelineError(f"--out {out_dir} is a file; pass a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RUN_LOCK
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise PipelineError(
                f"{out_dir} is in use by another onnxship run ({holder}); wait for it to "
                "finish, or pass another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {utc_now()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class PipelineResult:
    out_dir: Path
    manifest_path: Path
    ran: list[str]
    skipped: list[str]


def run_pipeline(
    cfg: PipelineConfig,
    out_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    progress: Callable[[str], None] = lambda msg: None,
) -> PipelineResult:
    out = Path(out_dir)
    own = _own_model_and_data(cfg)  # checked before anything is written
    ranks = distributed.current()
    # Only rank 0 writes, so only rank 0 holds the bundle lock; the other ranks follow it.
    lock = bundle_lock(out) if ranks.is_main else contextlib.nullcontext()
    with lock:
        return _run_locked(cfg, out, force, progress, ranks, own)


def _run_locked(
    cfg: PipelineConfig,
    out: Path,
    force: bool,
    progress: Callable[[str], None],
    ranks: distributed.Ranks,
    own: _OwnRun | None,
) -> PipelineResult:
    ranks.on_main(lambda: _prepare_out_dir(out, cfg, force), what="preparing the bundle folder")
    ctx = RunContext(
        out_dir=out, force=force, data_dir=cfg.data_dir, progress=progress, ranks=ranks
    )
    data_dir = cfg.data_dir
    specs: list[ArtifactSpec] = []
    data = own.splits.config if own is not None else None
    factory = cfg.model.to_factory()
    val_npz = test_npz = None
    if own is not None:
        splits = own.splits
        val_npz, test_npz = ranks.on_main(
            lambda: _write_data_npz(ctx, splits), what="writing the data files"
        )

    teacher_ckpt = ctx.path("checkpoints", "teacher.pt")
    train_config: Any = cfg.train
    if own is None:  # the files MNIST's train reads, as `onnxship train` records them
        root = ranks.on_main(lambda: ensure_mnist(data_dir), what="checking the MNIST files")
        train_inputs = mnist_inputs(root)
    else:
        train_config = {"train": cfg.train, "model": cfg.model, "data": cfg.data}
        train_inputs = cfg.data.files() or [p for p in (val_npz, test_npz) if p is not None]
        if cfg.model.state_dict:
            train_inputs.append(Path(cfg.model.state_dict))
        if own.source is not None and own.source.is_file():
            train_inputs.append(own.source)
    cached_stage(
        ctx, "train", stage="train", config=train_config, inputs=train_inputs,
        outputs=[teacher_ckpt, teacher_ckpt.with_suffix(".json")],
        produce=lambda: trained_from_data(
            cfg.train, teacher_ckpt, data_dir=data_dir, data=data, factory=factory,
            initial_state=cfg.model.state_dict,
        ),
        distributed=True,
    )  # fmt: skip

    def export(ckpt: Path, name: str, record: str) -> Path:
        target = ctx.path("artifacts", f"{name}.onnx")
        cached_stage(
            ctx, record, stage="export", config=cfg.export, inputs=checkpoint_inputs(ckpt),
            outputs=[target],
            produce=lambda: onnx_from_checkpoint(ckpt, cfg.export, target, data_dir=data_dir, data=data),
        )  # fmt: skip
        return target

    teacher_fp32 = export(teacher_ckpt, "teacher-fp32", "export-teacher")
    specs.append(
        ArtifactSpec("teacher-fp32", "teacher", "fp32", None, "export-teacher", teacher_ckpt)
    )

    pruned_ckpt = ctx.path("checkpoints", "student-pruned.pt")
    cached_stage(
        ctx, "prune", stage="prune", config=cfg.prune, inputs=checkpoint_inputs(teacher_ckpt),
        outputs=[pruned_ckpt, pruned_ckpt.with_suffix(".json")],
        produce=lambda: pruned_from_checkpoint(teacher_ckpt, cfg.prune, pruned_ckpt, data_dir=data_dir, data=data),
    )  # fmt: skip

    student_ckpt = ctx.path("checkpoints", "student.pt")
    cached_stage(
        ctx, "distill", stage="distill", config=cfg.distill,
        inputs=[*checkpoint_inputs(pruned_ckpt), *checkpoint_inputs(teacher_ckpt)],
        outputs=[student_ckpt, student_ckpt.with_suffix(".json")],
        produce=lambda: distilled_from_checkpoints(
            pruned_ckpt, teacher_ckpt, cfg.distill, student_ckpt, data_dir=data_dir, data=data
        ),
        distributed=True,
    )  # fmt: skip

    student_fp32 = export(student_ckpt, "student-fp32", "export-student")
    specs.append(
        ArtifactSpec("student-fp32", "student", "fp32", None, "export-student", student_ckpt)
    )

    def quantize(src: Path, name: str, record: str) -> None:
        target = ctx.path("artifacts", f"{name}.onnx")
        calib = ctx.path("calibration", f"{name}-calib.npz")
        cached_stage(
            ctx, record, stage="quantize", config=cfg.quantize,
            inputs=[src, *([val_npz] if val_npz else [])], outputs=[target, calib],
            produce=lambda: int8_from_onnx(
                src, cfg.quantize, target, data_dir=data_dir, calib_out=calib,
                calib_npz=val_npz, val_npz=val_npz,
            ),
        )  # fmt: skip

    def fp16(src: Path, name: str, record: str) -> None:
        target = ctx.path("artifacts", f"{name}.onnx")
        cached_stage(
            ctx, record, stage="fp16", config=cfg.fp16,
            inputs=[src, *([test_npz] if test_npz else [])], outputs=[target],
            produce=lambda: fp16_from_onnx(src, cfg.fp16, target, data_dir=data_dir, data=test_npz),
        )  # fmt: skip

    quantize(student_fp32, "student-int8", "quantize")
    specs.append(
        ArtifactSpec("student-int8", "student", "int8", "student-fp32", "quantize", student_ckpt)
    )
    fp16(student_fp32, "student-fp16", "fp16")
    specs.append(
        ArtifactSpec("student-fp16", "student", "fp16", "student-fp32", "fp16", student_ckpt)
    )
    if cfg.extra.teacher_int8:
        quantize(teacher_fp32, "teacher-int8", "quantize-teacher")
        specs.append(
            ArtifactSpec(
                "teacher-int8", "teacher", "int8", "teacher-fp32", "quantize-teacher", teacher_ckpt
            )
        )
    if cfg.extra.teacher_fp16:
        fp16(teacher_fp32, "teacher-fp16", "fp16-teacher")
        specs.append(
            ArtifactSpec(
                "teacher-fp16", "teacher", "fp16", "teacher-fp32", "fp16-teacher", teacher_ckpt
            )
        )

    # ---- the hardware-aware student search (onnxship.search) -------------------------------
    # The built-in MNIST task searches its own space; a user's factory model searches width
    # multipliers of its keyword arguments, on the user's data (models.search).
    if cfg.search.enabled:
        searched_ckpt = ctx.path("checkpoints", "searched.pt")
        cached_stage(
            ctx, "search", stage="search", config=cfg.search,
            inputs=[teacher_ckpt, student_ckpt, teacher_fp32],
            outputs=[searched_ckpt, searched_ckpt.with_suffix(".json")],
            produce=lambda: searched_from_checkpoints(
                teacher_ckpt, student_ckpt, teacher_fp32, cfg.search, searched_ckpt,
                data_dir=data_dir, data=data,
            ),
        )  # fmt: skip
        searched_fp32 = export(searched_ckpt, "searched-fp32", "export-searched")
        quantize(searched_fp32, "searched-int8", "quantize-searched")
        fp16(searched_fp32, "searched-fp16", "fp16-searched")
        specs += [
            ArtifactSpec("searched-fp32", "searched", "fp32", None, "export-searched", searched_ckpt),
            ArtifactSpec("searched-int8", "searched", "int8", "searched-fp32", "quantize-searched",
                         searched_ckpt),
            ArtifactSpec("searched-fp16", "searched", "fp16", "searched-fp32", "fp16-searched",
                         searched_ckpt),
        ]  # fmt: skip
    # ---- end of the student search -----------------------------------------------------------

    onnx_paths = {s.name: ctx.path("artifacts", f"{s.name}.onnx") for s in specs}

    def finish() -> Path:
        eval_json = eval_stage(ctx, cfg.eval, onnx_paths, data_npz=test_npz)
        bench_json = bench_stage(ctx, cfg.bench, onnx_paths)
        dataset = _dataset_block(teacher_ckpt, test_npz, out)
        manifest = build_manifest(
            ctx, jsonable(cfg), cfg.bench, specs, eval_json, bench_json, dataset=dataset
        )
        write_bundle_docs(out, manifest)
        return manifest

    manifest_path = ranks.on_main(finish, what="eval, bench and the manifest on rank 0")
    progress(f"[done] bundle at {out} ({len(ctx.ran)} stages ran, {len(ctx.skipped)} reused)")
    return PipelineResult(
        out_dir=out, manifest_path=manifest_path, ran=ctx.ran, skipped=ctx.skipped
    )


# --------------------------------------------------------------------------------------------
# A user's own model and data


@dataclass(frozen=True)
class _OwnRun:
    splits: DataSplits
    factory: ModelFactory | None
    source: Path | None  # the factory's module file: editing it invalidates the train stage


def _own_model_and_data(cfg: PipelineConfig) -> _OwnRun | None:
    """Check a user's factory and data before the bundle folder is touched (None: the
    default MNIST run with a registry model, checked by its stages as before)."""
    factory = cfg.model.to_factory()
    if factory is None and cfg.data.kind is DatasetKind.MNIST:
        if cfg.model.state_dict is not None:
            raise PipelineError(
                "[model] state_dict needs [model] factory: it is loaded into the factory's model"
            )
        return None
    try:
        splits = open_data(cfg.data, cfg.data_dir)
        if factory is not None:
            model = factory.build()
            for name in ("fit", "val", "test"):
                splits.split(name)
            splits.check_model(model)
    except ModelsError as exc:
        raise PipelineError(str(exc)) from exc
    if factory is None:
        raise PipelineError(
            f"[data] kind = {cfg.data.kind.value!r} needs [model] factory: the built-in "
            f"{cfg.train.arch} takes MNIST's [1, 28, 28] images; name your network with "
            'factory = "pkg.module:function"'
        )
    import inspect

    try:
        source: Path | None = Path(inspect.getfile(factory.resolve()))
    except (TypeError, OSError):  # a builtin or C function has no file
        source = None
    return _OwnRun(splits=splits, factory=factory, source=source)


def _write_data_npz(ctx: RunContext, splits: DataSplits) -> tuple[Path, Path]:
    """The carved validation split (INT8 calibration + budget) and the test data (FP16
    parity, eval, verify) as contract npz files inside the bundle: `data/val.npz`, and
    `data/test.npz` (a byte copy of an npz test file; decoded images for an image folder).
    Rewritten only when their content changes, so stages keyed on their sha256 stay cached."""
    import tempfile

    from onnxship.core.artifact import sha256_file

    paths = []
    for name in ("val", "test"):
        target = ctx.path("data", f"{name}.npz")
        with tempfile.TemporaryDirectory(prefix="onnxship-data-") as scratch:
            if name == "test" and splits.config.kind is DatasetKind.NPZ:
                fresh = Path(splits.config.test or "")
            else:
                fresh = splits.write_npz(name, Path(scratch) / f"{name}.npz")
            if not target.is_file() or sha256_file(target) != sha256_file(fresh):
                atomic_write_bytes(target, fresh.read_bytes())
        paths.append(target)
    return paths[0], paths[1]


def _dataset_block(teacher_ckpt: Path, test_npz: Path | None, out: Path) -> dict[str, Any]:
    """The manifest's `dataset` block: the teacher checkpoint's DatasetInfo; when the data is
    not MNIST, `test_path` (relative to the bundle) names the npz every accuracy was measured
    on and `test_sha256` is that file's hash (what `verify` re-measures on and checks)."""
    from onnxship.core.dataset import mnist_info
    from onnxship.models.checkpoint import read_checkpoint_meta

    meta = read_checkpoint_meta(teacher_ckpt)
    info = meta.dataset or mnist_info()
    block = info.to_json()
    if test_npz is not None:
        from onnxship.core.artifact import sha256_file

        block["test_path"] = os.path.relpath(test_npz, out)
        block["test_sha256"] = sha256_file(test_npz)
    return block
