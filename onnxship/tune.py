"""`onnxship tune BUNDLE`: decide on the target machine (needs onnxruntime, numpy, onnx; no torch).

A bundle is built on one machine; its `recommended` was decided there. On the target, tune:

1. reads the manifest and checks the bundle's data against the sha256 its records hold: the
   calibration sets (their quantize stage records), data/val.npz (the quantize stages' input)
   and data/test.npz (the manifest's `dataset` block) - missing or altered is a one-line error
   naming the expected and found sha256, nothing written. A target needs neither MNIST nor
   --data-dir; only a bundle made before data/*.npz were shipped (MNIST, no `test_path` in
   its `dataset` block) is measured on MNIST under --data-dir;
2. re-runs the INT8 recipe search (`calibrate.quantize.int8_from_onnx`, recipe `auto`) for every
   INT8 artifact of the bundle, from its FP32 parent, on this machine's integer class, with the
   build host's rule: the calibration set is the seeded draw from data/val.npz (checked equal,
   byte for byte, to the shipped one) and the accuracy budget is measured on the other rows;
   the new files are named `<artifact>@<target id>` and written under `targets/<id>/`, never
   over the build host's files;
3. re-measures test accuracy of every artifact (the bundle's and the new ones) here, on
   data/test.npz;
4. times every artifact within the accuracy budget of `teacher-fp32` (measured here) against
   `teacher-fp32` for the declared scenario with the timing engine (block-interleaved rounds,
   bootstrap CIs over rounds): `single-stream` = batch 1 p50 latency, `offline` = throughput at
   the best batch size of the list;
5. chooses by the bundle's own `[bench.recommend]` policy, on this target's measurements: INT8
   only where its speed-up over its own FP32 clears `int8_min_speedup` (CI lower bound); the
   fastest ships unless a simpler artifact (FP32 over FP16 over INT8, then the smaller file) is
   within noise of it (the margin and tie band);
6. tunes session options (threads, spinning) for the chosen artifact: an option set replaces
   the default only when its ratio CI clears `option_margin`;
7. writes `targets/<id>.json` and the manifest's `targets[<id>]` entry (`onnxship.targets`), and
   refreshes report.md and plots/ where matplotlib is installed.

A second tune on the same fingerprint replaces its own record and no other. A read-only bundle
needs `--out DIR`: the bundle is copied there and tuned in the copy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from onnxship.core.artifact import atomic_output, atomic_write_json, sha256_file
from onnxship.core.errors import OnnxshipError
from onnxship.core.flags import flag, fraction, int_csv, positive_float
from onnxship.core.version import __version__
from onnxship.errors import PipelineError
from onnxship.manifest import read_manifest
from onnxship.runtime_bench.session_options import session_config_document, write_session_config
from onnxship.targets import TARGET_SCHEMA, TARGETS_DIR, manifest_entry, record_path

log = logging.getLogger(__name__)

SCENARIOS = ("single-stream", "offline")
REFERENCE = "teacher-fp32"
SIMPLICITY = {"fp32": 0, "fp16": 1, "int8": 2}


@dataclass(frozen=True)
class TuneConfig:
    """What `onnxship tune` decides and how long it may take.

    budget_s: wall-time budget for the timing (requantization and accuracy come on top and are
      bounded by the quantize stage's own budget and the test set's size).
    max_drop: accuracy budget vs teacher-fp32 measured here (None: the bundle's).
    option_margin: a session-option set replaces the default only when its speed-up's CI lower
      bound is >= this.
    """

    # fmt: off
    provider: str = field(default="cpu", metadata=flag(
        "--provider", "EP to tune for: cpu, cuda or an ONNX Runtime EP name (default {default})"))
    scenario: str = field(default="single-stream", metadata=flag(
        "--scenario", "single-stream (batch 1 p50 latency, default) or offline (throughput at "
        "the best of --batch-sizes)"))
    batch_sizes: tuple[int, ...] = field(default=(1, 64), metadata=flag(
        "--batch-sizes", "batch sizes the offline scenario chooses from (default {default})",
        type=int_csv))
    budget_s: float = field(default=40.0, metadata=flag(
        "--budget-s", "seconds for timing (artifacts, then session options; default "
        "{default:g})", type=positive_float))
    max_drop: float | None = field(default=None, metadata=flag(
        "--max-drop", "accuracy budget vs teacher-fp32 measured here (default: the bundle's)",
        type=fraction))
    requantize: bool = field(default=True, metadata=flag(
        "--no-requantize", "choose among the bundle's files only (no INT8 search here)",
        action="store_true", invert=True))
    # fmt: on
    option_margin: float = 1.05
    ci_level: float = 0.95
    threads: tuple[int, ...] = ()  # () = 1 .. this machine's usable cores

    def validate(self) -> None:
        if self.scenario not in SCENARIOS:
            raise PipelineError(
                f"unknown scenario {self.scenario!r}; expected one of {', '.join(SCENARIOS)}"
            )
        if not self.budget_s > 0:
            raise PipelineError(f"--budget-s must be > 0 seconds, got {self.budget_s}")
        if not 0 < self.ci_level < 1:
            raise PipelineError(f"CI level must be in (0, 1), got {self.ci_level}")
        if self.max_drop is not None and not 0 <= self.max_drop < 1:
            raise PipelineError(f"--max-drop must be a fraction in [0, 1), got {self.max_drop}")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise PipelineError(f"batch sizes must be >= 1, got {list(self.batch_sizes)}")
        if not self.option_margin >= 1:
            raise PipelineError(f"option_margin must be >= 1, got {self.option_margin}")
        if any(t < 1 for t in self.threads):
            raise PipelineError(f"threads must be >= 1, got {list(self.threads)}")

    def scenario_batches(self) -> tuple[int, ...]:
        return (1,) if self.scenario == "single-stream" else self.batch_sizes


@dataclass
class _Candidate:
    name: str
    path: Path
    precision: str
    bytes: int
    own: dict[str, Any] | None = None  # lineage of an INT8 file made here
    parent: str | None = None  # the FP32 artifact an INT8 or FP16 file was made from
    accuracy: dict[str, Any] = field(default_factory=dict)


def target_from_bundle(
    bundle: str | os.PathLike[str],
    cfg: TuneConfig = TuneConfig(),
    out: str | os.PathLike[str] | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    val_npz: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Path:
    """Tune `bundle` on this machine (module docstring); returns the record's path."""
    started = time.perf_counter()
    cfg.validate()
    src = Path(bundle)
    manifest = read_manifest(src)
    from onnxship.runtime_bench.session import check_provider_available

    provider = check_provider_available(cfg.provider)
    calib = calibration_sets(src, manifest)
    val = validation_data(src, manifest, val_npz, data_dir) if cfg.requantize else None
    if val is not None and val.draw:
        check_calibration_draws(src, manifest, calib, val.path)
    measure = _accuracy_measure(src, manifest, data_dir)  # every check before any write
    root = _writable_bundle(src, out)
    manifest = read_manifest(root)
    ident = target_fingerprint(provider)
    tid = target_id(ident)
    with tempfile.TemporaryDirectory(prefix="onnxship-tune-") as scratch:
        cands = _bundle_candidates(root, manifest)
        if val is not None:
            cands += _requantize(root, manifest, calib, tid, ident, Path(scratch), val,
                                 data_dir=data_dir, progress=progress)  # fmt: skip
        max_drop = _max_drop(cfg, manifest)
        eligible = _measure_accuracy(cands, measure, max_drop, progress)
        timing = _time_scenario(eligible, provider, cfg)
        chosen, why = choose(eligible, timing, cfg, recommend_policy(manifest))
        options = tune_session_options(chosen, provider, cfg, timing)
        record = _record(tid, ident, provider, cfg, cands, timing, chosen, why, options,
                         max_drop, started)  # fmt: skip
        session_doc = session_config_document(
            options["_session"], provider, fingerprint=ident,
            tuned_for={"model": record["recommended"], "batch_size": options["batch_size"],
                       "scenario": cfg.scenario},
            evidence={"gain": options["gain"], "verdict": options["verdict"]},
        )  # fmt: skip
        _write(root, tid, record, cands, session_doc)
    return record_path(root, tid)


# --------------------------------------------------------------------------------------------
# The bundle: what tune reads, and where it may write


def calibration_sets(root: Path, manifest: Mapping[str, Any]) -> dict[str, Path]:
    """INT8 artifact -> its shipped calibration .npz, checked against the sha256 its quantize
    stage recorded. Missing or altered: a one-line error (exit 2)."""
    recorded: dict[str, str] = {}
    for _, rec in stage_records(root):
        for output in rec.get("outputs") or []:
            name = Path(str(output.get("path", ""))).name
            if name.endswith("-calib.npz"):
                recorded[name] = str(output.get("sha256"))
    found: dict[str, Path] = {}
    for name, entry in manifest["artifacts"].items():
        if entry.get("precision") != "int8" or not entry.get("parent"):
            continue
        file = f"{name}-calib.npz"
        path = root / "calibration" / file
        if not path.is_file() or file not in recorded:
            raise PipelineError(
                f"{root}: the calibration set of {name} (calibration/{file}) is missing "
                f"{'from the bundle' if not path.is_file() else 'from the stage records'}; "
                "ship the bundle whole (its calibration/ and stages/ folders) or rebuild it"
            )
        digest = sha256_file(path)
        if digest != recorded[file]:
            raise PipelineError(
                f"{path}: sha256 {digest[:12]}… but the quantize stage recorded "
                f"{recorded[file][:12]}…: the calibration set was altered; restore it from the "
                "build host's bundle"
            )
        found[name] = path
    return found


def _writable_bundle(src: Path, out: str | os.PathLike[str] | None) -> Path:
    if out is None:
        if not os.access(src, os.W_OK):
            raise PipelineError(
                f"{src} is not writable, so tune cannot add its target record; pass --out DIR "
                "to tune a copy of the bundle there"
            )
        return src
    dest = Path(out)
    if dest.resolve() == src.resolve():
        return src
    if dest.exists() and any(dest.iterdir()):
        raise PipelineError(f"--out {dest} exists and is not empty; choose a new folder")
    shutil.copytree(src, dest, dirs_exist_ok=True)
    return dest


def target_fingerprint(provider: str) -> dict[str, Any]:
    """The target's identity: the machine fingerprint (CPU, ISA, integer class, cores and
    cgroup quota, onnxruntime) for the EP tuned for."""
    from onnxship.core.env import integer_class_record, machine_fingerprint

    return dict(machine_fingerprint(provider)) | integer_class_record()


def target_id(ident: Mapping[str, Any]) -> str:
    """`<integer class>-<8 hex of the fingerprint>`: readable, one per machine kind and EP."""
    return f"{ident.get('integer_class', 'unknown')}-{str(ident['id'])[:8]}"


def _bundle_candidates(root: Path, manifest: Mapping[str, Any]) -> list[_Candidate]:
    out = []
    for name, entry in manifest["artifacts"].items():
        path = root / entry["path"]
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            raise PipelineError(
                f"{root}: artifact {name} ({entry['path']}) is missing or changed since the "
                "run; run `onnxship verify` on the bundle"
            )
        out.append(_Candidate(name, path, str(entry.get("precision")), int(entry["bytes"]),
                              parent=entry.get("parent")))  # fmt: skip
    return out


def _max_drop(cfg: TuneConfig, manifest: Mapping[str, Any]) -> float:
    if cfg.max_drop is not None:
        return cfg.max_drop
    for detail in (manifest.get("recommended_detail") or {}).values():
        if isinstance(detail, Mapping) and isinstance(detail.get("max_drop"), (int, float)):
            return float(detail["max_drop"])
    return 0.003


# --------------------------------------------------------------------------------------------
# INT8 on the target


def _requantize(
    root: Path,
    manifest: Mapping[str, Any],
    calib: Mapping[str, Path],
    tid: str,
    ident: Mapping[str, Any],
    scratch: Path,
    val: Validation,
    *,
    data_dir: str | os.PathLike[str] | None,
    progress: bool,
) -> list[_Candidate]:
    """Every INT8 artifact re-searched here from its FP32 parent: calibrated on the build
    host's rows of data/val.npz and its budget measured on the others (`val.draw`), or
    calibrated on the shipped set and measured on the user's --val-npz (or, for a bundle made
    before data/*.npz, on MNIST validation minus the calibration images)."""
    from onnxship.calibrate.quantize import int8_from_onnx

    out = []
    for name, npz in calib.items():
        entry = manifest["artifacts"][name]
        parent = manifest["artifacts"][entry["parent"]]
        cfg = _quantize_config(entry)
        new = f"{name}@{tid}"
        path = scratch / f"{name}.onnx"
        log.info("tune: re-quantizing %s from %s on this target", name, entry["parent"])
        data: dict[str, Any] = (
            {"val_npz": val.path, "calib_from_val": True}
            if val.draw
            else {"data_dir": data_dir, "calib_npz": npz, "val_npz": val.path}
        )
        art = int8_from_onnx(root / parent["path"], cfg, path, progress=progress, **data)
        metrics = art.metrics or {}
        calibration = metrics.get("calibration") or {}
        own = {
            "path": f"{TARGETS_DIR}/{tid}/{name}.onnx",
            "sha256": art.sha256,
            "bytes": art.bytes,
            "precision": "int8",
            "parent": entry["parent"],
            "source_sha256": parent["sha256"],
            "recipe": metrics.get("recipe"),
            "integer_class": ident.get("integer_class"),
            "made_on": tid,
            "replaces": name,
            "val_top1": metrics.get("int8_val_top1"),
            "budget_data": (metrics.get("budget") or {}).get("data"),
            "calibration": {
                "sha256": calibration.get("sha256"),
                **(calibration.get("split") or {}),
            },
            "int8_faster_than_fp32": metrics.get("int8_faster_than_fp32"),
        }
        out.append(_Candidate(new, path, "int8", art.bytes, own=own))
    return out


VAL_NPZ = "data/val.npz"


@dataclass(frozen=True)
class Validation:
    """What the INT8 search here measures its accuracy budget on.

    path: an .npz; None: MNIST's validation split under --data-dir (a bundle made before
      data/*.npz were shipped).
    draw: True when `path` is the bundle's data/val.npz: the calibration set is drawn from it
      by the build host's seeded draw and the budget measured on the other rows; False: the
      shipped calibration set calibrates and the budget is measured on `path` (a --val-npz of
      the user's, another file) or on MNIST.
    """

    path: Path | None
    draw: bool


def validation_data(
    root: Path,
    manifest: Mapping[str, Any],
    val_npz: str | os.PathLike[str] | None,
    data_dir: str | os.PathLike[str] | None,
) -> Validation:
    """The bundle's data/val.npz, checked against the sha256 its quantize stages recorded for
    it; a --val-npz of the user's (the same bytes as data/val.npz count as data/val.npz); or
    MNIST under --data-dir for a bundle made before data/*.npz. Else a one-line error."""
    bundle_val = root / VAL_NPZ
    if val_npz is not None:
        user = Path(val_npz)
        if not user.is_file():
            raise PipelineError(f"--val-npz {user} does not exist; pass an existing .npz")
        from onnxship.calibrate.calibration_data import same_data

        if not same_data(user, bundle_val):
            return Validation(user, draw=False)
    recorded = recorded_input_sha256(root, VAL_NPZ)
    if not recorded:
        if made_before_data_npz(manifest):
            _require_mnist(root, data_dir)
            return Validation(None, draw=False)
        raise PipelineError(
            f"{root}: no quantize stage record names {VAL_NPZ}, so the validation split the "
            "INT8 search is checked on cannot be verified; rebuild the bundle with this "
            "onnxship (`onnxship run --force`), pass --val-npz FILE, or --no-requantize"
        )
    record, want = next(iter(recorded.items()))
    if not bundle_val.is_file():
        raise PipelineError(
            f"{root}: {VAL_NPZ} is missing (stages/{record} recorded sha256 {want[:12]}…); "
            "ship the bundle whole (its data/ folder), or pass --no-requantize"
        )
    digest = sha256_file(bundle_val)
    for record, want in recorded.items():
        if digest != want:
            raise PipelineError(
                f"{bundle_val}: expected sha256 {want[:12]}… (stages/{record}), found "
                f"{digest[:12]}…: the validation split changed after the run; restore "
                f"{VAL_NPZ} from the build host's bundle, or pass --no-requantize"
            )
    return Validation(bundle_val, draw=True)


def recorded_input_sha256(root: Path, rel: str) -> dict[str, str]:
    """Quantize stage record file name -> the sha256 it recorded for the bundle file `rel`."""
    want = Path(rel).parts
    out: dict[str, str] = {}
    for rec_path, rec in stage_records(root):
        if rec.get("stage") != "quantize":
            continue
        for entry in rec.get("inputs") or []:
            if Path(str(entry.get("path", ""))).parts[-len(want) :] == want:
                out[rec_path.name] = str(entry.get("sha256"))
    return out


def stage_records(root: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(path, record) of every stage record of the bundle that parses as JSON, by file name."""
    for rec_path in sorted((root / "stages").glob("*.json")):
        try:
            rec = json.loads(rec_path.read_text())
        except ValueError:
            continue
        yield rec_path, rec


def made_before_data_npz(manifest: Mapping[str, Any]) -> bool:
    """An MNIST bundle made before bundles shipped data/val.npz and data/test.npz (its
    `dataset` block names no `test_path`): measured on MNIST under --data-dir."""
    dataset = manifest.get("dataset") or {}
    return dataset.get("kind", "mnist") == "mnist" and not dataset.get("test_path")


def _require_mnist(root: Path, data_dir: str | os.PathLike[str] | None) -> None:
    from onnxship.core import mnist

    folder = mnist.resolve_data_root(data_dir)
    missing = mnist.missing_files(folder)
    if missing:
        raise PipelineError(
            f"{root} was made before bundles carried data/val.npz and data/test.npz, so tune "
            f"measures it on MNIST under --data-dir: {mnist.missing_data_message(folder, missing)}"
            "; or rebuild the bundle with this onnxship (it then carries its data)"
        )


def check_calibration_draws(
    root: Path, manifest: Mapping[str, Any], calib: Mapping[str, Path], val: Path | None
) -> None:
    """Each shipped calibration set is the draw the build host's rule makes from `val` with the
    artifact's recorded calibration config (size, seed): tune calibrates on those rows and
    measures its budget on the others, disjoint as on the build host. A bundle that calibrated
    on rows its budget also measured is a one-line error."""
    from onnxship.calibrate.calibration_data import (
        calibration_and_evaluation_from_npz,
        input_specs_of,
    )

    assert val is not None
    for name, npz in calib.items():
        entry = manifest["artifacts"][name]
        parent = root / manifest["artifacts"][entry["parent"]]["path"]
        calibration = _quantize_config(entry).calibration
        try:
            drawn, _ = calibration_and_evaluation_from_npz(val, input_specs_of(parent), calibration)
        except OnnxshipError as exc:
            raise PipelineError(f"{name}: {exc}") from exc
        want, found = drawn.sha256(), sha256_file(npz)
        if want != found:
            raise PipelineError(
                f"{npz}: expected the {calibration.size}-row draw from {VAL_NPZ} that leaves the "
                f"accuracy budget its other rows (sha256 {want[:12]}…), found {found[:12]}…: "
                "the bundle calibrated on rows its budget also measured; rebuild it with this "
                "onnxship (`onnxship run --force`), or pass --val-npz FILE (rows apart from "
                "calibration) or --no-requantize"
            )


def _quantize_config(entry: Mapping[str, Any]) -> Any:
    """The build host's quantize config, with the recipe searched again (`auto`)."""
    from onnxship.calibrate.quantize import QuantizeConfig
    from onnxship.configio import dataclass_from_mapping

    recorded = dict(entry.get("stage_config") or {})
    known = {f.name for f in dataclasses.fields(QuantizeConfig)}
    values = {k: v for k, v in recorded.items() if k in known}
    values["recipe"] = "auto"
    values["provider"] = "cpu"  # INT8 files are searched for the CPU EP, as in the bundle
    try:
        return dataclass_from_mapping(QuantizeConfig, values, "the bundle's quantize config")
    except OnnxshipError:
        return QuantizeConfig()


# --------------------------------------------------------------------------------------------
# Accuracy here


def _accuracy_measure(
    root: Path, manifest: Mapping[str, Any], data_dir: str | os.PathLike[str] | None
) -> Callable[[Path], dict[str, Any]]:
    from onnxship.verify import accuracy_source

    problems: list[Any] = []
    measure = accuracy_source(root, dict(manifest), data_dir, problems.append)
    if measure is None:
        raise PipelineError(f"{root}: {problems[0].detail if problems else 'no test data'}")
    return lambda path: measure(path, {"split": "test", "batch_size": 1000, "provider": "cpu"})


def _measure_accuracy(
    cands: list[_Candidate],
    measure: Callable[[Path], dict[str, Any]],
    max_drop: float,
    progress: bool,
) -> list[_Candidate]:
    """Test top-1 of every candidate here; those within `max_drop` of teacher-fp32 (here)."""
    for cand in cands:
        got = measure(cand.path)
        cand.accuracy = {"test_top1": got["top1"], "correct": got["correct"], "n": got["n"]}
        log.info("tune: %s test top-1 %.4f here", cand.name, got["top1"])
    ref = next((c for c in cands if c.name == REFERENCE), None)
    if ref is None:
        raise PipelineError(f"the bundle has no {REFERENCE}; tune measures ratios against it")
    floor = ref.accuracy["test_top1"] - max_drop
    return [c for c in cands if c.accuracy["test_top1"] + 1e-9 >= floor]


# --------------------------------------------------------------------------------------------
# Timing and the choice


def _fns(
    cands: list[_Candidate], provider: str, batch: int, session_cfg: Any
) -> dict[str, Callable[[], object]]:
    from onnxship.runtime_bench.inputs import make_feeds
    from onnxship.runtime_bench.session import create_session

    fns: dict[str, Callable[[], object]] = {}
    for cand in cands:
        handle = create_session(cand.path, provider, session_cfg)
        feeds = make_feeds(handle, batch, seed=0)
        fns[cand.name] = partial(handle.session.run, None, feeds)
        fns[cand.name]()  # first call untimed: allocations, kernel selection
    return fns


def _time_scenario(cands: list[_Candidate], provider: str, cfg: TuneConfig) -> dict[int, Any]:
    """Every eligible artifact vs teacher-fp32, per scenario batch size (the engine)."""
    from onnxship.runtime_bench.session import SessionConfig
    from onnxship.runtime_bench.timing import TimingConfig, time_blocks

    batches = cfg.scenario_batches()
    share = 0.7 * cfg.budget_s / len(batches)
    out = {}
    for batch in batches:
        fns = _fns(cands, provider, batch, SessionConfig(intra_op_threads=1))
        tcfg = TimingConfig(budget_s=share, ci_level=cfg.ci_level)
        out[batch] = time_blocks(fns, tcfg, reference=REFERENCE)
        log.info("tune: timed %d artifacts at batch %d (%s)", len(fns), batch,
                 out[batch].stop_reason)  # fmt: skip
    return out


def _best_batch(name: str, timing: Mapping[int, Any]) -> int:
    """The batch size with the highest throughput (samples/s at the p50) for `name`."""
    return max(timing, key=lambda b: b / timing[b].models[name].p50.value_ms)


def recommend_policy(manifest: Mapping[str, Any]) -> Any:
    """The bundle's own `[bench.recommend]` policy (margin, tie band, INT8 minimum speed-up),
    so the target decides by the rule the build host used."""
    from onnxship.configio import dataclass_from_mapping
    from onnxship.measure import RecommendPolicy

    recorded = dict(
        dict(dict(manifest.get("config") or {}).get("bench") or {}).get("recommend") or {}
    )
    return dataclass_from_mapping(RecommendPolicy, recorded, "the bundle's bench.recommend")


def choose(
    cands: list[_Candidate], timing: Mapping[int, Any], cfg: TuneConfig, policy: Any
) -> tuple[_Candidate, dict[str, Any]]:
    """The bundle's recommend rule, on this target's measurements: an INT8 artifact is eligible
    only when the CI lower bound of its speed-up over its own FP32 parent is >= the policy's
    `int8_min_speedup`; the fastest eligible artifact ships unless a simpler one (FP32 > FP16 >
    INT8, then the smaller file; teacher-fp32 included) is within noise of it - the fastest's
    speed-up over it has a CI lower bound < 1 + margin, or differs by less than the tie band."""

    def ratio(c: _Candidate) -> Any:
        batch = _best_batch(c.name, timing) if cfg.scenario == "offline" else 1
        return timing[batch].ratios.get(c.name)

    rated = {c.name: (c, ratio(c)) for c in cands if ratio(c) is not None}
    ref = next(c for c in cands if c.name == REFERENCE)
    not_eligible = _int8_gate(rated, timing, cfg, policy)
    eligible = [cr for n, cr in rated.items() if n not in not_eligible]
    why: dict[str, Any] = {"rule": _RULE.format(p=policy), "not_eligible": not_eligible}
    if not eligible:
        return ref, why | {"decision": "only teacher-fp32 is eligible here"}
    best_c, best_r = max(eligible, key=lambda cr: cr[1].ratio)
    simpler = sorted(
        [*eligible, (ref, None)], key=lambda cr: (SIMPLICITY.get(cr[0].precision, 3), cr[0].bytes)
    )
    chosen, chosen_r = best_c, best_r
    for c, r in simpler:  # simplest first; nothing after the fastest is simpler than it
        if c is best_c:
            break
        lo, hi, point = (r.ci[0], r.ci[1], r.ratio) if r is not None else (1.0, 1.0, 1.0)
        clearly = best_r.ci[0] / hi >= 1 + policy.margin
        if clearly and best_r.ratio / point >= 1 + policy.tie_band:
            continue
        chosen, chosen_r = c, r
        break
    why |= {"fastest": best_c.name, "fastest_ratio": best_r.ratio, "fastest_ci": list(best_r.ci)}
    if chosen is not best_c:
        why["tie_within_noise"] = (
            f"{chosen.name} ({_ci_text(chosen_r)}) is within noise of {best_c.name} "
            f"({_ci_text(best_r)}); the simpler artifact ships"
        )
    return chosen, why


_RULE = (
    "the fastest by speed-up vs teacher-fp32 (p50, block-interleaved, 95 % CI) among artifacts "
    "within the accuracy budget here; INT8 only where >= {p.int8_min_speedup:g}x its own FP32 "
    "(CI lower bound); a simpler artifact (fp32 > fp16 > int8, then smaller) ships unless the "
    "fastest beats it by a CI lower bound >= 1 + {p.margin:g} and more than the {p.tie_band:g} "
    "tie band"
)


def _int8_gate(
    rated: Mapping[str, Any], timing: Mapping[int, Any], cfg: TuneConfig, policy: Any
) -> dict[str, str]:
    """INT8 candidates whose speed-up over their own FP32 parent, measured here at the same
    batch, has a CI lower bound below `policy.int8_min_speedup` (or whose parent was not
    timed here)."""
    out = {}
    for name, (c, r) in rated.items():
        if c.precision != "int8":
            continue
        parent = c.own["parent"] if c.own else c.parent
        if parent == REFERENCE:  # the reference itself: its ratio is 1 by definition
            p_ratio, p_hi = 1.0, 1.0
        elif parent in rated:
            p_ratio, p_hi = rated[parent][1].ratio, rated[parent][1].ci[1]
        else:
            out[name] = f"its FP32 parent {parent} was not timed here"
            continue
        lower = r.ci[0] / p_hi
        if lower < policy.int8_min_speedup:
            out[name] = (
                f"INT8 is {r.ratio / p_ratio:.2f}x its own FP32 here (CI lower bound "
                f"{lower:.2f} < {policy.int8_min_speedup:g}x): the FP32 artifact ships instead"
            )
    return out


def _ci_text(r: Any) -> str:
    if r is None:
        return "the reference, 1.00x"
    return f"{r.ratio:.2f}x, CI [{r.ci[0]:.2f}, {r.ci[1]:.2f}]"


def tune_session_options(
    chosen: _Candidate, provider: str, cfg: TuneConfig, timing: Mapping[int, Any]
) -> dict[str, Any]:
    """Session options for the chosen artifact at the scenario's batch
    (`runtime_bench.session_options.tune_session`: threads 1 .. usable cores x spinning, graph
    level, execution mode); the default stays unless an alternative's CI clears the margin."""
    from onnxship.runtime_bench.session_options import TuneConfig as SessionTuneConfig
    from onnxship.runtime_bench.session_options import tune_session

    batch = _best_batch(chosen.name, timing) if cfg.scenario == "offline" else 1
    scfg = SessionTuneConfig(batch_size=batch, margin=cfg.option_margin,
                             budget_s=0.3 * cfg.budget_s, ci_level=cfg.ci_level)  # fmt: skip
    result = tune_session(chosen.path, provider, scfg)
    session = result.pop("chosen")
    return {
        "batch_size": batch,
        "chosen": result["chosen_label"],
        "session": session.to_json(),
        "verdict": "defaults are best"
        if result["defaults_are_best"]
        else f"{result['chosen_label']} beats the default",
        "gain": result["gain"],
        "margin": cfg.option_margin,
        "stages": result["stages"],
        "_session": session,
    }


# --------------------------------------------------------------------------------------------
# The record


def _record(
    tid: str,
    ident: Mapping[str, Any],
    provider: str,
    cfg: TuneConfig,
    cands: list[_Candidate],
    timing: Mapping[int, Any],
    chosen: _Candidate,
    why: Mapping[str, Any],
    options: Mapping[str, Any],
    max_drop: float,
    started: float,
) -> dict[str, Any]:
    from onnxship.core.artifact import utc_now

    ratios: dict[str, Any] = {}
    for batch, res in timing.items():
        for name, r in res.ratios.items():
            ratios.setdefault(name, {})[str(batch)] = {
                "ratio": r.ratio, "ci": list(r.ci), "statistic": r.statistic,
                "reference": r.reference,
                "p50_ms": res.models[name].p50.value_ms,
                "p50_ci_ms": list(res.models[name].p50.ci_ms or []),
            }  # fmt: skip
    return {
        "schema": TARGET_SCHEMA,
        "id": tid,
        "fingerprint": dict(ident),
        "integer_class": ident.get("integer_class"),
        "provider": provider,
        "scenario": cfg.scenario,
        "statistic": "p50_ms" if cfg.scenario == "single-stream" else "throughput_per_s",
        "batch_sizes": list(cfg.scenario_batches()),
        "recommended": chosen.name,
        "recommended_detail": dict(why),
        "session_options": {k: v for k, v in options.items() if not k.startswith("_")},
        "session_config": f"{TARGETS_DIR}/{tid}.session.json",
        "ratios": ratios,
        "accuracy": {c.name: c.accuracy for c in cands},
        "max_drop": max_drop,
        "artifacts": {c.name: c.own for c in cands if c.own},
        "bundle_artifacts": {c.name: sha256_file(c.path) for c in cands if not c.own},
        "timing": {
            str(b): {
                "stop_reason": r.stop_reason,
                "wall_s": r.wall_s,
                "rounds": max(m.n_rounds for m in r.models.values()),
            }
            for b, r in timing.items()
        },  # fmt: skip
        "config": dataclasses.asdict(cfg),
        "wall_s": round(time.perf_counter() - started, 2),
        "created": utc_now(),
        "onnxship_version": __version__,
    }


def _write(
    root: Path, tid: str, record: dict[str, Any], cands: list[_Candidate], session_doc: Any
) -> None:
    """The target's INT8 files, its record, then the manifest entry (each atomic); a previous
    record of the same target id is replaced, other targets are kept."""
    folder = root / TARGETS_DIR / tid
    if folder.exists():
        shutil.rmtree(folder)
    for cand in cands:
        if cand.own:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_output(root / cand.own["path"]) as tmp:
                shutil.copyfile(cand.path, tmp)
    rec = record_path(root, tid)
    rec.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(rec, record)
    write_session_config(root / record["session_config"], session_doc)
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    targets = dict(manifest.get("targets") or {})
    targets[tid] = manifest_entry(record, f"{TARGETS_DIR}/{tid}.json", sha256_file(rec))
    manifest["targets"] = targets
    atomic_write_json(manifest_path, manifest)
    _refresh_report(root, manifest_path)


def _refresh_report(root: Path, manifest_path: Path) -> None:
    """report.md and plots/ gain the target's section where matplotlib is installed; a
    target with only onnxruntime, numpy and onnx keeps the old report (the record is there)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.info("tune: report.md not refreshed (matplotlib is not installed here)")
        return
    from onnxship.manifest import write_bundle_docs

    write_bundle_docs(root, manifest_path)
