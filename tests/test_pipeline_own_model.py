"""`onnxship run` with a user's own PyTorch model and data.

The data is scikit-learn's real `digits` set (1,797 8x8 handwritten digits, shipped offline),
written as the contract's npz files; the model is a small residual CNN (residual adds, a
concatenation, depthwise convs, BatchNorm) defined in a module file next to the TOML config,
the way a user would, and referenced as `factory = "mynets:small_resnet"`. One module-scoped
run goes through train, DepGraph pruning, distillation, export, INT8, FP16, eval, bench,
manifest; verify and gate run on its bundle. Bad inputs exit 2 with one line and write nothing.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import reduced_config  # noqa: E402  (tests/ is on sys.path)

from onnxship.cli import main
from onnxship.core.artifact import sha256_file
from onnxship.core.dataset import METADATA_KEY
from onnxship.models.checkpoint import load_checkpoint, read_checkpoint_meta

MYNETS = textwrap.dedent(
    '''
    import torch
    from torch import nn


    class Block(nn.Module):
        """Depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN, plus the input (residual)."""

        def __init__(self, c):
            super().__init__()
            self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.pw = nn.Conv2d(c, c, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(x + self.bn2(self.pw(self.act(self.bn1(self.dw(x))))))


    class SmallResNet(nn.Module):
        def __init__(self, width=16, classes=10, in_channels=1):
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            )
            self.block1 = Block(width)
            self.branch_a = nn.Conv2d(width, width, 1)
            self.branch_b = nn.Conv2d(width, width, 3, padding=1)
            self.block2 = Block(2 * width)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(2 * width, classes)

        def forward(self, x):
            x = self.block1(self.stem(x))
            x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
            x = self.block2(x)
            return self.head(torch.flatten(self.pool(x), 1))


    def small_resnet(width=16, classes=10, in_channels=1):
        return SmallResNet(width, classes, in_channels)


    def not_a_module():
        return "a string"
    '''
)

# The reduced config with the user's model and data, and budgets for digits (1,437 training
# images): tens of seconds on 2 shared cores. None: the library's default (the recipe search,
# shift augmentation, FP16 parity on all test images).
DIGITS: dict = {
    "model": {"factory": "mynets:small_resnet", "kwargs": {"width": 16}},
    "data": {"kind": "npz", "train": "data/train.npz", "test": "data/test.npz"},
    "train": {"augment": None, "sgd": {"epochs": 15, "batch_size": 64, "lr": 0.1}},
    "prune": {"macs_budget": 0.3},
    "distill": {"sgd": {"epochs": 15, "batch_size": 64, "lr": 0.05}},
    "fp16": {"parity_samples": None},
    "quantize": {
        "recipe": None,
        "max_drop": 0.02,
        "calibration": {"size": 64, "batch_size": 16},
        "latency": {"seconds_per_batch_size": 0.1, "min_iterations": 5, "max_iterations": 20},
    },
    "bench": {"warmup": 2, "iterations": 10},
    "extra": {"teacher_int8": False, "teacher_fp16": False},
    # Width multipliers of the factory's kwargs (the default space for a user's model).
    # digits' validation split is 144 images (0.7 pp each): a 2 pp budget.
    "search": {
        "max_drop": 0.02,
        "max_trained": 2,
        "screen": {"seconds_per_batch_size": 0.3, "min_iterations": 5, "max_iterations": 50},
        "train": {"epochs": 15, "batch_size": 64},
    },
}


def own_toml(**model: object) -> str:
    """The digits config with the `[model]` table's keys replaced (None drops one)."""
    return reduced_config({**DIGITS, "model": {**DIGITS["model"], **model}})


RUN_TOML = own_toml()

N_TEST = 360


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # [N, 1, 8, 8], pixels in [0, 1]
    return x, digits.target.astype(np.int64)


def write_project(folder: Path, toml: str = RUN_TOML, **arrays: np.ndarray) -> Path:
    """A user's project: mynets.py, data/train.npz + data/test.npz (a seeded split), run.toml."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mynets.py").write_text(MYNETS)
    data = folder / "data"
    data.mkdir(exist_ok=True)
    x, y = digits_arrays()
    order = np.random.default_rng(0).permutation(y.shape[0])
    test, train = order[:N_TEST], order[N_TEST:]
    train_arrays = arrays or {"x": x[train], "y": y[train]}
    np.savez(data / "train.npz", **train_arrays)
    np.savez(data / "test.npz", x=x[test], y=y[test])
    config = folder / "run.toml"
    config.write_text(toml)
    return config


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("digits")
    config = write_project(project)
    out = project / "bundle"
    assert main(["run", "--config", str(config), "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_run_own_model_on_digits_writes_every_artifact_with_the_dataset_block(
    digits_run: Path,
) -> None:
    manifest = json.loads((digits_run / "manifest.json").read_text())
    assert set(manifest["artifacts"]) == {
        "teacher-fp32",
        "student-fp32",
        "student-int8",
        "student-fp16",
        "searched-fp32",
        "searched-int8",
        "searched-fp16",
    }
    dataset = manifest["dataset"]
    assert dataset["kind"] == "npz"
    assert dataset["input_shape"] == [1, 8, 8]
    assert dataset["num_classes"] == 10
    assert dataset["normalisation"] is None  # npz data comes preprocessed
    assert dataset["test_sha256"] == sha256_file(digits_run / dataset["test_path"])
    for name, entry in manifest["artifacts"].items():
        assert entry["inputs"][0]["shape"] == ["batch", 1, 8, 8], name
        assert entry["accuracy"]["n"] == N_TEST, name
    # The config's folder made the factory importable and the data paths absolute.
    assert manifest["config"]["model"]["factory"] == "mynets:small_resnet"
    assert Path(manifest["config"]["data"]["train"]).is_absolute()


@pytest.mark.slow
def test_run_own_model_on_digits_reaches_accuracy_after_pruning_and_quantization(
    digits_run: Path,
) -> None:
    # Measured on this run (2-core box): teacher 99.4 %, student 98.9 %, INT8 and FP16 equal
    # to the student. The floors leave room for other seeds/threads: digits is easy.
    art = json.loads((digits_run / "manifest.json").read_text())["artifacts"]
    top1 = {name: entry["accuracy"]["test_top1"] for name, entry in art.items()}
    assert top1["teacher-fp32"] >= 0.95
    assert top1["student-fp32"] >= 0.93
    assert top1["student-int8"] >= top1["student-fp32"] - 0.03
    assert top1["student-fp16"] >= top1["student-fp32"] - 0.01


@pytest.mark.slow
def test_run_own_model_calibrates_and_measures_the_int8_budget_on_disjoint_val_rows(
    digits_run: Path,
) -> None:
    """Own data follows MNIST's rule: [quantize.calibration] size rows of data/val.npz, drawn
    seeded and class-balanced, calibrate; the budget is measured on every other row."""
    with np.load(digits_run / "data" / "val.npz") as val:
        x, y = val["x"], val["y"]
    rows = int(y.shape[0])
    records = sorted((digits_run / "stages").glob("quantize*.json"))
    assert records
    for path in records:
        m = json.loads(path.read_text())["metrics"]
        overlap = m["calibration"]["samples"] + m["val_samples"] - rows
        assert overlap == 0, f"{path.name}: {overlap} rows both calibrate and measure the budget"
        split = m["calibration"]["split"]
        assert split["disjoint"] is True and "class-balanced" in split["rule"]
        assert (split["calibration_rows"], split["budget_rows"]) == (64, rows - 64)
        with np.load(digits_run / "calibration" / Path(m["calibration"]["path"]).name) as calib:
            picked = calib["train_indices"]  # positions in data/val.npz
            np.testing.assert_array_equal(calib["input"], x[picked])
        assert len(set(picked.tolist())) == 64 and np.bincount(y[picked]).min() >= 6


def test_run_exits_2_before_training_when_val_is_too_small_to_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    quantize = {**DIGITS["quantize"], "calibration": {"size": 100, "batch_size": 16}}
    err = _bad_run(write_project(tmp_path, reduced_config({**DIGITS, "quantize": quantize})),
                   capsys)  # fmt: skip
    assert "expected >= 200 rows, found 144" in err and "at most 72" in err


@pytest.mark.slow
def test_run_own_model_prunes_structurally_within_the_macs_budget(digits_run: Path) -> None:
    prune = json.loads((digits_run / "stages" / "prune.json").read_text())["metrics"]
    assert prune["macs_after"] <= 0.3 * prune["macs_before"]
    assert prune["params_after"] < prune["params_before"]
    assert "DepGraph" in prune["pruner"]
    art = json.loads((digits_run / "manifest.json").read_text())["artifacts"]
    assert art["student-fp32"]["macs"] == prune["macs_after"]
    assert art["student-fp32"]["bytes"] < art["teacher-fp32"]["bytes"]
    distill = json.loads((digits_run / "stages" / "distill.json").read_text())["metrics"]
    assert {"test_top1_kd", "test_top1_no_kd"} <= set(distill)


@pytest.mark.slow
def test_run_own_model_searches_width_multipliers_of_its_factory_on_its_data(
    digits_run: Path,
) -> None:
    search = json.loads((digits_run / "stages" / "search.json").read_text())["metrics"]
    cands = {c["name"]: c for c in search["candidates"]}
    assert set(cands) == {"pruned-teacher", "width x0.25", "width x0.375", "width x0.5",
                          "width x0.75"}  # fmt: skip
    for name, c in cands.items():
        assert c["latency"], name  # screened on the target EP, interleaved with the teacher
        if c["origin"] == "scratch":
            assert c["arch"] == "mynets:small_resnet"
            assert set(c["widths"]) == {"width"} and c["widths"]["width"] < 16
        if c["status"] in ("kept", "rejected") and c["origin"] == "scratch":
            assert c["train"]["steps"] > 0 and c["val_top1"] is not None
    assert search["decided_on"] == "val"
    winner = cands[search["winner"]]
    assert winner["status"] == "kept" or "no candidate within budget" in winner["reason"]
    # The winner rebuilds from the user's factory with its own kwargs (or pruned shapes).
    ckpt = digits_run / "checkpoints" / "searched.pt"
    meta = read_checkpoint_meta(ckpt)
    assert meta.factory is not None and meta.factory.factory == "mynets:small_resnet"
    if winner["origin"] == "scratch":
        assert dict(meta.factory.kwargs) == winner["widths"]
    model, _ = load_checkpoint(ckpt)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    manifest = json.loads((digits_run / "manifest.json").read_text())
    assert "CPUExecutionProvider" in manifest["recommended"]
    # Measured: 96.9-98.6 % test top-1 for the searched FP32 (teacher 99.4 %).
    assert manifest["artifacts"]["searched-fp32"]["accuracy"]["test_top1"] >= 0.90


@pytest.mark.slow
def test_run_own_model_student_checkpoint_is_a_plain_state_dict_rebuilt_from_shapes(
    digits_run: Path,
) -> None:
    ckpt = digits_run / "checkpoints" / "student.pt"
    state = torch.load(ckpt, weights_only=True)  # tensors only: no pickled modules
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    meta = read_checkpoint_meta(ckpt)
    assert meta.factory is not None and meta.factory.factory == "mynets:small_resnet"
    assert meta.shapes is not None
    assert meta.shapes["stem.0"]["out_channels"] < 16  # pruned below the factory's width
    model, _ = load_checkpoint(ckpt)
    assert model.stem[0].weight.shape[0] == meta.shapes["stem.0"]["out_channels"]
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.slow
def test_run_own_model_onnx_metadata_records_the_dataset(digits_run: Path) -> None:
    model = onnx.load(str(digits_run / "artifacts" / "student-int8.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    dataset = json.loads(meta[METADATA_KEY])
    assert dataset["kind"] == "npz" and dataset["input_shape"] == [1, 8, 8]
    assert json.loads(meta["onnxship.input_mean"]) == [0.0]  # identity: preprocessed data
    assert json.loads(meta["onnxship.input_std"]) == [1.0]


@pytest.mark.slow
def test_verify_and_gate_pass_on_the_own_model_bundle(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(digits_run)]) == 0
    manifest = json.loads((digits_run / "manifest.json").read_text())
    int8 = manifest["artifacts"]["student-int8"]["accuracy"]["test_top1"]
    baseline = tmp_path / "baseline.json"
    baseline.write_text(
        json.dumps({"artifacts": {"student-int8": {"test_top1": int8, "max_drop": 0.0}}})
    )
    args = ["gate", "--manifest", str(digits_run / "manifest.json"), "--baseline", str(baseline)]
    assert main(args) == 0
    baseline.write_text(
        json.dumps({"artifacts": {"student-int8": {"test_top1": int8 + 0.01, "max_drop": 0.0}}})
    )
    assert main(args) == 1


@pytest.mark.slow
def test_rerun_of_the_own_model_bundle_reuses_every_stage_and_keeps_its_data_files(
    digits_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The data step runs on every `run` but rewrites data/*.npz only when their content
    changes, in deterministic bytes (fixed zip entry times): a later run with nothing changed
    reuses every recorded stage, those keyed on the data files included."""
    import time

    data = {n: sha256_file(digits_run / "data" / n) for n in ("val.npz", "test.npz")}
    records = {p.name: p.read_bytes() for p in (digits_run / "stages").glob("*.json")}
    time.sleep(2.1)  # past the 2-second resolution of a zip entry's time stamp
    capsys.readouterr()
    config = digits_run.parent / "run.toml"
    assert main(["run", "--config", str(config), "--out", str(digits_run)]) == 0
    said = capsys.readouterr()
    assert " 0 stages ran," in said.out + said.err, said.out[-400:]
    assert {n: sha256_file(digits_run / "data" / n) for n in data} == data
    assert {p.name: p.read_bytes() for p in (digits_run / "stages").glob("*.json")} == records


# ------------------------------------------------------------------------------- bad input


def _bad_run(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    out = config.parent / "bundle"
    capsys.readouterr()
    assert main(["run", "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert not out.exists()  # nothing written
    return err


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        pytest.param(
            {"factory": "nonets:small_resnet"},
            ("'nonets'", "does not import"),
            id="the-factory-module-does-not-import",
        ),
        pytest.param(
            {"factory": "mynets:not_a_module", "kwargs": None},
            ("returned str, expected a torch.nn.Module",),
            id="the-factory-does-not-return-a-module",
        ),
        pytest.param(
            {"kwargs": {"width": 16, "in_channels": 3}},
            ("[N, 1, 8, 8]", "[N, 3, H, W]"),
            id="the-data-does-not-fit-the-model-naming-both-shapes",
        ),
        pytest.param(
            {"kwargs": {"width": 16, "classes": 5}},
            ("[0, 9]", "5 classes"),
            id="the-labels-exceed-the-models-classes",
        ),
    ],
)
def test_run_exits_2_when_the_model_table_does_not_work_on_the_data(
    model: dict[str, object],
    expected: tuple[str, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = _bad_run(write_project(tmp_path, own_toml(**model)), capsys)
    assert all(text in err for text in expected), err


def test_run_exits_2_when_the_npz_has_no_x(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, y = digits_arrays()
    err = _bad_run(write_project(tmp_path, images=x, y=y), capsys)
    assert "no array for input" in err and "'images'" in err


def test_run_exits_2_when_the_data_holds_nan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, y = digits_arrays()
    x[3, 0, 2, 2] = np.nan
    err = _bad_run(write_project(tmp_path, x=x, y=y), capsys)
    assert "NaN or Inf" in err


@pytest.mark.slow
def test_run_own_model_on_an_image_folder_goes_through_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 12)):
        for label, base in (("dark", 60), ("light", 190)):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(n // 2):
                pixels = np.clip(rng.normal(base, 30, (10, 10, 3)), 0, 255).astype("uint8")
                Image.fromarray(pixels).save(folder / f"{i}.png")
    (tmp_path / "tinynets.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def tiny(classes=2):
                return nn.Sequential(
                    nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                    nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(), nn.Linear(8, classes),
                )
            """
        )
    )
    config = tmp_path / "run.toml"
    config.write_text(
        textwrap.dedent(
            """
            [model]
            factory = "tinynets:tiny"
            [data]
            kind = "imagefolder"
            train = "train"
            test = "test"
            resize = 8
            mean = [0.5, 0.5, 0.5]
            std = [0.25, 0.25, 0.25]
            # 16 validation images: 8 calibrate INT8, its budget is measured on the other 8
            val_fraction = 0.4
            [train.sgd]
            epochs = 10
            batch_size = 8
            [prune]
            macs_budget = 0.5
            [distill.sgd]
            epochs = 5
            batch_size = 8
            [quantize]
            max_drop = 0.2
            [quantize.calibration]
            size = 8
            batch_size = 4
            [quantize.latency]
            seconds_per_batch_size = 0.1
            min_iterations = 5
            max_iterations = 10
            [bench]
            warmup = 1
            iterations = 5
            [extra]
            teacher_int8 = false
            teacher_fp16 = false
            # The search runs on the image folder too, with budgets cut like the others'.
            [search]
            max_trained = 1
            [search.screen]
            seconds_per_batch_size = 0.05
            min_iterations = 3
            max_iterations = 5
            [search.train]
            epochs = 2
            batch_size = 8
            """
        )
    )
    out = tmp_path / "bundle"
    assert main(["run", "--config", str(config), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    dataset = manifest["dataset"]
    assert dataset["kind"] == "imagefolder"
    assert dataset["input_shape"] == [3, 8, 8]
    assert dataset["class_names"] == ["dark", "light"]
    assert dataset["normalisation"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert manifest["artifacts"]["student-fp32"]["accuracy"]["n"] == 12
    assert (
        manifest["artifacts"]["student-fp32"]["macs"]
        < manifest["artifacts"]["teacher-fp32"]["macs"]
    )
    assert main(["verify", str(out)]) == 0


def test_load_config_resolves_paths_relative_to_the_config_file(tmp_path: Path) -> None:
    from onnxship.pipeline import load_config

    folder = tmp_path / "proj"
    folder.mkdir()
    config = folder / "run.toml"
    config.write_text(own_toml(kwargs=None, state_dict="w/start.pt"))
    cfg = load_config(config)
    assert cfg.data.train == str(folder / "data" / "train.npz")
    assert cfg.data.test == str(folder / "data" / "test.npz")
    assert cfg.model.state_dict == str(folder / "w" / "start.pt")
    assert cfg.model.search_path == str(folder)


def test_run_exits_2_when_a_state_dict_is_given_without_a_factory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "run.toml"
    config.write_text('[model]\nstate_dict = "start.pt"\n')
    err = _bad_run(config, capsys)
    assert "needs [model] factory" in err
