"""The INT8 file the quantize stage writes: the chosen candidate, self-contained, with the
source's metadata and where its recipe was validated and is exact.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnxship.calibrate.recipes import Recipe
from onnxship.core import model_meta
from onnxship.core.artifact import atomic_output

RECIPE_KEY = "onnxship.quant_recipe"  # extra metadata key on the INT8 model
# Where the INT8 file was validated and where its recipe is exact (metadata on the INT8 model).
VALIDATED_CLASS_KEY = "onnxship.integer_class"  # the integer class accuracy was measured on
SAFE_CLASSES_KEY = "onnxship.safe_integer_classes"  # JSON list: classes the recipe is exact on
RISK_KEY = "onnxship.quant_risk"  # the recipe's risk elsewhere, in words


def write_int8(
    chosen: Path,
    out_path: Path,
    src_meta: dict[str, str],
    *,
    src_sha: str,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    recipe: Recipe,
    recipe_name: str,
    strip_node_metadata: bool,
) -> None:
    """Copy `chosen` to `out_path` (atomic, self-contained) with the source's metadata, the
    recipe, the integer class it was validated on and the classes the recipe is exact on."""
    import json

    import onnx

    from onnxship.core.env import integer_class

    model = onnx.load(os.fspath(chosen))
    meta = dict(src_meta)
    if mean is not None and std is not None:  # None: npz data, preprocessed by the user
        meta[model_meta.INPUT_MEAN] = json.dumps([float(v) for v in mean])
        meta[model_meta.INPUT_STD] = json.dumps([float(v) for v in std])
        meta.setdefault(model_meta.INPUT_PREPROCESS, model_meta.PREPROCESS_TEXT)
    meta[model_meta.PRECISION] = "int8"
    meta[model_meta.SOURCE_SHA256] = src_sha
    meta[RECIPE_KEY] = recipe_name
    meta[VALIDATED_CLASS_KEY] = integer_class()
    meta[SAFE_CLASSES_KEY] = json.dumps(recipe.safe_integer_classes())
    meta[RISK_KEY] = recipe.risk
    if strip_node_metadata:
        for node in model.graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
    model_meta.set_metadata(model, meta, replace_all=True)
    drop_unused_opset_imports(model)
    with atomic_output(out_path) as tmp:
        onnx.save_model(model, os.fspath(tmp), save_as_external_data=False)


def _node_domains(graph: Any) -> set[str]:
    """Domains of every node of `graph`, its subgraphs (If/Loop/Scan bodies) included."""
    domains: set[str] = set()
    for node in graph.node:
        domains.add(node.domain)
        for attr in node.attribute:
            if attr.HasField("g"):
                domains |= _node_domains(attr.g)
            for sub in attr.graphs:
                domains |= _node_domains(sub)
    return domains


def drop_unused_opset_imports(model: Any) -> list[str]:
    """Remove opset imports of domains no node uses; return their names.

    ORT's optimizer (the quantizer's pre-processing) saves a model importing every domain it
    knows (ai.onnx.training, com.microsoft.nchwc, org.pytorch.aten, ...), used or not; an
    older onnxruntime on the deployment machine need not know those domain versions. The
    default domain and the domains of local functions stay."""
    used = _node_domains(model.graph) | {"", "ai.onnx"}
    for fn in model.functions:
        used.add(fn.domain)
        used |= {n.domain for n in fn.node}
    kept = [o for o in model.opset_import if o.domain in used]
    dropped = [o.domain for o in model.opset_import if o.domain not in used]
    if dropped:
        del model.opset_import[:]
        model.opset_import.extend(kept)
    return dropped
