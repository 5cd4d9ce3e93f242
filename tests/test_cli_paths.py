"""Every path a user gives is resolved once, at the CLI's edge: flags and $ONNXSHIP_DATA_DIR
against the caller's working directory, config values against the config file's folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import tiny_onnx as tiny  # noqa: E402  (tests/ is on sys.path: pytest prepend import mode)

from onnxship.cli import main


@pytest.fixture()
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp/data (a crafted MNIST), tmp/model.onnx; the caller's cwd is tmp/work/deeper."""
    images, labels = tiny.crafted_mnist(50, 40)
    tiny.write_fake_mnist(tmp_path / "data", images, labels)
    tiny.pixel_classifier(tmp_path / "model.onnx")
    cwd = tmp_path / "work" / "deeper"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("ONNXSHIP_DATA_DIR", raising=False)
    return tmp_path


def _eval_json(layout: Path) -> dict:
    return json.loads((layout / "work" / "deeper" / "out.json").read_text())


def test_cli_resolves_a_relative_data_dir_flag_against_the_callers_cwd(layout: Path) -> None:
    assert main(["eval", "../../model.onnx", "--data-dir", "../../data", "--json", "out.json"]) == 0
    result = _eval_json(layout)
    assert result["data_dir"] == os.fspath(layout / "data")
    assert result["model"] == os.fspath(layout / "model.onnx")
    assert result["top1"] == pytest.approx(40 / 50)


def test_cli_resolves_a_relative_data_dir_env_var_against_the_callers_cwd(
    layout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONNXSHIP_DATA_DIR", "../../data")
    assert main(["eval", "../../model.onnx", "--json", "out.json"]) == 0
    assert _eval_json(layout)["data_dir"] == os.fspath(layout / "data")
    # Child processes (and anything after the edge) see the absolute path.
    assert os.environ["ONNXSHIP_DATA_DIR"] == os.fspath(layout / "data")


def test_run_config_data_dir_is_relative_to_the_config_file(
    layout: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_dir = layout / "configs"
    config_dir.mkdir()
    (config_dir / "run.toml").write_text('data_dir = "../data"\n')
    assert main(["run", "--config", "../../configs/run.toml", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert f'data_dir = "{layout / "data"}"' in printed


def test_run_data_dir_flag_is_relative_to_the_callers_cwd(
    layout: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--data-dir", "../../data", "--print-config"]) == 0
    assert f'data_dir = "{layout / "data"}"' in capsys.readouterr().out
