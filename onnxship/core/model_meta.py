"""The metadata onnxship writes into every `.onnx` file (`metadata_props`): keys, writer, reader.

A deployer reads these to feed the model correctly without onnxship's Python code; the
torch-free side (eval, calibration) reads the normalisation from here so preprocessing cannot
drift from training. Values are strings; lists and dicts are JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from onnxship.core.errors import CoreError

PRODUCER = "onnxship.producer"  # "onnxship 0.1.0"
SOURCE_SHA256 = "onnxship.source_sha256"  # sha256 of the checkpoint (or parent .onnx)
ARCHITECTURE = "onnxship.architecture"  # registry name, e.g. "simple_cnn"
WIDTHS = "onnxship.widths"  # JSON dict, e.g. {"conv_channels": 8, "hidden": 32}
INPUT_MEAN = "onnxship.input_mean"  # JSON list, per channel, pixels scaled to [0, 1]
INPUT_STD = "onnxship.input_std"  # JSON list, per channel
INPUT_PREPROCESS = "onnxship.input_preprocess"  # human-readable recipe
CLASS_LABELS = "onnxship.class_labels"  # JSON list of strings, index = logit position
PRECISION = "onnxship.precision"  # "fp32" | "fp16" | "int8"

PREPROCESS_TEXT = "x = (pixel_uint8 / 255 - mean) / std, layout NCHW float32"


@dataclass(frozen=True)
class ModelMeta:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_labels: tuple[str, ...]
    raw: dict[str, str]

    @property
    def architecture(self) -> str | None:
        return self.raw.get(ARCHITECTURE)


def read_metadata_map(path: str | os.PathLike[str]) -> dict[str, str]:
    """metadata_props of an .onnx file, read through onnxruntime (no onnx/torch needed)."""
    import onnxruntime as ort

    from onnxship.core.onnx_file import check_model_file

    check_model_file(path)
    sess = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return dict(sess.get_modelmeta().custom_metadata_map)


def parse_meta(raw: dict[str, str], *, source: str) -> ModelMeta:
    """Parse the normalisation and labels; a missing key is a clear error asking for them."""
    missing = [k for k in (INPUT_MEAN, INPUT_STD) if k not in raw]
    if missing:
        raise CoreError(
            f"{source} has no onnxship metadata ({', '.join(missing)} missing): the input "
            "normalisation is unknown; export it with `onnxship export`, or pass --mean and "
            "--std explicitly"
        )
    try:
        mean = tuple(float(v) for v in json.loads(raw[INPUT_MEAN]))
        std = tuple(float(v) for v in json.loads(raw[INPUT_STD]))
        labels: Any = json.loads(raw[CLASS_LABELS]) if CLASS_LABELS in raw else []
    except (ValueError, TypeError) as exc:
        raise CoreError(f"{source}: unreadable onnxship metadata ({exc}); re-export it") from exc
    return ModelMeta(mean=mean, std=std, class_labels=tuple(str(x) for x in labels), raw=raw)


def metadata_of_proto(proto: Any) -> dict[str, str]:
    """`metadata_props` of an in-memory ModelProto as a dict."""
    return {p.key: p.value for p in proto.metadata_props}


def set_metadata(proto: Any, values: dict[str, str], *, replace_all: bool = False) -> None:
    """Write `values` into `proto.metadata_props`. Keys not in `values` are kept unless
    `replace_all`; an existing key is replaced, never duplicated (ORT rejects duplicates)."""
    kept = (
        []
        if replace_all
        else [(p.key, p.value) for p in proto.metadata_props if p.key not in values]
    )
    del proto.metadata_props[:]
    for key, value in [*kept, *values.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
