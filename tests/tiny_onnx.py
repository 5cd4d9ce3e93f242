"""Tiny `.onnx` models (and a fake MNIST folder) for runtime_bench tests, built with onnx.helper.

Tests call the builders into pytest's `tmp_path`; nothing binary is committed. To look at the
models, regenerate them into a folder: `python tests/tiny_onnx.py OUT_DIR`.
onnx is a test-time dependency only: runtime_bench itself never imports it.

This folder has no `__init__.py` on purpose (a package named `models` would shadow the
project's `models` package); tests load this file with `load_tiny_onnx()` in their module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
IR_VERSION = 9  # old enough for any onnxruntime >= 1.16
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


def _meta(model: onnx.ModelProto, mean=MNIST_MEAN, std=MNIST_STD, arch: str = "tiny") -> None:
    props = {
        "onnxship.input_mean": json.dumps(list(mean)),
        "onnxship.input_std": json.dumps(list(std)),
        "onnxship.class_labels": json.dumps([str(i) for i in range(10)]),
        "onnxship.architecture": arch,
        "onnxship.precision": "fp32",
    }
    onnx.helper.set_model_props(model, props)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def linear_weights(seed: int = 0, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((784, classes)) * 0.05).astype(np.float32)
    b = (rng.standard_normal(classes) * 0.1).astype(np.float32)
    return w, b


def linear_model(
    w: np.ndarray, b: np.ndarray, *, batch: str | int = "batch", flat_input: bool = False
) -> onnx.ModelProto:
    """Logits = flatten(x) @ w + b, checked, without metadata.

        x [batch,1,28,28] -> Flatten -> MatMul(W [784,10]) -> Add(b [10]) -> logits [batch,10]

    Three nodes before optimisation. `flat_input` makes the input [batch, 784] (no Flatten).
    """
    nodes = []
    if flat_input:
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 784])
        flat = "input"
    else:
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 28, 28])
        nodes.append(helper.make_node("Flatten", ["input"], ["flat"], axis=1))
        flat = "flat"
    nodes += [
        helper.make_node("MatMul", [flat, "W"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
    ]
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])
    graph = helper.make_graph(
        nodes,
        "linear",
        [x],
        [y],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    return _model(graph)


def linear_classifier(
    path: Path,
    *,
    batch: str | int = "batch",
    seed: int = 0,
    metadata: bool = True,
    flat_input: bool = False,
) -> Path:
    """`linear_model` with `linear_weights(seed)`, saved to `path` (with onnxship metadata
    unless `metadata` is False)."""
    model = linear_model(*linear_weights(seed), batch=batch, flat_input=flat_input)
    if metadata:
        _meta(model)
    onnx.save(model, path)
    return path


def pixel_level(k: int) -> int:
    """The uint8 value of pixel (0, 0) that `pixel_classifier` reads as class k."""
    return 20 * k + 10


def pixel_classifier(path: Path, mean=MNIST_MEAN, std=MNIST_STD) -> Path:
    """Predicts class k when pixel (0, 0) of the image is `pixel_level(k)` - an exactly known
    classifier, so accuracy on crafted data is known exactly.

        x [batch,1,28,28] -> Flatten -> MatMul(S [784,10]: row 0 all ones) -> x00 per class
          -> Sub(t [10]: normalised pixel_level(k)) -> Abs -> Neg -> logits [batch,10]
    """
    select = np.zeros((784, 10), dtype=np.float32)
    select[0, :] = 1.0
    levels = np.array([pixel_level(k) for k in range(10)], dtype=np.float32)
    targets = ((levels / np.float32(255.0) - np.float32(mean[0])) / np.float32(std[0])).astype(
        np.float32
    )
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "S"], ["x00"]),
        helper.make_node("Sub", ["x00", "t"], ["d"]),
        helper.make_node("Abs", ["d"], ["a"]),
        helper.make_node("Neg", ["a"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "pixel",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(select, "S"), numpy_helper.from_array(targets, "t")],
    )
    model = _model(graph)
    _meta(model, mean, std)
    onnx.save(model, path)
    return path


def seq_model(path: Path) -> Path:
    """x [batch, seq] -> Relu -> y [batch, seq]: a dynamic dimension besides the batch."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])],
    )
    onnx.save(_model(graph), path)
    return path


def two_input_model(path: Path) -> Path:
    """x float [batch, 4] + Cast(ids int64 [batch, 4]) -> y [batch, 4]."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["ids"], ["idsf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["x", "idsf"], ["y"]),
        ],
        "two",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    onnx.save(_model(graph), path)
    return path


def external_data_model(folder: Path, name: str = "ext.onnx", sidecar: str = "ext.data") -> Path:
    """linear_classifier with its weights in an external-data sidecar file `sidecar`.

    Written by hand (offset/length entries) rather than with onnx's converter, which checks
    for an existing sidecar relative to the working directory."""
    tmp = folder / f".{name}.inline"
    linear_classifier(tmp)
    model = onnx.load(tmp)
    tmp.unlink()
    blob = bytearray()
    for tensor in model.graph.initializer:
        data = numpy_helper.to_array(tensor).tobytes()
        offset = len(blob)
        blob += data
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", sidecar), ("offset", offset), ("length", len(data))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
    (folder / sidecar).write_bytes(bytes(blob))
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_fake_mnist(root: Path, test_images: np.ndarray, test_labels: np.ndarray) -> Path:
    """An MNIST folder (torchvision layout) whose test split is the given uint8 arrays; the
    training split is a small copy of it (onnxship.core.mnist needs all four files)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    _write_idx(raw / "t10k-images-idx3-ubyte", test_images)
    _write_idx(raw / "t10k-labels-idx1-ubyte", test_labels)
    _write_idx(raw / "train-images-idx3-ubyte", test_images)
    _write_idx(raw / "train-labels-idx1-ubyte", test_labels)
    return root


def crafted_mnist(n: int, n_correct: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` images for `pixel_classifier`, of which exactly `n_correct` encode their label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
    shown = labels.copy()
    wrong = rng.permutation(n)[: n - n_correct]
    shown[wrong] = (labels[wrong] + 1 + rng.integers(0, 9, size=wrong.size)) % 10
    images[:, 0, 0] = [pixel_level(int(k)) for k in shown]
    return images, labels


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny_models")
    out.mkdir(parents=True, exist_ok=True)
    linear_classifier(out / "linear.onnx")
    linear_classifier(out / "linear_b1.onnx", batch=1)
    pixel_classifier(out / "pixel.onnx")
    seq_model(out / "seq.onnx")
    two_input_model(out / "two_input.onnx")
    external_data_model(out)
    print(f"wrote tiny models to {out}")
