"""Files passed between stages: sha256, atomic writes, `Artifact` and stage records.

Stages hand each other *files*, never live objects: a stage function has the shape
`thing_from_source(src, cfg, out_dir) -> Artifact`, and an `Artifact` is a path plus its
sha256, size, the stage that made it, that stage's config and the parent's sha256 (the lineage
record, as in Olive). Every write goes to a temporary file in the target folder and is renamed
into place, so a crash (even kill -9) never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import enum
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from onnxship.core.errors import EnvironmentFault, OnnxshipError

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_now() -> str:
    """ISO-8601 UTC timestamp with a Z suffix, second resolution."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def require_parent_writable(path: Path, error: type[OnnxshipError] = OnnxshipError) -> None:
    """Raise `error` (one line, exit 2) unless `path`'s folder exists and is writable.

    This is the up-front check of a path the user named: a folder that is missing or not
    writable before anything is written is a usage error (choose another path). What the
    operating system refuses *while* writing is an `EnvironmentFault` (exit 3), see
    `atomic_output`.
    """
    parent = path.parent
    if not parent.is_dir():
        raise error(
            f"cannot write {path}: its folder {parent} does not exist; create it or choose "
            "another output path"
        )
    if not os.access(parent, os.W_OK):
        why = "is not writable"
        with contextlib.suppress(OSError, AttributeError):
            if os.statvfs(parent).f_flag & os.ST_RDONLY:
                why = "is on a read-only filesystem"
        raise error(
            f"cannot write {path}: its folder {parent} {why}; choose a writable output folder"
        )


# What a file is, for error messages, when the writer does not say (by name, then suffix).
_WHAT_BY_NAME = {
    "manifest.json": "bundle manifest",
    "report.md": "bundle report",
    ".onnxship-run.json": "run marker",
}
_WHAT_BY_FOLDER = {"stages": "stage record", "plots": "plot", "results": "results file"}
_WHAT_BY_SUFFIX = {
    ".onnx": "ONNX model",
    ".pt": "PyTorch checkpoint",
    ".npz": "array archive",
    ".png": "plot",
    ".json": "JSON file",
    ".csv": "CSV file",
    ".xml": "XML file",
    ".md": "Markdown file",
}


def describe_output(path: Path) -> str:
    """A short noun for the file at `path` ("ONNX model", "stage record"), for messages."""
    if path.name in _WHAT_BY_NAME:
        return _WHAT_BY_NAME[path.name]
    if path.parent.name in _WHAT_BY_FOLDER:
        return _WHAT_BY_FOLDER[path.parent.name]
    if path.suffix == ".json" and path.with_suffix(".pt").exists():
        return "checkpoint sidecar"
    return _WHAT_BY_SUFFIX.get(path.suffix, "file")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, what: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds.

    The temporary file lives in the same folder so the final `os.replace` is atomic. On any
    exception (including KeyboardInterrupt and the CLI's SIGTERM) the temporary file is removed
    and nothing appears under `path`.

    An OSError from the operating system while writing (disk full, permission denied,
    read-only filesystem, the temporary file vanished) becomes one `EnvironmentFault` (exit 3)
    naming `path`, `what` was being written (default: from the name, e.g. "ONNX model") and
    the free space when the filesystem is full. This is the one place where writes meet the
    OS: every writer in onnxship (checkpoints, ONNX files, calibration sets, records, results,
    the manifest, the report and plots) goes through here.
    """
    final = Path(path)
    require_parent_writable(final)
    described = what or describe_output(final)
    tmp: Path | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        # mkstemp creates 0600; a deployable artifact gets the usual umask-derived mode.
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, final)
    except BaseException as exc:
        if tmp is not None:
            # Cleanup must not mask the real error (unlink fails too on a read-only remount).
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(exc, OSError):
            raise EnvironmentFault.from_oserror(exc, path=final, what=described) from exc
        raise


@contextlib.contextmanager
def atomic_companion(
    companion: str | os.PathLike[str],
    data: bytes,
    *,
    primary: str | os.PathLike[str],
    what: str | None = None,
) -> Iterator[None]:
    """Write `data` to `companion` together with `primary`, which the block writes (through
    `atomic_output`): both files appear, or neither does.

    For pairs that are read together - a checkpoint's weights and its sidecar, an INT8 model
    and its calibration set. The companion's temporary file is complete before the block runs
    (so a full disk stops the pair before `primary` is touched) and is renamed into place only
    after the block succeeded; if that rename fails, or a signal lands between the two
    renames, the new `primary` is removed again. OSErrors become `EnvironmentFault` naming
    the companion, as in `atomic_output`."""
    placed = False
    try:
        with atomic_output(companion, what=what) as tmp:
            tmp.write_bytes(data)
            yield
            placed = True
    except BaseException:
        if placed:
            with contextlib.suppress(OSError):
                Path(primary).unlink()
        raise


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, what: str | None = None
) -> Path:
    with atomic_output(path, what=what) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, what: str | None = None) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), what=what)


def jsonable(value: Any) -> Any:
    """Turn configs (frozen dataclasses, enums, paths, tuples) into plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [jsonable(v) for v in items]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    return value


def json_bytes(obj: Any) -> bytes:
    """`obj` as the JSON every onnxship file holds (indented, keys in order, final newline)."""
    return (json.dumps(jsonable(obj), indent=2, sort_keys=False) + "\n").encode("utf-8")


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, what: str | None = None) -> Path:
    return atomic_write_bytes(path, json_bytes(obj), what=what)


def config_hash(obj: Any) -> str:
    """Stable sha256 of a JSON-able config (keys sorted), for cache keys."""
    text = json.dumps(jsonable(obj), sort_keys=True, separators=(",", ":"))
    return sha256_bytes(text.encode("utf-8"))


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A file produced by a stage, with the lineage needed to trust it later."""

    path: Path
    sha256: str
    bytes: int
    stage: str
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    parent_sha256: str | None = None
    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        stage: str,
        config: Any = None,
        parent_sha256: str | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> Artifact:
        p = Path(path)
        return cls(
            path=p,
            sha256=sha256_file(p),
            bytes=p.stat().st_size,
            stage=stage,
            config=jsonable(config) if config is not None else {},
            parent_sha256=parent_sha256,
            metrics=dict(metrics or {}),
        )

    def verify(self) -> None:
        """Raise if the file is missing or its bytes no longer match the recorded sha256."""
        if not self.path.is_file():
            raise OnnxshipError(f"artifact {self.path} is missing; rerun the stage '{self.stage}'")
        actual = sha256_file(self.path)
        if actual != self.sha256:
            raise OnnxshipError(
                f"artifact {self.path} changed: expected sha256 {self.sha256}, found {actual}; "
                f"rerun the stage '{self.stage}' or restore the file",
                exit_code=1,
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "path": os.fspath(self.path),
            "sha256": self.sha256,
            "bytes": self.bytes,
            "stage": self.stage,
            "config": jsonable(self.config),
            "parent_sha256": self.parent_sha256,
            "metrics": jsonable(self.metrics),
        }


def file_entry(path: str | os.PathLike[str], *, with_bytes: bool = False) -> dict[str, Any]:
    p = Path(path)
    entry: dict[str, Any] = {"path": os.fspath(p), "sha256": sha256_file(p)}
    if with_bytes:
        entry["bytes"] = p.stat().st_size
    return entry


def write_stage_record(
    out_dir: str | os.PathLike[str],
    name: str,
    *,
    stage: str,
    config: Any,
    inputs: Sequence[str | os.PathLike[str]],
    outputs: Sequence[str | os.PathLike[str]],
    metrics: Mapping[str, Any],
    started: str,
    wall_s: float,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write `out_dir/stages/<name>.json` in the contract's shape (atomically).

    `name` is usually the stage itself ("train", "quantize"); a pipeline that runs a stage on
    two models uses e.g. "export-teacher" and "export-student".
    """
    from onnxship.core.env import integer_class_record

    stages_dir = Path(out_dir) / "stages"
    stages_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "stage": stage,
        "config": jsonable(config),
        "inputs": [file_entry(p) for p in inputs],
        "outputs": [file_entry(p, with_bytes=True) for p in outputs],
        # The CPU's integer class is in every record's metrics (they were measured there).
        "metrics": jsonable({**integer_class_record(), **metrics}),
        "started": started,
        "finished": utc_now(),
        "wall_s": round(float(wall_s), 3),
    }
    # Extra keys (e.g. the pipeline's cache key) come after the contract's keys, never over them.
    for key, value in (extra or {}).items():
        record.setdefault(key, jsonable(value))
    return atomic_write_json(stages_dir / f"{name}.json", record, what=f"the '{name}' stage record")
