"""The `onnxship run` config: one frozen dataclass per stage's section, loaded from TOML.

`PipelineConfig` is what `plan(cfg)` (onnxship.stages.plan) turns into stages; defaults, then
the TOML file, then CLI overrides (`load_config`)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from onnxship import __version__
from onnxship.calibrate.quantize import QuantizeConfig
from onnxship.configio import dataclass_from_mapping, to_toml
from onnxship.core.artifact import jsonable
from onnxship.errors import PipelineError
from onnxship.export.fp16 import Fp16Config
from onnxship.export.onnx_export import ExportConfig
from onnxship.measure import BenchSettings, EvalSettings
from onnxship.models.distill import DistillConfig
from onnxship.models.prune import PruneConfig
from onnxship.models.registry import ModelFactory
from onnxship.models.train import TrainConfig
from onnxship.models.training_data import DataConfig
from onnxship.search import SearchConfig


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
