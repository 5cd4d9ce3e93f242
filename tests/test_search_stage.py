"""The search stage: the latency screen on real ONNX Runtime sessions, the race and the
selection rule (fastest within the budget, decided on this run's validation numbers), the
manifest's `recommended` map and the Pareto plot. Tiny models; no timed assertions."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from onnxship.errors import PipelineError
from onnxship.export.onnx_export import onnx_from_module
from onnxship.manifest import int8_shipping_verdict, recommend
from onnxship.measure import RecommendPolicy
from onnxship.models.registry import create_model
from onnxship.models.search_space import (
    PRUNED,
    StudentCandidate,
    TeacherInfo,
    patch_candidate,
    space_candidates,
)
from onnxship.report import pareto_front, write_pareto_plot
from onnxship.search import (
    ScreenConfig,
    ScreenRow,
    SearchConfig,
    best_precision,
    quantize_for_screen,
    race,
    select,
    time_interleaved,
)

FAST_SCREEN = ScreenConfig(
    batch_sizes=(1, 4), warmup=1, seconds_per_batch_size=0.01, min_iterations=3, max_iterations=3
)

MNIST_SHAPE = (1, 28, 28)
ROOT = Path(__file__).resolve().parents[1]


def _teacher_and_student_onnx(tmp_path: Path) -> tuple[np.ndarray, Path, Path]:
    """Eight random MNIST-shaped inputs, a tiny teacher's and a tiny student's FP32 files."""
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    teacher = onnx_from_module(create_model("tiny_cnn"), tmp_path / "t.onnx", MNIST_SHAPE)
    student = create_model("patch_cnn", kernel=7, stride=7, conv_channels=2, hidden=4)
    return x, teacher, onnx_from_module(student, tmp_path / "s.onnx", MNIST_SHAPE)


def test_screen_times_fp32_and_int8_of_each_candidate_interleaved(tmp_path: Path) -> None:
    x, teacher, student = _teacher_and_student_onnx(tmp_path)
    int8 = quantize_for_screen(student, "qdq-u8s8-perchannel-minmax-linear", x, tmp_path, "s")
    rows = [
        ScreenRow("teacher", {"fp32": teacher}),
        ScreenRow("s", {"fp32": student, "int8": int8}),
    ]
    time_interleaved(rows, x, FAST_SCREEN, "cpu")
    for row in rows:
        for lat in row.latency.values():
            assert set(lat) == {"1", "4"}
            for cell in lat.values():
                assert cell["iterations"] == 3
                assert 0 < cell["min_ms"] <= cell["p50_ms"]
    assert set(rows[1].latency) == {"fp32", "int8"}
    label, value = best_precision(rows[1], 4)
    assert value == min(rows[1].latency[p]["4"]["min_ms"] for p in ("fp32", "int8"))
    assert label in ("fp32", "int8")


def test_screened_fp32_graph_matches_torch_at_the_export_default_opset(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from onnxship.export.onnx_export import ExporterKind, resolve_opset

    torch.manual_seed(0)
    model = create_model("patch_cnn", kernel=6, stride=4, conv_channels=3, hidden=5).eval()
    path = onnx_from_module(model, tmp_path / "m.onnx", MNIST_SHAPE)
    x = torch.randn(3, 1, 28, 28)
    got = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)
    proto = onnx.load(path)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [
        resolve_opset(None, ExporterKind.TORCHSCRIPT)
    ]
    assert [i.type.tensor_type.shape.dim[0].dim_param for i in proto.graph.input] == ["batch"]
    assert [o.name for o in proto.graph.output] == ["logits"]


def _cands() -> list[StudentCandidate]:
    return [
        patch_candidate(4, 4, 8, 64),  # fastest
        patch_candidate(4, 4, 16, 64),
        patch_candidate(7, 7, 32, 64),
        StudentCandidate("pruned-teacher", "simple_cnn", (), origin=PRUNED),  # slowest
    ]


SPEED = {"patch k4s4 c8 h64": 20.0, "patch k4s4 c16 h64": 14.0, "patch k7s7 c32 h64": 12.0,
         "pruned-teacher": 3.0}  # fmt: skip


def test_select_picks_the_fastest_candidate_within_budget_on_validation() -> None:
    val = {"patch k4s4 c8 h64": 0.985, "patch k4s4 c16 h64": 0.9885, "patch k7s7 c32 h64": 0.99,
           "pruned-teacher": 0.989}  # fmt: skip
    seen: list[str] = []

    def evaluate(c: StudentCandidate) -> float:
        seen.append(c.name)
        return val[c.name]

    winner, out = select(_cands(), SPEED, evaluate, teacher_val=0.9912, max_drop=0.003,
                         max_trained=5, budget_s=0)  # fmt: skip
    # 0.9912 - 0.9885 = 0.27 pp <= 0.3 pp: the 14x candidate wins; slower ones are not trained.
    assert winner is not None and winner.name == "patch k4s4 c16 h64"
    assert seen == ["patch k4s4 c8 h64", "patch k4s4 c16 h64"]
    assert out["patch k4s4 c8 h64"].status == "rejected"
    assert out["patch k4s4 c16 h64"].status == "kept"
    assert out["patch k7s7 c32 h64"].status == "screened"
    assert "slower than the winner" in out["pruned-teacher"].reason


def test_select_counts_a_drop_of_exactly_the_budget_as_within() -> None:
    winner, _ = select(_cands()[:1], SPEED, lambda c: 0.9882, teacher_val=0.9912, max_drop=0.003,
                       max_trained=1, budget_s=0)  # fmt: skip
    assert winner is not None


def test_select_skips_narrower_candidates_of_a_stem_that_missed_the_budget() -> None:
    cands = [patch_candidate(4, 4, 32, 64), patch_candidate(4, 4, 16, 64)]
    speed = {cands[0].name: 10.0, cands[1].name: 5.0}
    winner, out = select(cands, speed, lambda c: 0.97, teacher_val=0.99, max_drop=0.003,
                         max_trained=5, budget_s=0)  # fmt: skip
    assert winner is None
    assert out[cands[1].name].status == "skipped"
    assert cands[0].name in out[cands[1].name].reason


def test_select_stops_training_at_the_candidate_budget_but_scores_the_pruned_teacher() -> None:
    winner, out = select(_cands(), SPEED, lambda c: 0.98 if c.origin != PRUNED else 0.99,
                         teacher_val=0.9912, max_drop=0.003, max_trained=1, budget_s=0)  # fmt: skip
    assert winner is not None and winner.origin == PRUNED
    assert out["patch k4s4 c8 h64"].status == "rejected"
    for name in ("patch k4s4 c16 h64", "patch k7s7 c32 h64"):
        assert out[name].status == "screened"
        assert "candidate budget" in out[name].reason
    assert out["pruned-teacher"].status == "kept"


def test_search_config_refuses_a_rank_batch_that_is_not_screened() -> None:
    with pytest.raises(PipelineError, match="rank_batch 32 is not among"):
        SearchConfig(rank_batch=32).validate()


def _art(top1: float, precision: str = "fp32", size: int = 1000) -> dict:
    return {"accuracy": {"test_top1": top1}, "precision": precision, "bytes": size}


def _bench(p50: dict[str, dict[str, float]], noise: float = 0.01, rounds: int = 60) -> dict:
    """A bench document: per artifact and batch, per-round p50s around the given p50 (a
    relative spread of `noise`), as the interleaved bench stage writes them."""
    rng = np.random.default_rng(0)
    rows = []
    for name, by_batch in p50.items():
        for batch, value in by_batch.items():
            per_round = value * (1 + noise * rng.standard_normal(rounds))
            rows.append({"model": f"artifacts/{name}.onnx", "provider": "CPUExecutionProvider",
                         "batch_size": int(batch), "io": "host", "p50_ms": value,
                         "p50_ci_ms": [value * 0.99, value * 1.01], "threads": 1,
                         "spinning": True, "graph_optimization": "all",
                         "round_stats_ms": per_round.tolist()})  # fmt: skip
    return {"results": rows}


def test_recommend_names_the_fastest_artifact_within_the_budget_per_ep() -> None:
    arts = {
        "teacher-fp32": _art(0.992, size=90_000),
        "student-int8": _art(0.9906, "int8", 5_000),
        "searched-fp32": _art(0.9895, size=8_000),  # 0.25 pp below: within
        "searched-int8": _art(0.9880, "int8", 3_000),  # 0.40 pp below: out
    }
    bench = _bench({
        "teacher-fp32": {"1": 0.05, "64": 1.3}, "student-int8": {"1": 0.014, "64": 0.29},
        "searched-fp32": {"1": 0.008, "64": 0.11}, "searched-int8": {"1": 0.007, "64": 0.09},
    })  # fmt: skip
    chosen, detail, by_scenario = recommend(arts, bench, max_drop=0.003)
    assert chosen == {"CPUExecutionProvider": "searched-fp32"}
    d = detail["CPUExecutionProvider"]
    assert d["scenario"] == "offline" and d["batch_size"] == 64 and d["decision"] == "fastest"
    assert d["speedup_vs_teacher_fp32"] == pytest.approx(1.3 / 0.11, rel=0.03)
    lo, hi = d["speedup_vs_teacher_fp32_ci"]
    assert lo <= d["speedup_vs_teacher_fp32"] <= hi
    assert d["session_options"]["intra_op_threads"] == 1
    assert "searched-int8" in d["not_eligible"]
    assert by_scenario["CPUExecutionProvider"] == {
        "single-stream": "searched-fp32", "offline": "searched-fp32"
    }  # fmt: skip
    assert d["scenarios"]["single-stream"]["batch_size"] == 1


def test_recommend_ships_the_simpler_artifact_on_a_tie_within_noise() -> None:
    arts = {"teacher-fp32": _art(0.992, size=90_000), "searched-fp32": _art(0.991, size=8_000),
            "searched-fp16": _art(0.991, "fp16", 4_000)}  # fmt: skip
    # FP16 0.7 % faster than FP32: inside the tie band, the simpler FP32 ships.
    bench = _bench({"teacher-fp32": {"64": 1.3}, "searched-fp32": {"64": 0.110},
                    "searched-fp16": {"64": 0.1092}})  # fmt: skip
    chosen, detail, _ = recommend(arts, bench, max_drop=0.003)
    d = detail["CPUExecutionProvider"]
    assert chosen["CPUExecutionProvider"] == "searched-fp32"
    assert d["decision"] == "tie within noise" and d["fastest"] == "searched-fp16"
    lo, hi = d["fastest_speedup_over_chosen_ci"]
    assert lo <= d["fastest_speedup_over_chosen"] <= hi
    assert d["speedup_vs_teacher_fp32_ci"][0] <= d["speedup_vs_teacher_fp32"]


def test_recommend_needs_the_ci_to_clear_the_margin_not_the_point_estimate() -> None:
    arts = {"teacher-fp32": _art(0.992, size=90_000), "searched-fp32": _art(0.991, size=8_000),
            "searched-int8": _art(0.991, "int8", 3_000)}  # fmt: skip
    p50 = {
        "teacher-fp32": {"64": 1.3},
        "searched-fp32": {"64": 0.11},
        "searched-int8": {"64": 0.095},
    }  # fmt: skip  (1.16x: point above 1 + margin)
    quiet, _, _ = recommend(arts, _bench(p50, noise=0.01), max_drop=0.003)
    assert quiet["CPUExecutionProvider"] == "searched-int8"
    noisy, detail, _ = recommend(arts, _bench(p50, noise=0.6, rounds=8), max_drop=0.003)
    assert noisy["CPUExecutionProvider"] == "searched-fp32"
    assert detail["CPUExecutionProvider"]["decision"] == "tie within noise"


def test_recommend_takes_its_margins_from_the_policy() -> None:
    arts = {"teacher-fp32": _art(0.992, size=90_000), "searched-fp32": _art(0.991, size=8_000),
            "searched-int8": _art(0.991, "int8", 3_000)}  # fmt: skip
    p50 = {"teacher-fp32": {"64": 1.3}, "searched-fp32": {"64": 0.11},
           "searched-int8": {"64": 0.095}}  # fmt: skip
    strict = RecommendPolicy(margin=0.5, int8_min_speedup=1.5, int8_batch=32)
    chosen, detail, _ = recommend(arts, _bench(p50), max_drop=0.003, policy=strict)
    assert chosen["CPUExecutionProvider"] == "searched-fp32"
    rule = detail["CPUExecutionProvider"]["rule"]
    assert ">= 1.5x its own FP32 at batch 32" in rule and ">= 1.5 " in rule
    assert "1.3" not in rule and "batch 64" not in rule


def test_recommend_ships_fp32_when_int8_is_not_its_min_speedup() -> None:
    arts = {"teacher-fp32": _art(0.992, size=90_000), "searched-fp32": _art(0.991, size=8_000),
            "searched-int8": _art(0.991, "int8", 3_000)}  # fmt: skip
    bench = _bench({"teacher-fp32": {"64": 1.3}, "searched-fp32": {"64": 0.11},
                    "searched-int8": {"64": 0.05}})  # fmt: skip
    slow = int8_shipping_verdict({"latency": {"statistic": "min",
                                              "by_batch": {"64": {"min_ratio": 0.9}}}})  # fmt: skip
    assert slow[0] is False and "1.11x" in slow[1]
    chosen, detail, _ = recommend(arts, bench, max_drop=0.003,
                                  int8_verdicts={"searched-int8": slow})  # fmt: skip
    assert chosen["CPUExecutionProvider"] == "searched-fp32"
    assert "FP32 artifact ships" in detail["CPUExecutionProvider"]["not_eligible"]["searched-int8"]
    fast = int8_shipping_verdict({"latency": {"by_batch": {"64": {"min_ratio": 0.7}}}})
    assert fast[0] is True
    chosen, _, _ = recommend(arts, bench, max_drop=0.003, int8_verdicts={"searched-int8": fast})
    assert chosen["CPUExecutionProvider"] == "searched-int8"
    with_ci = {"latency": {"by_batch": {"32": {"min_ratio": 0.6, "speedup_ci": [1.2, 2.0]}}}}
    ships, why = int8_shipping_verdict(with_ci, min_speedup=1.3, batch=32)
    assert ships is False and "CI lower bound < 1.3x" in why


def test_pareto_front_keeps_only_points_nothing_beats_on_both_axes() -> None:
    pts = [(1.0, 98.0), (0.5, 97.0), (2.0, 99.0), (1.5, 97.5), (0.4, 96.0)]
    assert pareto_front(pts) == [(0.4, 96.0), (0.5, 97.0), (1.0, 98.0), (2.0, 99.0)]


def test_pareto_plot_is_written_with_trained_and_screened_out_candidates(tmp_path: Path) -> None:
    lat = {"fp32": {"64": {"min_ms": 0.2, "p50_ms": 0.3}}, "int8": {"64": {"min_ms": 0.15}}}
    metrics = {
        "rank_batch": 64, "teacher_val_top1": 0.9912, "max_drop": 0.003,
        "teacher_latency_ms": {"64": {"min_ms": 1.3}},
        "candidates": [
            {"name": "a", "status": "kept", "val_top1": 0.989, "latency": lat},
            {"name": "b", "status": "rejected", "val_top1": 0.985, "latency": lat},
            {"name": "c", "status": "screened", "val_top1": None, "latency": lat},
        ],
    }  # fmt: skip
    path = write_pareto_plot(tmp_path, metrics)
    assert path == tmp_path / "search_pareto.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_race_sends_the_best_share_on_by_validation_and_keeps_every_number() -> None:
    cands = _cands()[:3]
    short = {"patch k4s4 c8 h64": 0.95, "patch k4s4 c16 h64": 0.97, "patch k7s7 c32 h64": 0.96}
    raced = race(cands, SPEED, lambda c: short[c.name], size=3, keep=0.5, epochs=0.6)
    assert {n: e.kept for n, e in raced.items()} == {
        "patch k4s4 c16 h64": True, "patch k7s7 c32 h64": True, "patch k4s4 c8 h64": False
    }  # fmt: skip
    assert raced["patch k4s4 c8 h64"].rank == 3 and raced["patch k4s4 c8 h64"].of == 3
    assert raced["patch k4s4 c8 h64"].val_top1 == 0.95
    assert raced["patch k4s4 c16 h64"].cutoff == pytest.approx(0.96)
    # the pruned teacher is trained already: never raced
    assert "pruned-teacher" not in race(_cands(), SPEED, lambda c: 0.9, size=9, keep=1, epochs=1)


def test_race_enters_only_the_fastest_candidates_and_a_failed_one_never_goes_on() -> None:
    short = {"patch k4s4 c8 h64": None, "patch k4s4 c16 h64": 0.97, "patch k7s7 c32 h64": 0.99}
    raced = race(_cands(), SPEED, lambda c: short[c.name], size=2, keep=1.0, epochs=1)
    assert set(raced) == {"patch k4s4 c8 h64", "patch k4s4 c16 h64"}
    assert raced["patch k4s4 c8 h64"].kept is False
    assert raced["patch k4s4 c16 h64"].kept is True


def test_select_trains_only_the_race_survivors_and_gives_each_drop_its_measured_number() -> None:
    short = {
        "patch k4s4 c8 h64": 0.9512,
        "patch k4s4 c16 h64": 0.9733,
        "patch k7s7 c32 h64": 0.9688,
    }
    raced = race(_cands(), SPEED, lambda c: short[c.name], size=3, keep=0.5, epochs=0.6)
    seen: list[str] = []

    def evaluate(c: StudentCandidate) -> float:
        seen.append(c.name)
        return 0.98 if c.origin != PRUNED else 0.99

    winner, out = select(_cands(), SPEED, evaluate, teacher_val=0.9912, max_drop=0.003,
                         max_trained=5, budget_s=0, raced=raced)  # fmt: skip
    assert seen == ["patch k4s4 c16 h64", "patch k7s7 c32 h64", "pruned-teacher"]
    assert winner is not None and winner.origin == PRUNED
    dropped = out["patch k4s4 c8 h64"]
    assert dropped.status == "dropped"
    assert "95.12 %" in dropped.reason and "rank 3 of 3" in dropped.reason
    assert "0.6-epoch" in dropped.reason


def test_select_says_which_candidates_were_not_raced() -> None:
    raced = race(_cands(), SPEED, lambda c: 0.99, size=1, keep=1.0, epochs=1)
    winner, out = select(_cands(), SPEED, lambda c: 0.97, teacher_val=0.9912, max_drop=0.003,
                         max_trained=5, budget_s=0, raced=raced)  # fmt: skip
    assert out["patch k4s4 c16 h64"].status == "screened"
    assert "not raced" in out["patch k4s4 c16 h64"].reason


def _mnist_space() -> list[StudentCandidate]:
    return space_candidates("mnist_students", TeacherInfo("simple_cnn", {}))


def test_no_candidate_of_the_mnist_space_is_decided_by_a_number_from_another_run() -> None:
    """Every skip, drop and rejection names a validation number this run measured; a space
    cannot mark a candidate as unable to hold the accuracy."""
    cands = _mnist_space()
    speed = {c.name: 20.0 - i for i, c in enumerate(cands)}
    measured = {c.name: 0.95 + 0.0025 * i for i, c in enumerate(cands)}
    raced = race(cands, speed, lambda c: measured[c.name] - 0.01, size=len(cands), keep=0.5,
                 epochs=1)  # fmt: skip
    winner, out = select(cands, speed, lambda c: measured[c.name], teacher_val=0.9912,
                         max_drop=0.003, max_trained=len(cands), budget_s=0,
                         raced=raced)  # fmt: skip
    numbers = {f"{100 * v:.2f} %" for v in measured.values()}
    numbers |= {f"{100 * (v - 0.01):.2f} %" for v in measured.values()}
    for name, o in out.items():
        if o.status in ("skipped", "dropped"):
            assert any(n in o.reason for n in numbers), (name, o.reason)
        assert "prototype" not in o.reason and "issue" not in o.reason
    # with every candidate fully trained and within budget, the fastest one wins untouched
    winner, out = select(cands, speed, lambda c: 0.99, teacher_val=0.9912, max_drop=0.003,
                         max_trained=len(cands), budget_s=0)  # fmt: skip
    assert winner is not None and winner.name == max(speed, key=speed.__getitem__)
    assert not [o for o in out.values() if o.status == "skipped"]


def test_search_report_shows_no_project_internal_words() -> None:
    from onnxship.report import search_section

    cands = _mnist_space()
    speed = {c.name: 20.0 - i for i, c in enumerate(cands)}
    raced = race(cands, speed, lambda c: 0.97, size=len(cands), keep=0.5, epochs=1)
    _, out = select(cands, speed, lambda c: 0.985, teacher_val=0.9912, max_drop=0.003,
                    max_trained=3, budget_s=0, raced=raced)  # fmt: skip
    metrics = {
        "winner": "pruned-teacher", "teacher_val_top1": 0.9912, "max_drop": 0.003,
        "candidates": [{**c.to_json(), "status": out[c.name].status,
                        "reason": out[c.name].reason, "val_top1": out[c.name].val_top1}
                       for c in cands],
    }  # fmt: skip
    text = "\n".join(search_section(metrics, {}))
    assert "prototype" not in text.lower()
    assert not re.search(r"issue \d", text, re.I)
    for module in ("onnxship/search.py", "models/search_space.py"):
        source = (ROOT / module).read_text()
        assert "prototype" not in source.lower(), module
        assert not re.search(r"issue \d", source, re.I), module


def test_screen_records_the_speedup_over_the_teacher_with_its_ci_within_the_budget(
    tmp_path: Path,
) -> None:
    import time

    from onnxship.search import TEACHER_ROW

    x, teacher, student = _teacher_and_student_onnx(tmp_path)
    rows = [ScreenRow(TEACHER_ROW, {"fp32": teacher}), ScreenRow("s", {"fp32": student})]
    cfg = ScreenConfig(batch_sizes=(4,), warmup=1, seconds_per_batch_size=0.5,
                       min_iterations=30, max_iterations=1_000_000)  # fmt: skip
    start = time.perf_counter()
    time_interleaved(rows, x, cfg, "cpu")
    assert time.perf_counter() - start <= 0.5 * 1.2 + 1.0  # budget + sessions, loaded machine
    cell = rows[1].latency["fp32"]["4"]
    speedup = cell["speedup_vs_teacher"]
    assert speedup["reference"] == TEACHER_ROW and speedup["name"] == "s"
    assert speedup["ci"][0] <= speedup["ratio"] <= speedup["ci"][1]
    assert cell["p50_ci_ms"][0] <= cell["p50_ms"] <= cell["p50_ci_ms"][1]
    assert "speedup_vs_teacher" not in rows[0].latency["fp32"]["4"]


def test_recommend_says_when_its_scenario_could_not_be_decided() -> None:
    arts = {"teacher-fp32": _art(0.992, size=90_000), "searched-fp32": _art(0.991, size=8_000)}
    bench = _bench({"teacher-fp32": {"64": 1.3}, "searched-fp32": {"64": 0.11}})
    policy = RecommendPolicy(scenario="single-stream")
    chosen, detail, by_scenario = recommend(arts, bench, max_drop=0.003, policy=policy)
    assert by_scenario["CPUExecutionProvider"] == {"offline": "searched-fp32"}
    d = detail["CPUExecutionProvider"]
    assert d["scenario"] == "offline" and "single-stream could not be decided" in d["scenario_note"]
    assert chosen == {"CPUExecutionProvider": "searched-fp32"}


def test_select_scores_a_candidate_trained_ahead_even_after_the_time_budget() -> None:
    ticks = iter([0.0, 0.0, 100.0, 100.0, 100.0, 100.0])
    ahead = {"patch k4s4 c16 h64": 0.99}
    winner, out = select(_cands(), SPEED, lambda c: ahead.get(c.name, 0.97), teacher_val=0.9912,
                         max_drop=0.003, max_trained=5, budget_s=10,
                         measured=lambda c: c.name in ahead, clock=lambda: next(ticks))  # fmt: skip
    assert out["patch k4s4 c8 h64"].status == "rejected"
    assert winner is not None and winner.name == "patch k4s4 c16 h64"


def test_paired_training_trains_the_next_survivor_beside_and_never_past_the_budget() -> None:
    from onnxship.search import PairedTraining

    queue = _cands()[:3]
    calls: list[list[str]] = []

    def run_all(jobs):  # type: ignore[no-untyped-def]
        calls.append([j.args[0].name for j in jobs])
        return [job() for job in jobs]

    paired = PairedTraining(queue, lambda c: 0.9, max_trained=3, run_all=run_all)
    assert paired(queue[0]) == 0.9 and paired(queue[1]) == 0.9 and paired(queue[2]) == 0.9
    assert calls == [[queue[0].name, queue[1].name], [queue[2].name]]
    assert paired.beside == {queue[1].name: queue[0].name}


def test_searched_from_checkpoints_races_trains_and_records_each_decision_on_validation(
    trained_checkpoint: Path, mnist_root: Path, tmp_path: Path
) -> None:
    """The whole stage on an MNIST subset with tiny budgets: screen, race, full KD of the
    survivors (the distill stage's trainer), selection on validation; every candidate's row
    says what happened with the number behind it, and the winner's checkpoint loads."""
    from onnxship.models.checkpoint import load_checkpoint
    from onnxship.models.training_data import DataConfig, DatasetKind, load_split
    from onnxship.search import SearchTrainConfig, searched_from_checkpoints

    # 3,000 training (2,700 fit: 11 batches of 256) and 500 test images of MNIST as npz: the
    # teacher's logits on all 55,000 would take most of the test's time
    for split, n in (("fit", 3000), ("test", 500)):
        part = load_split(mnist_root, split)
        np.savez(tmp_path / f"{split}.npz", x=part.x[:n].numpy(), y=part.y[:n].numpy())
    data = DataConfig(
        DatasetKind.NPZ, os.fspath(tmp_path / "fit.npz"), os.fspath(tmp_path / "test.npz")
    )
    teacher, _ = load_checkpoint(trained_checkpoint)
    teacher_onnx = onnx_from_module(teacher, tmp_path / "teacher.onnx", MNIST_SHAPE)
    cands = [
        StudentCandidate("pruned-teacher", "simple_cnn", (), origin=PRUNED),
        patch_candidate(7, 7, 4, 16),
        patch_candidate(7, 7, 8, 16),
        patch_candidate(4, 4, 8, 32),
    ]
    cfg = SearchConfig(
        screen=FAST_SCREEN, rank_batch=4, race_size=3, race_fraction=0.5, race_keep=0.5,
        max_trained=2, budget_s=0, train=SearchTrainConfig(epochs=0.4),
        cache_dir=os.fspath(tmp_path / "cache"),
    )  # fmt: skip
    out = tmp_path / "searched.pt"
    # the pipeline's pruned + distilled teacher is stood in for by the teacher itself
    m = searched_from_checkpoints(trained_checkpoint, trained_checkpoint, teacher_onnx, cfg, out,
                                  data=data, candidates=cands).metrics  # fmt: skip
    assert m["decided_on"] == "val" and m["race"]["raced"] == 3 and m["race"]["went_on"] == 2
    rows = {r["name"]: r for r in m["candidates"]}
    assert set(rows) == {c.name for c in cands}
    for name, row in rows.items():
        assert row["status"] in ("screened", "dropped", "rejected", "kept"), (name, row)
        assert row["reason"] and row["latency"] and row["macs"] > 0, name
        if name != "pruned-teacher":
            assert 0 <= row["race"]["val_top1"] <= 1 and row["race"]["steps"] > 0, name
        if row["status"] in ("dropped", "rejected"):
            assert re.search(r"\d+\.\d\d (%|pp)", row["reason"]), row["reason"]
    trained = [r for r in rows.values() if "train" in r]
    assert trained and all(r["train"]["steps"] == 4 for r in trained)  # 11 batches x 0.4 epoch
    assert m["winner"] in rows and rows[m["winner"]]["status"] == "kept"
    model, meta = load_checkpoint(out)
    assert meta.metrics["winner"] == m["winner"]
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    # Run again: every KD comes from the cache of measured results, with its key, and the
    # numbers are those measured the first time (which candidates train in full can change
    # with the screen's latencies; all three are raced in both runs).
    again = searched_from_checkpoints(trained_checkpoint, trained_checkpoint, teacher_onnx, cfg,
                                      tmp_path / "again.pt", data=data,
                                      candidates=cands).metrics  # fmt: skip
    for row in again["candidates"]:
        first = rows[row["name"]]
        for phase, number in (("race", "val_top1"), ("train", "steps")):
            if phase in first and phase in row:
                assert first[phase]["cache"]["hit"] is False
                assert row[phase]["cache"] == {"hit": True, "key": first[phase]["cache"]["key"]}
                assert row[phase][number] == first[phase][number]
        assert ("race" in row) == ("race" in first)


def test_measured_cache_reuses_a_candidate_and_measures_again_when_anything_changes(
    tmp_path: Path,
) -> None:
    """A candidate measured once is taken from the cache (same validation number, same
    weights, the hit and its key in the log); another seed, recipe, data, teacher or
    candidate is another key."""
    from types import SimpleNamespace

    from onnxship.search import CandidateTrainer, MeasuredCache, SearchTrainConfig, data_sha256

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    fit = SimpleNamespace(x=torch.randn(64, 1, 28, 28, generator=gen),
                          y=torch.randint(0, 10, (64,), generator=gen))  # fmt: skip
    val = SimpleNamespace(x=fit.x[:16].clone(), y=fit.y[:16].clone())
    teacher = create_model("tiny_cnn")
    cand = patch_candidate(7, 7, 2, 4)
    recipe = SearchTrainConfig(epochs=1, batch_size=32, shift=False)
    cache = MeasuredCache(tmp_path / "cache", data_sha256(fit, val), "t" * 64)
    logs: list[dict] = []
    models = []
    for _ in range(2):
        trainer = CandidateTrainer(teacher, fit, val, None, None, False, cache)
        log: dict = {}
        logs.append({"val": trainer.val_after(cand, recipe, log), **log[cand.name]})
        models.append(trainer.models[cand.name])
    key = cache.key(cand, recipe)
    assert logs[0]["cache"] == {"hit": False, "key": key}
    assert logs[1]["cache"] == {"hit": True, "key": key}
    assert logs[1]["val"] == logs[0]["val"] and logs[1]["steps"] == logs[0]["steps"] == 2
    for name, value in models[0].state_dict().items():
        assert torch.equal(value, models[1].state_dict()[name]), name
    other_val = SimpleNamespace(x=val.x, y=(val.y + 1) % 10)
    others = {
        cache.key(cand, SearchTrainConfig(epochs=1, batch_size=32, shift=False, seed=1)),
        cache.key(cand, SearchTrainConfig(epochs=2, batch_size=32, shift=False)),
        MeasuredCache(cache.folder, data_sha256(fit, other_val), "t" * 64).key(cand, recipe),
        MeasuredCache(cache.folder, cache.data_sha256, "u" * 64).key(cand, recipe),
        cache.key(patch_candidate(7, 7, 2, 5), recipe),
    }
    assert len(others) == 5 and key not in others
