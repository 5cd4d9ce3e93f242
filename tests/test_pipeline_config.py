"""`onnxship run` configs: defaults, the checked-in TOML, --print-config round trip, bad input."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from onnxship.cli import main
from onnxship.errors import PipelineError
from onnxship.pipeline import PipelineConfig, config_to_toml, load_config

REPO = Path(__file__).resolve().parents[1]
CHECKED_IN = REPO / "configs" / "mnist_simplecnn.toml"


def test_load_config_of_the_checked_in_file_equals_the_built_in_defaults() -> None:
    # The file documents the defaults; if they drift apart, `make run` and `onnxship run`
    # without --config would build different bundles.
    assert load_config(CHECKED_IN) == PipelineConfig()


def test_print_config_round_trips_through_toml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["run", "--config", str(CHECKED_IN), "--data-dir", "/somewhere", "--print-config"])
        == 0
    )
    text = capsys.readouterr().out
    written = tmp_path / "effective.toml"
    written.write_text(text)
    cfg = load_config(written)
    assert cfg.data_dir == "/somewhere"
    assert config_to_toml(cfg) == text
    assert tomllib.loads(text)["train"]["arch"] == "simple_cnn"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[train]\nepochz = 3\n", "unknown key(s) epochz"),
        ("[bogus]\nx = 1\n", "unknown key(s) bogus"),
        ("[train.sgd]\nepochs = 'many'\n", "train.sgd.epochs: expected a number"),
        ("[train.sgd]\nepochs = 0\n", "epochs"),
        ("[bench]\nbatch_sizes = [1, -64]\n", "batch_sizes"),
        ("[quantize]\nmax_drop = 'small'\n", "quantize.max_drop: expected a number"),
        ("[train]\naugment = 'rotate'\n", "train.augment: expected one of"),
        ("not toml at all = = =\n", "not valid TOML"),
    ],
)
def test_run_exits_2_naming_the_bad_config_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, message: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    out = tmp_path / "out"
    assert main(["run", "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1, "errors are one line"
    assert not out.exists(), "a refused config must write nothing"


def test_load_config_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
