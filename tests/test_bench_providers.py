"""The EP table (runtime_bench.providers): names, aliases, short labels and the probe, used
by bench, the pipeline's bench stage, gate and the report alike."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from onnxship.gate import gate
from onnxship.runtime_bench import providers
from onnxship.runtime_bench.providers import (
    CPU_EP,
    CUDA_EP,
    PROBE_MODEL,
    probe_provider,
    resolve_provider,
    short_name,
)


def test_probe_model_bytes_are_the_one_node_model_onnx_helper_builds() -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "onnxship-probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    assert model.SerializeToString() == PROBE_MODEL


def test_probe_runs_on_the_cpu_ep_by_alias_and_says_why_an_unknown_ep_cannot() -> None:
    assert probe_provider("cpu") == providers.ProviderProbe(
        CPU_EP, True, f"a probe session ran on {CPU_EP}"
    )
    unknown = probe_provider("NoSuchExecutionProvider")
    assert not unknown.usable and "has no NoSuchExecutionProvider" in unknown.reason


@pytest.mark.parametrize(
    ("spec", "name", "short"),
    [("cpu", CPU_EP, "CPU"), ("CUDA", CUDA_EP, "CUDA"),
     ("OpenVINOExecutionProvider", "OpenVINOExecutionProvider", "OpenVINO")],
)  # fmt: skip
def test_aliases_resolve_case_insensitively_and_names_shorten(
    spec: str, name: str, short: str
) -> None:
    assert resolve_provider(spec) == name and short_name(name) == short


@pytest.mark.parametrize("spec", ["cpu", "CPU", "CPUExecutionProvider"])
def test_gate_latency_ratios_name_the_ep_the_way_bench_does(tmp_path: Path, spec: str) -> None:
    """`--provider CPU` works for bench; the same spelling in a baseline's latency_ratios
    must find the CPU EP's latencies, not fail as a missing EP."""
    lat = {"64": {"p50_ms": 1.0}}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"schema_version": 1, "artifacts": {
        n: {"path": f"artifacts/{n}.onnx", "accuracy": {"test_top1": 0.99},
            "latency": {CPU_EP: {"64": {"p50_ms": p}}}}
        for n, p in (("a", 0.5), ("b", lat["64"]["p50_ms"]))
    }}))  # fmt: skip
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({
        "artifacts": {"a": {"test_top1": 0.99, "max_drop": 0.0}},
        "latency_ratios": [{"fast": "a", "slow": "b", "provider": spec, "batch": 64,
                            "min_ratio": 1.5}],
    }))  # fmt: skip
    latency = [c for c in gate(manifest, baseline, check_latency=True) if c.kind == "latency"]
    assert len(latency) == 1 and latency[0].ok, latency
    assert latency[0].observed == pytest.approx(2.0)


def test_the_pipeline_bench_stage_and_bench_share_the_table() -> None:
    from onnxship import measure
    from onnxship.runtime_bench import session

    assert measure.probe_provider is providers.probe_provider
    assert session.resolve_provider is providers.resolve_provider
    assert session.check_provider_available is providers.check_provider_available
