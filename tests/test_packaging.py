"""One import name: the wheel installs `onnxship` alone, the Python API works from a user's
project that has its own `models/` and `export/` packages, and the installed bench side runs
with torch and onnx unimportable."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from conftest import TORCH_AND_ONNX, install_wheel, installed_cli  # noqa: E402  (tests/ is on sys.path)

pytestmark = pytest.mark.slow  # builds a wheel, installs it, runs subprocesses


def test_wheel_top_level_is_onnxship_alone(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    top = {n.split("/")[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"onnxship"}, sorted(top)
    # The card's folders are inside the namespace, with their modules.
    for module in ("models/registry.py", "export/onnx_export.py", "calibrate/quantize.py",
                   "runtime_bench/session.py", "core/artifact.py", "cli.py", "api.py"):  # fmt: skip
        assert f"onnxship/{module}" in names, module


USER_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import models, export  # the user's own packages, imported first on purpose

    from onnxship import api
    from onnxship.calibrate.quantize import LatencyConfig, QuantizeConfig
    from onnxship.runtime_bench.bench import BenchConfig

    assert models.USER and export.USER, "the user's packages must stay the user's"
    ckpt, data_dir, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    fp32 = api.export(ckpt, out, name="net-fp32", data_dir=data_dir)
    int8 = api.quantize(
        fp32.path, out,
        QuantizeConfig(recipe="qdq-u8s8-perchannel-minmax-linear", fallback=False,
                       latency=LatencyConfig(batch_sizes=(8,), seconds_per_batch_size=0.2)),
        data_dir=data_dir,
    )
    doc = api.bench([fp32.path, int8.path],
                    BenchConfig(batch_sizes=(1,), warmup=2, iterations=5, progress=False))
    acc = api.evaluate(int8.path, data_dir=data_dir)
    import onnxship.models.registry as ours
    print(Path(ours.__file__).parent.name, len(doc["results"]), f"{acc['top1']:.4f}")
    """
)


def test_python_api_from_a_project_with_its_own_models_and_export(
    tmp_path: Path, trained_checkpoint: Path, mnist_root: Path
) -> None:
    project = tmp_path / "project"
    for name in ("models", "export"):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text("USER = True\n")
    (project / "script.py").write_text(USER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "script.py", str(trained_checkpoint), str(mnist_root),
         str(tmp_path / "out")],
        cwd=project, capture_output=True, text=True, timeout=600, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    folder, rows, top1 = done.stdout.split()[-3:]
    assert folder == "models"  # onnxship's models/ folder, not the user's
    assert int(rows) == 2
    # The 0.3-epoch fixture reaches ~97 % on MNIST test; INT8 keeps it within 1 pp.
    assert float(top1) > 0.95
    assert (tmp_path / "out" / "artifacts" / "net-int8.onnx").is_file()
    assert (tmp_path / "out" / "stages" / "quantize.json").is_file()


BENCH_ONLY = installed_cli(TORCH_AND_ONNX)  # the bench-only install has none of them


def test_wheel_installed_without_deps_benches_without_torch(wheel: Path, tmp_path: Path) -> None:
    """`pip install --no-deps onnxship` beside onnxruntime + numpy: bench runs."""
    target = install_wheel(wheel, tmp_path / "site")
    from tiny_onnx import linear_classifier

    model = linear_classifier(tmp_path / "tiny.onnx")
    # -I: isolated mode, so neither the checkout nor the editable install is on sys.path.
    run = subprocess.run(
        [sys.executable, "-I", "-c", BENCH_ONLY, str(target), "bench", str(model),
         "--batch-sizes", "1", "--iterations", "3", "--warmup", "1", "--no-progress"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "tiny" in run.stdout
