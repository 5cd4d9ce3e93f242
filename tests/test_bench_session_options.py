"""Session-config files (checked against the installed onnxruntime) and the session search."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
import tiny_onnx as tiny  # noqa: E402  (tests/ is on sys.path)

from onnxship.cli import main
from onnxship.core.env import usable_cores
from onnxship.runtime_bench.errors import BenchError
from onnxship.runtime_bench.session import (
    ExecutionMode,
    GraphOptimization,
    SessionConfig,
    create_session,
)
from onnxship.runtime_bench.session_options import (
    TuneConfig,
    load_session_config,
    session_config_document,
    tune_session,
    write_session_config,
)

ODD = SessionConfig(
    intra_op_threads=2, inter_op_threads=2, allow_spinning=False,
    graph_optimization=GraphOptimization.BASIC, execution_mode=ExecutionMode.PARALLEL,
    extra_options={"enable_mem_pattern": False},
)  # fmt: skip


def _write(tmp_path: Path, doc: dict) -> Path:
    return write_session_config(tmp_path / "session.json", doc)


def test_session_config_round_trips_and_runs_exactly_its_options(tmp_path: Path):
    path = _write(tmp_path, session_config_document(ODD, "cpu"))
    doc = json.loads(path.read_text())
    assert doc["session_options"]["execution_mode"] == "ORT_PARALLEL"
    assert doc["session_options"]["extra_session_config"]["session.intra_op.allow_spinning"] == "0"
    loaded = load_session_config(path)
    assert loaded.provider == "CPUExecutionProvider"
    assert loaded.session == ODD.__class__(**{**ODD.__dict__, "provider_options": ()})
    handle = create_session(tiny.linear_classifier(tmp_path / "m.onnx"), "cpu", loaded.session)
    so = handle.session.get_session_options()
    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 2
    assert so.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert so.enable_mem_pattern is False
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d["session_options"].update(intra_op_num_thread=2),
            "names option 'intra_op_num_thread', which onnxruntime",
        ),
        (
            lambda d: d["session_options"].update(add_initializer=1),
            "names option 'add_initializer'",
        ),
        (
            lambda d: d["session_options"].update(execution_mode="ORT_TURBO"),
            "execution_mode is 'ORT_TURBO'",
        ),
        (
            lambda d: d["session_options"].update(graph_optimization_level="fast"),
            "graph_optimization_level is 'fast'",
        ),
        (lambda d: d.update(cuda_graph=True), "cuda_graph is true but the provider is CPU"),
        (lambda d: d.update(threads=4), "unknown keys ['threads']"),
        (lambda d: d.update(format="olive"), "expected 'onnxship.session_config'"),
    ],
)
def test_session_config_refuses_what_this_onnxruntime_lacks(tmp_path: Path, edit, expected):
    doc = session_config_document(SessionConfig(), "cpu")
    edit(doc)
    with pytest.raises(BenchError) as info:
        load_session_config(_write(tmp_path, doc))
    assert expected in str(info.value)


def test_tune_session_keeps_the_defaults_unless_the_margin_is_cleared(tmp_path: Path):
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    # no alternative can be a million times faster: the defaults stay, whatever the noise
    result = tune_session(model, "cpu", TuneConfig(batch_size=8, margin=1e6, budget_s=3))
    assert result["defaults_are_best"] is True and result["chosen"] == SessionConfig()
    assert result["gain"] is None
    stages = {s["stage"]: s for s in result["stages"]}
    threads = stages["threads"]
    labels = [c["options"] for c in threads["candidates"]]
    assert labels[0] == "threads=1 spin=on graph=all mode=sequential"
    assert f"threads={usable_cores()} spin=on graph=all mode=sequential" in labels
    if usable_cores() > 1:
        assert f"threads={usable_cores()} spin=off graph=all mode=sequential" in labels
    assert "keep" in threads["verdict"]
    assert len(stages["graph_optimization"]["candidates"]) == len(GraphOptimization)
    assert "skipped" in stages["cuda_io"]
    for c in threads["candidates"][1:]:
        assert c["speedup_ci"][0] <= c["speedup"] <= c["speedup_ci"][1]


def test_cli_tune_then_bench_and_eval_run_the_file(tmp_path: Path, capsys):
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    cfg = tmp_path / "tuned.json"
    rc = main(["bench", str(model), "--tune-session", str(cfg), "--batch-sizes", "4",
               "--budget-s", "3", "--tune-margin", "1e6"])  # fmt: skip
    assert rc == 0 and "defaults are best" in capsys.readouterr().out
    doc = json.loads(cfg.read_text())
    assert doc["tuned_for"]["batch_size"] == 4 and doc["fingerprint"]["id"]
    assert doc["evidence"]["defaults_are_best"] is True
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "bench",
                str(model),
                "--session-config",
                str(cfg),
                "--batch-sizes",
                "1",
                "--warmup",
                "1",
                "--iterations",
                "5",
                "--no-progress",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    row = json.loads(out.read_text())["results"][0]
    assert row["threads"] == doc["session_options"]["intra_op_num_threads"]
    assert row["fingerprint"]["intra_op_threads"] == row["threads"]
    assert row["fingerprint"]["provider"] == "CPUExecutionProvider" and row["fingerprint"]["id"]
    data = tmp_path / "d.npz"
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(data, x=rng.standard_normal((20, 1, 28, 28)).astype(np.float32),
             y=rng.integers(0, 10, 20).astype(np.int64))  # fmt: skip
    ev = tmp_path / "e.json"
    assert main(["eval", str(model), "--data", str(data), "--session-config", str(cfg),
                 "--json", str(ev)]) == 0  # fmt: skip
    assert json.loads(ev.read_text())["session"]["execution_mode"] == "sequential"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--threads", "2"], "drop --threads"),
        (["--provider", "cuda"], "was made for CPUExecutionProvider"),
    ],
)
def test_cli_session_config_refuses_clashing_flags(tmp_path: Path, capsys, args, expected):
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    cfg = _write(tmp_path, session_config_document(SessionConfig(), "cpu"))
    assert main(["bench", str(model), "--session-config", str(cfg), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_cli_session_config_with_unknown_option_exits_2_in_bench_and_eval(tmp_path, capsys):
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    doc = session_config_document(SessionConfig(), "cpu")
    doc["session_options"]["use_turbo"] = True
    cfg = _write(tmp_path, doc)
    for cmd in (["bench", str(model)], ["eval", str(model)]):
        assert main([*cmd, "--session-config", str(cfg)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "names option 'use_turbo'" in err[0], err


def test_cli_tune_session_wants_one_model_and_one_batch(tmp_path: Path, capsys):
    model = tiny.linear_classifier(tmp_path / "m.onnx")
    rc = main(["bench", str(model), "--tune-session", str(tmp_path / "t.json")])
    assert rc == 2 and "one model at one batch size" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()
