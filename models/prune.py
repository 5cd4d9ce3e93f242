"""Pruning: structured (the default; the network really shrinks) and unstructured (an option).

Structured pruning removes whole conv filters and hidden units and rewires their consumers, so
the result is a *dense, smaller* model of the same architecture, rebuilt with
`create_model(arch, **smaller_widths)`: it is faster and smaller once exported. Targets are
width ratios (fraction of each width kept) or a MACs budget (a fraction of the source's MACs).
An optional iterative schedule prunes in `steps` geometric steps with a fine-tune after each.

Unstructured magnitude pruning zeroes individual weights; every tensor keeps its full shape, so
dense inference is exactly as slow and the raw file exactly as large; the honest benefit is a
smaller *compressed download*, which is why the stage reports the gzip-compressed size of the
state dict before and after.

One module per algorithm, as Torch-Pruning lays them out: `models.prune_channels` (registry
channel groups: importance, selection, rewiring), `models.prune_magnitude` (unstructured),
`models.prune_depgraph` (any network, with Torch-Pruning's DepGraph), and the target solver
`models.prune_targets`. This module holds the schedules (steps, each with its fine-tune) and the
stage; the config (`PruneConfig`, its enums and defaults) lives torch-free in
`models.prune_config`. The config's and the algorithms' public names are importable from here.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from onnxship.core.artifact import Artifact, sha256_file
from onnxship.models.checkpoint import load_checkpoint, save_checkpoint
from onnxship.models.errors import ModelsError
from onnxship.models.flops import count_macs, count_nonzero_params, count_params
from onnxship.models.prune_channels import (
    arch_of,
    channel_importance,
    prune_spec,
    prune_structured,
    select_channels,
    weight_of,
    widths_of,
)
from onnxship.models.prune_config import (  # noqa: F401  (check_open_unit: re-exported)
    DEFAULT_MACS_BUDGET,
    DEFAULT_SPARSITY,
    Importance,
    PruneConfig,
    PruneMethod,
    PruneScope,
    check_open_unit,
)
from onnxship.models.prune_depgraph import (
    DEPGRAPH_MAX_RATIO,
    DEPGRAPH_STEPS,
    depgraph_pruner,
    tp_version,
)
from onnxship.models.prune_magnitude import (
    apply_sparsity_step,
    bake,
    gzip_state_bytes,
    prunable_weights,
    sparsity_report,
)
from onnxship.models.prune_targets import (
    macs_of_widths,
    step_widths,
    widths_for_macs_budget,
    widths_for_ratios,
)
from onnxship.models.sgd_config import SgdConfig  # noqa: F401  (re-exported)
from onnxship.models.training_data import DataConfig, DataSplits, open_data

__all__ = [
    "DEFAULT_MACS_BUDGET", "DEFAULT_SPARSITY", "DEPGRAPH_MAX_RATIO", "DEPGRAPH_STEPS",
    "Importance", "PruneConfig", "PruneMethod", "PruneScope",
    "channel_importance", "gzip_state_bytes", "macs_of_widths", "prunable_weights",
    "prune_model_depgraph", "prune_model_structured", "prune_model_unstructured", "prune_spec",
    "prune_structured", "pruned_from_checkpoint", "select_channels", "sparsity_report",
    "widths_for_macs_budget", "widths_for_ratios",
]  # fmt: skip

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# The schedules (steps, each with its fine-tune) and the stage.


def _val_top1(model: nn.Module, data: DataSplits) -> float:
    from onnxship.models.evaluate import top1

    val = data.split("val")
    return round(top1(model, val.x, val.y), 6)


def _finetune(model: nn.Module, cfg: PruneConfig, data: DataSplits, step: int) -> float:
    from onnxship.models.loop import train_sgd

    assert cfg.finetune is not None
    fit = data.split("fit")
    t0 = time.perf_counter()
    train_sgd(
        model,
        fit.x,
        fit.y,
        cfg.finetune,
        seed=cfg.seed + step,
        desc=f"prune fine-tune {step}/{cfg.steps}",
    )
    return time.perf_counter() - t0


def _measure_step(
    model: nn.Module, cfg: PruneConfig, data: DataSplits | None, entry: dict[str, Any]
) -> float:
    """After schedule step `entry["step"]`: its val top-1, then with a fine-tune configured
    the fine-tune and the val top-1 after it, into `entry`; returns the fine-tune's seconds."""
    if data is None:
        return 0.0
    entry["val_top1_pruned"] = _val_top1(model, data)
    if cfg.finetune is None:
        return 0.0
    finetune_s = _finetune(model, cfg, data, entry["step"])
    entry["val_top1_finetuned"] = _val_top1(model, data)
    return finetune_s


def prune_model_structured(
    model: nn.Module, cfg: PruneConfig, data: DataSplits | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Structured pruning of `model` (not modified) to the config's target; returns the new
    model and the metrics of the schedule (per-step widths and validation accuracy)."""
    cfg.validate()
    if cfg.width_ratios is not None:
        goal = widths_for_ratios(model, cfg.width_ratios)
    else:
        goal = widths_for_macs_budget(model, cfg.effective_macs_budget or DEFAULT_MACS_BUDGET)
    start = widths_of(model)
    current = model
    history: list[dict[str, Any]] = []
    finetune_s = 0.0
    for k in range(1, cfg.steps + 1):
        widths_k = step_widths(start, goal, k, cfg.steps)
        keep = select_channels(current, widths_k, cfg.importance)
        current = prune_structured(current, keep)
        entry: dict[str, Any] = {"step": k, "widths": widths_k}
        finetune_s += _measure_step(current, cfg, data, entry)
        history.append(entry)
        log.info("prune step %d/%d: %s", k, cfg.steps, entry)
    current.eval()
    metrics: dict[str, Any] = {"widths_before": start, "widths_after": widths_of(current)}
    metrics.update(_schedule_metrics(history, cfg, data is not None, finetune_s))
    return current, metrics


def _schedule_metrics(
    history: list[dict[str, Any]], cfg: PruneConfig, measured: bool, finetune_s: float
) -> dict[str, Any]:
    """Accuracy after the last step (and its fine-tune), plus the per-step history."""
    metrics: dict[str, Any] = {}
    if measured:
        metrics["val_top1_pruned"] = history[-1]["val_top1_pruned"]
        if cfg.finetune is not None:
            metrics["val_top1_finetuned"] = history[-1]["val_top1_finetuned"]
            metrics["finetune_s"] = round(finetune_s, 3)
    if cfg.steps > 1:
        metrics["schedule"] = history
    return metrics


def prune_model_unstructured(
    model: nn.Module, cfg: PruneConfig, data: DataSplits | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Unstructured magnitude pruning of a copy of `model`, baked with `prune.remove`."""
    cfg.validate()
    pruned = copy.deepcopy(model)
    layers = prunable_weights(pruned)
    if not layers:
        raise ModelsError(f"{arch_of(model)} has no Conv2d/Linear weights to prune")
    history: list[dict[str, Any]] = []
    finetune_s = 0.0
    plan: list[tuple[int, float | None]]
    if cfg.threshold is not None:
        plan = [(1, None)]
    else:
        target = cfg.effective_sparsity or DEFAULT_SPARSITY
        plan = [(k, target * k / cfg.steps) for k in range(1, cfg.steps + 1)]
    previous = 0.0
    for k, s_k in plan:
        if s_k is None:
            with torch.no_grad():
                for _, m in layers:
                    mask = weight_of(m).abs() > float(cfg.threshold or 0.0)
                    torch_prune.custom_from_mask(m, "weight", mask=mask)
        else:
            apply_sparsity_step(layers, previous, s_k, cfg.scope)
            previous = s_k
        # Masks stay attached while fine-tuning (a forward pre-hook re-applies them), so
        # pruned weights stay zero; `prune.remove` bakes them in at the end.
        entry: dict[str, Any] = {"step": k, "sparsity": sparsity_report(pruned)["total"]}
        finetune_s += _measure_step(pruned, cfg, data, entry)
        history.append(entry)
    bake(layers)
    pruned.eval()
    metrics: dict[str, Any] = {"sparsity_per_layer": sparsity_report(pruned)}
    metrics["sparsity"] = metrics["sparsity_per_layer"]["total"]
    metrics.update(_schedule_metrics(history, cfg, data is not None, finetune_s))
    return pruned, metrics


def prune_model_depgraph(
    model: nn.Module,
    cfg: PruneConfig,
    input_shape: tuple[int, ...],
    data: DataSplits | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Structured pruning of any network (a user's factory model) with Torch-Pruning's DepGraph;
    `model` is not modified.

    Width ratios: one number, the fraction of channels kept in every prunable group. MACs
    budget: DepGraph steps until MACs <= budget * MACs(model). With `steps` > 1 the budget (or
    ratio) is reached geometrically over the steps, with a fine-tune after each when configured.
    """
    cfg.validate()
    if isinstance(cfg.width_ratios, Mapping):
        raise ModelsError(
            "width ratios by name apply to registry architectures; for a factory model give one "
            "number (the fraction of channels kept in every layer) or a MACs budget"
        )
    example = torch.zeros((1, *input_shape), dtype=torch.float32)
    macs_src = count_macs(model, example.shape)
    current = copy.deepcopy(model).eval()
    history: list[dict[str, Any]] = []
    finetune_s = 0.0
    if cfg.width_ratios is not None:
        pruner = depgraph_pruner(
            current, 1.0 - float(cfg.width_ratios), cfg.steps, example, cfg.importance
        )
    else:
        pruner = depgraph_pruner(
            current, DEPGRAPH_MAX_RATIO, DEPGRAPH_STEPS, example, cfg.importance
        )
        budget = cfg.effective_macs_budget or DEFAULT_MACS_BUDGET
    taken = 0
    for k in range(1, cfg.steps + 1):
        current.eval()
        if cfg.width_ratios is not None:
            pruner.step()
            taken += 1
        else:
            limit = budget ** (k / cfg.steps) * macs_src
            while count_macs(current, example.shape) > limit:
                if taken == DEPGRAPH_STEPS:
                    reached = count_macs(current, example.shape)
                    raise ModelsError(
                        f"a MACs budget of {budget} ({limit:,.0f} of {macs_src:,} MACs) is out "
                        f"of reach: DepGraph pruning of {DEPGRAPH_MAX_RATIO:.0%} of every "
                        f"prunable group leaves {reached:,} MACs (unprunable layers dominate); "
                        f"pass a budget >= {reached / macs_src:.4f}"
                    )
                pruner.step()
                taken += 1
        entry: dict[str, Any] = {
            "step": k,
            "depgraph_steps": taken,
            "macs": count_macs(current, example.shape),
        }
        finetune_s += _measure_step(current, cfg, data, entry)
        history.append(entry)
        log.info("DepGraph prune step %d/%d: %s", k, cfg.steps, entry)
    current.eval()
    metrics: dict[str, Any] = {
        "pruner": f"torch-pruning {tp_version()} DepGraph (MetaPruner, group magnitude)",
        "depgraph_steps": taken,
    }
    metrics.update(_schedule_metrics(history, cfg, data is not None, finetune_s))
    return current, metrics


def pruned_from_checkpoint(
    src: str | os.PathLike[str],
    cfg: PruneConfig,
    out_path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    data: DataConfig | None = None,
) -> Artifact:
    """Prune the checkpoint `src` and write the pruned checkpoint (+ sidecar) to `out_path`.
    The data is `data`, else the one the checkpoint records, else MNIST under `data_dir`.
    Registry architectures prune by their channel groups; a user's factory model by DepGraph.

    Metrics: macs/params before and after, widths before/after, `val_top1_before`,
    `val_top1_pruned` (right after pruning), `val_top1_finetuned` when fine-tuning, and for
    unstructured pruning the sparsity per layer and gzip-compressed state-dict sizes.
    """
    cfg.validate()
    src_path = Path(src)
    model, meta = load_checkpoint(src_path)
    parent = sha256_file(src_path)
    splits = open_data(data or _recorded_data(meta.data), data_dir)
    shape = (1, *meta.input_shape)
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {
        "method": cfg.method.value,
        "arch": meta.arch,
        "macs_before": count_macs(model, shape),
        "params_before": count_params(model),
        "val_top1_before": _val_top1(model, splits),
    }
    if cfg.method is PruneMethod.STRUCTURED and meta.factory is not None:
        pruned, extra = prune_model_depgraph(model, cfg, meta.input_shape, splits)
        metrics["macs_budget"] = cfg.effective_macs_budget
        metrics["width_ratios"] = cfg.width_ratios
    elif cfg.method is PruneMethod.STRUCTURED:
        pruned, extra = prune_model_structured(model, cfg, splits)
        metrics["macs_budget"] = cfg.effective_macs_budget
        metrics["width_ratios"] = cfg.width_ratios
    else:
        pruned, extra = prune_model_unstructured(model, cfg, splits)
        metrics["gzip_bytes_before"] = gzip_state_bytes(model)
        metrics["gzip_bytes_after"] = gzip_state_bytes(pruned)
        metrics["params_nonzero_after"] = count_nonzero_params(pruned)
        metrics["note"] = (
            "unstructured sparsity keeps every tensor at full size: dense inference is not "
            "faster and the raw file is not smaller; the benefit is the gzip-compressed download"
        )
    metrics["macs_after"] = count_macs(pruned, shape)
    metrics["params_after"] = count_params(pruned)
    metrics["macs_ratio"] = round(metrics["macs_after"] / metrics["macs_before"], 6)
    metrics.update(extra)
    metrics["prune_wall_s"] = round(time.perf_counter() - t0, 3)
    if meta.factory is None:
        metrics.setdefault("widths_before", dict(meta.widths))
        metrics.setdefault("widths_after", widths_of(pruned))
    else:  # a factory model's "widths": the output channels of its conv and linear layers
        metrics["widths_before"] = _layer_widths(model)
        metrics["widths_after"] = _layer_widths(pruned)
    log.info(
        "pruned %s: %s -> %s MACs, val top-1 %.4f -> %.4f",
        src_path,
        metrics["macs_before"],
        metrics["macs_after"],
        metrics["val_top1_before"],
        metrics["val_top1_pruned"],
    )
    return save_checkpoint(
        pruned,
        out_path,
        stage="prune",
        seed=cfg.seed,
        metrics=metrics,
        parent_sha256=parent,
        config=cfg,
        extra={"pruned_from": os.fspath(src_path), "pruned_from_sha256": parent},
        like=meta,
    )


def _layer_widths(model: nn.Module) -> dict[str, int]:
    return {
        name: int(getattr(m, "out_channels", getattr(m, "out_features", 0)))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
    }


def _recorded_data(raw: Mapping[str, Any] | None) -> DataConfig | None:
    return None if raw is None else DataConfig.from_json(raw)
