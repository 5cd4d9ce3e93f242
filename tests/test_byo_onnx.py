"""Bring your own ONNX model and data: a LeNet-style net exported by plain `torch.onnx.export`
(no onnxship metadata) with scikit-learn's real 8x8 `digits` as npz files goes through
`eval`, `fp16`, `quantize`, `bench` and `verify` - no MNIST anywhere - plus fidelity mode
(npz without labels), a non-classifier (SQNR), a two-input model, and every bad input.

Data: 1,797 digits scaled to [0, 1] and standardised, split (seeded) into train 1,000 /
calib 256 / val 244 / test 297. The net trains in a few seconds on one thread.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onnxship.calibrate.recipes import exact_recipe_on
from onnxship.cli import main
from onnxship.core.env import detected_integer_class

pytestmark = pytest.mark.slow  # trains a model on digits, quantizes, benches

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

MAX_DROP = 0.02  # 5 of 244 validation samples: the budget used in these tests
BENCH = ["--bench-seconds", "0.2", "--batch-sizes", "1,32"]
# One recipe that quantizes the convolutions, no fallback: the SQNR measured is INT8's own.
# It is the one exact on this CPU's integer class (U8S8 saturates on x86 without VNNI; its
# reduce_range twin does not), so the SQNR asserted is the quantization's, on any CPU.
CONV_RECIPE = exact_recipe_on("qdq-u8s8-perchannel-minmax", detected_integer_class()).name
QUANT_CONVS = ["--recipe", CONV_RECIPE, "--no-fallback", *BENCH]


class LeNet(torch.nn.Module):
    """A user's own classifier: conv-pool-conv-pool-fc-fc on [N, 1, 8, 8]."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.features(x))


class Denoiser(torch.nn.Module):
    """Not a classifier: [N, 1, 8, 8] -> [N, 4, 8, 8] feature maps (fidelity = SQNR)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 4, 3, padding=1),
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.body(x)


class TwoInputs(torch.nn.Module):
    """Image plus a non-image feature vector -> 10 class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 64 + 3, 10)

    def forward(self, image, extra):  # type: ignore[no-untyped-def]
        h = torch.relu(self.conv(image)).flatten(1)
        return self.fc(torch.cat([h, extra], dim=1))


def _export(model, args, path: Path, names: list[str], out: str) -> Path:  # type: ignore[no-untyped-def]
    """Plain torch export (not onnxship): dynamic batch, self-contained, no metadata."""
    model.eval()
    torch.onnx.export(
        model, args, str(path), input_names=names, output_names=[out],
        dynamic_axes={**{n: {0: "batch"} for n in names}, out: {0: "batch"}},
        dynamo=False, external_data=False,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def byo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("byo")
    digits = load_digits()
    x = ((digits.images / 16.0 - 0.3) / 0.45).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(y.shape[0])
    parts = {"train": order[:1000], "calib": order[1000:1256], "val": order[1256:1500],
             "test": order[1500:]}  # fmt: skip
    files = {}
    for name, idx in parts.items():
        files[name] = root / f"{name}.npz"
        np.savez(files[name], x=x[idx], y=y[idx])
    for name in ("val", "test"):
        files[f"{name}_nolabels"] = root / f"{name}_nolabels.npz"
        np.savez(files[f"{name}_nolabels"], x=x[parts[name]])

    torch.manual_seed(0)
    net = LeNet()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    xt, yt = torch.from_numpy(x[parts["train"]]), torch.from_numpy(y[parts["train"]])
    for _ in range(30):
        perm = torch.randperm(yt.shape[0])
        for i in range(0, yt.shape[0], 100):
            b = perm[i : i + 100]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[b]), yt[b]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(torch.from_numpy(x[parts["test"]])).argmax(1).numpy()
    files["torch_test_top1"] = float((pred == y[parts["test"]]).mean())  # type: ignore[assignment]
    files["model"] = _export(
        net, (torch.zeros(1, 1, 8, 8),), root / "lenet.onnx", ["pixels"], "scores"
    )
    files["denoiser"] = _export(
        Denoiser(), (torch.zeros(1, 1, 8, 8),), root / "denoiser.onnx", ["pixels"], "maps"
    )
    files["two"] = _export(
        TwoInputs(), (torch.zeros(1, 1, 8, 8), torch.zeros(1, 3)), root / "two.onnx",
        ["image", "extra"], "scores",
    )  # fmt: skip
    extra = np.random.default_rng(1).standard_normal((x.shape[0], 3)).astype(np.float32)
    for name in ("calib", "val"):
        files[f"two_{name}"] = root / f"two_{name}.npz"
        idx = parts[name]
        np.savez(files[f"two_{name}"], image=x[idx], extra=extra[idx], y=y[idx])
    return files


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _eval(capsys: pytest.CaptureFixture[str], tmp_path: Path, *argv: str) -> dict:
    out = tmp_path / f"eval-{len(list(tmp_path.glob('eval-*')))}.json"
    code, _, err = _cli(capsys, "eval", *argv, "--json", out)
    assert code == 0, err
    return json.loads(out.read_text())


def _stage(out: Path, name: str) -> dict:
    return json.loads((out / "stages" / f"{name}.json").read_text())["metrics"]


def _quantize_npz(
    capsys: pytest.CaptureFixture[str], model: Path, out: Path, calib: Path, val: Path, *flags: str
) -> tuple[int, str, str]:
    """`onnxship quantize MODEL --out OUT --calib-npz CALIB --val-npz VAL FLAGS...`."""
    return _cli(capsys, "quantize", model, "--out", out, "--calib-npz", calib, "--val-npz", val,
                *flags)  # fmt: skip


def _quantize_within_budget(
    capsys: pytest.CaptureFixture[str], byo: dict[str, Path], out: Path, val: Path
) -> tuple[str, dict]:
    """`quantize` of byo's model to `out` on calib.npz, with the MAX_DROP budget measured on
    `val`; asserts it succeeded and returns its stdout and its stage record's metrics."""
    code, stdout, err = _quantize_npz(
        capsys, byo["model"], out, byo["calib"], val, "--max-drop", str(MAX_DROP), *BENCH
    )
    assert code == 0, err
    return stdout, _stage(out, "quantize")


# ------------------------------------------------------------------------------ the happy path


def test_byo_eval_top1_equals_torch_on_test_npz(byo, tmp_path, capsys) -> None:
    result = _eval(capsys, tmp_path, byo["model"], "--data", byo["test"])
    assert result["metric"] == "top1" and result["n"] == 297
    assert result["top1"] > 0.95  # a real classifier, not chance (0.10)
    # ORT and torch agree on the argmax of every sample (or one, at a near-tie).
    assert abs(result["top1"] - byo["torch_test_top1"]) <= 1 / 297 + 1e-9
    assert result["normalization_from"].startswith("none")


def test_byo_eval_fidelity_without_labels_needs_a_reference(byo, tmp_path, capsys) -> None:
    code, _, err = _cli(capsys, "eval", byo["model"], "--data", byo["test_nolabels"])
    assert code == 2 and "--reference" in err and len(err.strip().splitlines()) == 1
    result = _eval(
        capsys, tmp_path, byo["model"], "--data", byo["test_nolabels"], "--reference", byo["model"]
    )
    fid = result["fidelity"]
    assert result["metric"] == fid["metric"] == "top1_agreement"
    assert fid["top1_agreement"] == 1.0 and fid["max_abs_error"] == 0.0
    both = _eval(capsys, tmp_path, byo["model"], "--data", byo["test"], "--reference", byo["model"])
    assert both["metric"] == "top1" and both["fidelity"]["top1_agreement"] == 1.0


def test_byo_fp16_parity_on_npz_without_metadata(byo, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code, stdout, err = _cli(capsys, "fp16", byo["model"], "--out", out, "--data", byo["test"])
    assert code == 0, err
    parity = _stage(out, "fp16")["parity"]
    assert parity["samples"] == 297 and parity["data"] == "test.npz"
    assert parity["argmax_agreement"] >= 0.99
    assert parity["max_abs_logit_diff"] < 0.1
    fp16 = out / "artifacts" / "lenet-fp16.onnx"
    fid = _eval(capsys, tmp_path, fp16, "--data", byo["test"], "--reference", byo["model"])
    assert fid["fidelity"]["top1_agreement"] >= 0.99
    assert abs(fid["top1"] - byo["torch_test_top1"]) <= 2 / 297 + 1e-9


def test_byo_quantize_budget_measured_on_val_npz(byo, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    _, m = _quantize_within_budget(capsys, byo, out, byo["val"])
    assert m["budget"]["metric"] == "top1" and m["budget"]["data"] == "npz:val.npz"
    assert m["val_samples"] == 244 and m["calibration"]["samples"] == 256
    assert m["calibration"]["normalisation"]["mean"] is None  # npz: no normalisation
    assert m["fp32_val_top1"] - m["int8_val_top1"] <= MAX_DROP + 1e-9
    int8 = out / "artifacts" / "lenet-int8.onnx"
    # Re-measured independently with `eval` on the same val.npz: the record's numbers.
    fp32_val = _eval(capsys, tmp_path, byo["model"], "--data", byo["val"])["top1"]
    int8_val = _eval(capsys, tmp_path, int8, "--data", byo["val"])["top1"]
    assert fp32_val == m["fp32_val_top1"] and int8_val == m["int8_val_top1"]
    int8_test = _eval(capsys, tmp_path, int8, "--data", byo["test"])["top1"]
    assert int8_test >= byo["torch_test_top1"] - 0.03  # 9 of 297 test samples


def test_byo_quantize_fidelity_budget_without_labels(byo, tmp_path, capsys) -> None:
    stdout, m = _quantize_within_budget(capsys, byo, tmp_path / "run", byo["val_nolabels"])
    assert m["budget"]["metric"] == "top1_agreement" and m["budget"]["labels"] is False
    assert m["fp32_val_top1"] == 1.0 and m["int8_val_top1"] >= 1 - MAX_DROP
    assert "top-1 agreement with FP32" in stdout


def test_byo_bench_with_npz_and_verify_with_npz_dataset_block(byo, tmp_path, capsys) -> None:
    """A bundle of a plain-torch model (the contract's four artifacts made by eval/fp16/quantize
    on npz data) verifies against the test .npz its manifest's dataset block names."""
    from onnxship.core.artifact import sha256_file
    from onnxship.core.dataset import DatasetInfo, DatasetKind
    from onnxship.verify import current_environment

    bundle = tmp_path / "bundle"
    (bundle / "artifacts").mkdir(parents=True)
    (bundle / "data").mkdir()
    model = bundle / "artifacts" / "student-fp32.onnx"
    model.write_bytes(byo["model"].read_bytes())
    (bundle / "artifacts" / "teacher-fp32.onnx").write_bytes(byo["model"].read_bytes())
    test = bundle / "data" / "test.npz"
    test.write_bytes(byo["test"].read_bytes())
    bench_json = tmp_path / "bench.json"
    code, _, err = _cli(
        capsys, "bench", model, "--npz", test, "--batch-sizes", "1,8", "--iterations", "5",
        "--warmup", "1", "--json", bench_json, "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    rows = json.loads(bench_json.read_text())["results"]
    assert {r["batch_size"] for r in rows} == {1, 8}
    code, _, err = _cli(capsys, "fp16", model, "--out", bundle, "--data", test)
    assert code == 0, err
    code, _, err = _cli(
        capsys, "quantize", model, "--out", bundle, "--calib-npz", byo["calib"],
        "--val-npz", byo["val"], "--max-drop", MAX_DROP, *BENCH,
    )  # fmt: skip
    assert code == 0, err
    info = DatasetInfo(DatasetKind.NPZ, "digits", (1, 8, 8), class_names=tuple("0123456789"),
                       test_sha256=sha256_file(test), test_path="data/test.npz")  # fmt: skip
    artifacts = {}
    for name in ("teacher-fp32", "student-fp32", "student-int8", "student-fp16"):
        path = bundle / "artifacts" / f"{name}.onnx"
        measured = _eval(capsys, tmp_path, path, "--data", test)
        artifacts[name] = {
            "path": f"artifacts/{name}.onnx",
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "precision": name.rsplit("-", 1)[1],
            "accuracy": {
                "test_top1": measured["top1"],
                "correct": measured["correct"],
                "split": "test",
                "provider": "cpu",
                "batch_size": 1000,
            },
        }
    # What `onnxship run` records for an int8 file, and verify re-measures.
    from onnxship.calibrate.coverage import integer_mac_share

    int8 = artifacts["student-int8"]
    int8["integer_macs"] = integer_mac_share(bundle / int8["path"])
    manifest = {
        "schema_version": 1,
        "environment": current_environment(),
        "dataset": info.to_json(),
        "artifacts": artifacts,
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    code, stdout, err = _cli(capsys, "verify", bundle)
    assert code == 0, stdout + err
    assert "test data" in stdout and "FAIL" not in stdout
    # The test data changed after the run: verify names it and fails.
    np.savez(test, x=np.zeros((4, 1, 8, 8), np.float32), y=np.zeros(4, np.int64))
    code, stdout, _ = _cli(capsys, "verify", bundle)
    assert code == 1 and "the test data changed" in stdout
    # A dataset block of kind npz that names no test file cannot be re-measured: a failed check.
    manifest["dataset"]["test_path"] = None
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    code, stdout, _ = _cli(capsys, "verify", bundle)
    assert code == 1 and "names no test file" in stdout


# ------------------------------------------------------------------- other kinds of model


def test_byo_non_classifier_fidelity_is_sqnr(byo, tmp_path, capsys) -> None:
    result = _eval(
        capsys, tmp_path, byo["denoiser"], "--data", byo["test_nolabels"],
        "--reference", byo["denoiser"],
    )  # fmt: skip
    assert result["metric"] == "sqnr_db" and result["fidelity"]["sqnr_db"] == 140.0
    out = tmp_path / "run"
    code, stdout, err = _quantize_npz(
        capsys, byo["denoiser"], out, byo["calib"], byo["val_nolabels"], "--min-sqnr", "25",
        *QUANT_CONVS,
    )  # fmt: skip
    assert code == 0, err
    m = _stage(out, "quantize")
    assert m["budget"]["metric"] == "sqnr_db" and m["budget"]["min_sqnr_db"] == 25
    assert 25 <= m["int8_val_top1"] < 100  # the INT8 output's SQNR vs FP32, in dB (not exact)
    # An SQNR budget out of reach: exit 1, the metric named, nothing written.
    code, _, err = _quantize_npz(
        capsys, byo["denoiser"], tmp_path / "strict", byo["calib"], byo["val_nolabels"],
        "--min-sqnr", "80", *QUANT_CONVS,
    )  # fmt: skip
    assert code == 1 and "80.0 dB output SQNR vs FP32" in err, err
    assert not any(p.is_file() for p in (tmp_path / "strict").rglob("*"))
    int8 = out / "artifacts" / "denoiser-int8.onnx"
    fid = _eval(capsys, tmp_path, int8, "--data", byo["val_nolabels"], "--reference",
                byo["denoiser"])["fidelity"]  # fmt: skip
    assert fid["sqnr_db"] == pytest.approx(m["int8_val_top1"], abs=1e-3)
    fp16_out = tmp_path / "fp16"
    code, stdout, err = _cli(capsys, "fp16", byo["denoiser"], "--out", fp16_out, "--data",
                             byo["test_nolabels"])  # fmt: skip
    assert code == 0, err
    parity = _stage(fp16_out, "fp16")["parity"]
    assert parity["metric"] == "sqnr_db" and parity["sqnr_db"] >= 40


def test_byo_two_input_model_eval_and_quantize(byo, tmp_path, capsys) -> None:
    result = _eval(capsys, tmp_path, byo["two"], "--data", byo["two_val"])
    assert result["n"] == 244 and 0 <= result["top1"] <= 1
    out = tmp_path / "run"
    code, _, err = _quantize_npz(
        capsys, byo["two"], out, byo["two_calib"], byo["two_val"], "--max-drop", "0.5", *BENCH
    )
    assert code == 0, err
    with np.load(out / "calibration" / "two-int8-calib.npz") as saved:
        assert {"image", "extra"} <= set(saved.files)
    code, _, err = _cli(capsys, "fp16", byo["two"], "--out", out, "--data", byo["two_val"])
    assert code == 0, err
    assert _stage(out, "fp16")["parity"]["argmax_agreement"] >= 0.99
    # An npz without the second input's array names it.
    bad = tmp_path / "one.npz"
    with np.load(byo["two_val"]) as data:
        np.savez(bad, image=data["image"], y=data["y"])
    code, _, err = _cli(capsys, "eval", byo["two"], "--data", bad)
    assert code == 2 and "no array for input 'extra'" in err


def test_byo_dynamo_export_goes_through_eval_and_fp16(byo, tmp_path, capsys) -> None:
    """The exporter torch uses by default (dynamo=True) works the same way."""
    torch.manual_seed(0)
    path = tmp_path / "dynamo.onnx"
    torch.onnx.export(
        LeNet().eval(), (torch.zeros(2, 1, 8, 8),), str(path), input_names=["pixels"],
        dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False,
    )  # fmt: skip
    result = _eval(capsys, tmp_path, path, "--data", byo["test"], "--reference", path)
    assert result["n"] == 297 and result["fidelity"]["top1_agreement"] == 1.0
    code, _, err = _cli(capsys, "fp16", path, "--out", tmp_path / "run", "--data", byo["test"])
    assert code == 0, err
    assert _stage(tmp_path / "run", "fp16")["parity"]["argmax_agreement"] >= 0.99


# ------------------------------------------------------------------------------ bad input


def _bad(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


GOOD_X = np.zeros((40, 1, 8, 8), np.float32)
GOOD_Y = np.zeros(40, np.int64)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"x": np.zeros((40, 1, 28, 28), np.float32), "y": GOOD_Y},
            r"\[40, 1, 28, 28\].*\[1, 8, 8\]",
        ),
        ({"x": GOOD_X.astype(np.float64), "y": GOOD_Y}, "dtype float64"),
        (
            {"x": GOOD_X, "y": np.full(40, 12, np.int64)},
            r"labels range over \[12, 12\].*10 classes",
        ),
        ({"pixels_typo": GOOD_X, "inputs2": GOOD_X}, "no array for input 'pixels'"),
        ({"x": np.full((40, 1, 8, 8), np.nan, np.float32), "y": GOOD_Y}, "NaN or Inf"),
    ],
    ids=["shape", "dtype", "labels", "no-x", "nan"],
)
def test_byo_bad_data_is_one_line_exit_2_nothing_written(
    byo, tmp_path, capsys, arrays, message
) -> None:
    import re

    bad = _bad(tmp_path, **arrays)
    code, _, err = _cli(capsys, "eval", byo["model"], "--data", bad, "--json", tmp_path / "e.json")
    assert code == 2 and re.search(message, err), err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "e.json").exists()
    out = tmp_path / "run"
    code, _, err = _cli(capsys, "fp16", byo["model"], "--out", out, "--data", bad)
    assert code == 2 and (re.search(message, err) or "labels" in message), err
    code, _, err = _quantize_npz(capsys, byo["model"], out, byo["calib"], bad, *BENCH)
    assert code == 2 and re.search(message, err), err
    assert not any(p.is_file() for p in out.rglob("*")), list(out.rglob("*"))


def test_byo_top1_of_a_non_classifier_says_use_fidelity(byo, tmp_path, capsys) -> None:
    code, _, err = _cli(capsys, "eval", byo["denoiser"], "--data", byo["test"])
    assert code == 2 and "not [batch, classes]" in err and "fidelity" in err
    code, _, err = _quantize_npz(
        capsys, byo["denoiser"], tmp_path / "run", byo["calib"], byo["val"], *BENCH
    )
    assert code == 2 and "fidelity" in err


def test_byo_without_metadata_or_npz_asks_for_npz(byo, tmp_path, capsys) -> None:
    code, _, err = _cli(capsys, "fp16", byo["model"], "--out", tmp_path / "a")
    assert code == 2 and "--data PARITY.npz" in err
    code, _, err = _cli(capsys, "quantize", byo["model"], "--out", tmp_path / "b", *BENCH)
    assert code == 2 and "--calib-npz CALIB.npz --val-npz VAL.npz" in err
    code, _, err = _cli(capsys, "eval", byo["model"], "--data", byo["test"], "--mean", "0.1")
    assert code == 2 and "preprocessed" in err


def test_byo_readme_section_commands_run(byo, tmp_path, capsys, monkeypatch) -> None:
    """The README's "Your own ONNX model and data" commands, run as written (docs cannot rot)."""
    import re
    import shlex

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Your own ONNX model and data", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    for name in ("test", "calib", "val"):
        (tmp_path / f"{name}.npz").write_bytes(byo[name].read_bytes())
    (tmp_path / "model.onnx").write_bytes(byo["model"].read_bytes())
    monkeypatch.chdir(tmp_path)
    commands = [shlex.split(line)[1:] for line in block.splitlines() if line.strip()]
    assert [c[0] for c in commands] == ["eval", "fp16", "quantize", "bench"]
    for argv in commands:
        extra = {"quantize": BENCH, "bench": ["--iterations", "3", "--warmup", "1"]}
        code, _, err = _cli(capsys, *argv, *extra.get(argv[0], []))
        assert code == 0, f"{shlex.join(argv)}: {err}"
    assert (tmp_path / "out" / "artifacts" / "model-int8.onnx").is_file()
    assert (tmp_path / "out" / "artifacts" / "model-fp16.onnx").is_file()


def test_byo_dataset_metadata_asks_for_its_data_instead_of_mnist(byo, tmp_path, capsys) -> None:
    """A model whose `onnxship.dataset` metadata says npz is never fed MNIST by default."""
    import onnx

    from onnxship.core.dataset import METADATA_KEY, DatasetInfo, DatasetKind
    from onnxship.core.model_meta import set_metadata

    model = onnx.load(str(byo["model"]))
    info = DatasetInfo(DatasetKind.NPZ, "digits", (1, 8, 8), class_names=tuple("0123456789"))
    set_metadata(model, {METADATA_KEY: info.to_metadata()})
    path = tmp_path / "tagged.onnx"
    onnx.save(model, str(path))
    for argv, flag in (
        (["eval", path], "--data TEST.npz"),
        (["fp16", path, "--out", tmp_path / "a"], "--data PARITY.npz"),
        (["quantize", path, "--out", tmp_path / "b"], "--calib-npz CALIB.npz --val-npz VAL.npz"),
    ):
        code, _, err = _cli(capsys, *argv)
        assert code == 2 and "trained on npz data 'digits'" in err and flag in err, err
    assert _eval(capsys, tmp_path, path, "--data", byo["test"])["n"] == 297
