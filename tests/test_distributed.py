"""Data-parallel training and distillation under torchrun: 2 CPU processes with gloo on
loopback, a tiny model and a fraction of an epoch (seconds of training; most of each test's
time is the two interpreters importing torch).

Checked: one checkpoint and one record written, by rank 0 only; the same seed and world size
give identical weights; 2 processes reach the 1-process accuracy; the checkpoints go through
export (and distillation) unchanged; a killed rank makes every process exit non-zero within
the collective timeout, with a one-line error and no checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import SMALL, reduced_config  # noqa: E402  (tests/ is on sys.path)

from onnxship.core.artifact import sha256_file
from onnxship.models.distributed import LR_SCALING

TRAIN_ARGS = ("--arch", "tiny_cnn", "--epochs", "0.1", "--augment", "shift")
LAUNCH_TIMEOUT_S = 300  # two interpreters importing torch on a busy 2-core box


# -- in-process units (no process group needed) ------------------------------------------


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("batch", [1, 2, 7, 128])
def test_shard_partitions_every_global_batch_when_world_size_is(world: int, batch: int) -> None:
    import torch

    from onnxship.models.distributed import Ranks, shard
    from onnxship.models.loop import _local_part

    idx = torch.randperm(1000)[:batch]
    parts = [shard(idx, Ranks(rank=r, world_size=world)) for r in range(world)]
    assert sorted(torch.cat(parts).tolist()) == sorted(idx.tolist())  # disjoint, complete
    x, y = torch.zeros(batch, 1, 2, 2), idx
    weights = [_local_part(x, y, Ranks(rank=r, world_size=world))[2] for r in range(world)]
    # DDP averages over ranks: sum(weight_r * mean_r) / world == the global batch mean.
    assert sum(weights) == pytest.approx(world, abs=1e-12)
    for r, part in enumerate(parts):
        assert weights[r] == (0.0 if part.numel() == 0 else world * part.numel() / batch)


def test_shard_is_the_identity_on_one_rank() -> None:
    import torch

    from onnxship.models.distributed import Ranks, shard

    idx = torch.arange(5)
    assert shard(idx, Ranks()) is idx


def test_init_from_env_when_world_size_is_set_without_torchrun_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from onnxship.models.distributed import DistributedError, init_from_env

    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(DistributedError, match="launch with torchrun") as info:
        init_from_env()
    assert info.value.exit_code == 2


def test_cli_refuses_a_non_distributed_command_under_torchrun(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from onnxship.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["export", str(tmp_path / "x.pt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "single process" in err
    assert not (tmp_path / "o").exists()


def test_dist_timeout_default_agrees_with_the_library() -> None:
    from onnxship.commands.common import DEFAULT_DIST_TIMEOUT_S
    from onnxship.models.distributed import DEFAULT_TIMEOUT_S

    assert DEFAULT_DIST_TIMEOUT_S == DEFAULT_TIMEOUT_S


def test_python_dash_m_onnxship_runs_the_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "onnxship", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.startswith("onnxship ")


# -- two processes under torchrun ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(mnist_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    env.update(ONNXSHIP_DATA_DIR=str(mnist_root), OMP_NUM_THREADS="1")
    return env


def _torchrun(*args: str, log_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
        "--log-dir", str(log_dir), "--redirects", "3",
        "-m", "onnxship", *args,
    ]  # fmt: skip


def _rank_logs(log_dir: Path, rank: int, stream: str) -> str:
    """What rank `rank` printed on `stream` (torchrun --log-dir --redirects 3)."""
    files = sorted(log_dir.rglob(f"attempt_0/{rank}/{stream}.log"))
    assert len(files) == 1, f"expected one {stream}.log for rank {rank}, found {files}"
    return files[0].read_text()


def _launch(cmd: list[str], mnist_root: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, env=_env(mnist_root), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def two_rank_train(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """`torchrun --nproc_per_node=2 -m onnxship train` on tiny_cnn; the output folder."""
    base = tmp_path_factory.mktemp("ddp_train")
    out = base / "out"
    _launch(_torchrun("train", *TRAIN_ARGS, "--out", str(out), log_dir=base / "logs"), mnist_root)
    return base


@pytest.mark.slow
def test_train_under_torchrun_writes_one_checkpoint_from_rank_0(two_rank_train: Path) -> None:
    out, logs = two_rank_train / "out", two_rank_train / "logs"
    assert _files(out) == {
        "checkpoints/teacher.pt",
        "checkpoints/teacher.json",
        "stages/train.json",
    }  # no temporary file of a second writer left behind
    assert "trained tiny_cnn" in _rank_logs(logs, 0, "stdout")
    assert _rank_logs(logs, 1, "stdout") == ""  # rank 1 neither writes nor reports

    record = json.loads((out / "stages" / "train.json").read_text())
    m = record["metrics"]
    assert (m["world_size"], m["dist_backend"]) == (2, "gloo")
    assert (m["global_batch_size"], m["per_rank_batch_size"]) == (128, 64)
    assert m["lr_scaling"] == LR_SCALING
    assert record["outputs"][0]["sha256"] == sha256_file(out / "checkpoints" / "teacher.pt")


@pytest.mark.slow
def test_train_under_torchrun_matches_one_process_accuracy(
    two_rank_train: Path, tmp_path: Path, mnist_root: Path
) -> None:
    """The global batch is split, not multiplied: 2 ranks take the single-process steps over
    the same batches, so only float summation order differs. Tolerance 0.5 pp on 10,000 test
    images after 43 steps of tiny_cnn (measured: 0.00 pp)."""
    from onnxship.models.train import DEFAULT_SGD, Augment, TrainConfig, trained_from_data

    cfg = TrainConfig(arch="tiny_cnn", sgd=replace(DEFAULT_SGD, epochs=0.1), augment=Augment.SHIFT)
    one = trained_from_data(cfg, tmp_path / "one.pt", data_dir=mnist_root, progress=False)
    two = json.loads((two_rank_train / "out" / "stages" / "train.json").read_text())["metrics"]
    assert two["steps"] == one.metrics["steps"]
    assert abs(two["test_top1"] - one.metrics["test_top1"]) <= 0.005


@pytest.mark.slow
def test_train_under_torchrun_checkpoint_exports_and_distills_unchanged(
    two_rank_train: Path, tmp_path: Path, mnist_root: Path
) -> None:
    """The rest of the pipeline takes the 2-rank checkpoint as it is: export to ONNX (with
    its parity check) in one process, then a 2-rank distillation whose student exports too."""
    from onnxship.export.onnx_export import ExportConfig, ExporterKind, onnx_from_checkpoint

    # The exporter is not what is tested here; TorchScript's export costs a tenth of dynamo's.
    export = ExportConfig(exporter=ExporterKind.TORCHSCRIPT)
    teacher = two_rank_train / "out" / "checkpoints" / "teacher.pt"
    onnx_from_checkpoint(teacher, export, tmp_path / "teacher.onnx", data_dir=mnist_root)
    assert (tmp_path / "teacher.onnx").is_file()

    out = tmp_path / "kd"
    # The teacher stands in as its own (unpruned) student: same architecture, as required.
    _launch(
        _torchrun(
            "distill", str(teacher), "--teacher", str(teacher), "--epochs", "0.02",
            "--out", str(out), log_dir=tmp_path / "logs",
        ),
        mnist_root,
    )  # fmt: skip
    assert _files(out) == {
        "checkpoints/student.pt",
        "checkpoints/student.json",
        "stages/distill.json",
    }
    assert _rank_logs(tmp_path / "logs", 1, "stdout") == ""
    m = json.loads((out / "stages" / "distill.json").read_text())["metrics"]
    assert m["world_size"] == 2 and 0 <= m["test_top1_kd"] <= 1 and 0 <= m["test_top1_no_kd"] <= 1
    onnx_from_checkpoint(
        out / "checkpoints" / "student.pt", export, tmp_path / "s.onnx", data_dir=mnist_root
    )
    assert (tmp_path / "s.onnx").is_file()


def _wait_for(path: Path, text: str, proc: subprocess.Popen[str], limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"exited early ({proc.returncode}): {path.read_text()[-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"{text!r} did not appear in {path} within {limit_s} s")


@pytest.mark.slow
def test_train_when_a_rank_is_killed_every_rank_fails_within_the_timeout(
    tmp_path: Path, mnist_root: Path
) -> None:
    """Two ranks started by hand (torchrun's env vars, no elastic agent to clean up): rank 1
    is SIGKILLed mid-training; rank 0 must exit 1 with a one-line error well within the
    collective timeout (it sees the closed socket), and write no checkpoint."""
    timeout_s = 30
    port = _free_port()
    out = tmp_path / "out"
    procs, errs = [], []
    for rank in (0, 1):
        env = _env(mnist_root)
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
        err = tmp_path / f"rank{rank}.err"
        errs.append(err)
        with err.open("w") as stderr:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "onnxship",
                        "-v",
                        "train",
                        "--arch",
                        "tiny_cnn",
                        "--epochs",
                        "20",
                        "--out",
                        str(out),
                        "--dist-timeout",
                        str(timeout_s),
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    text=True,
                )  # fmt: skip
            )
    try:
        _wait_for(errs[0], "training tiny_cnn", procs[0], LAUNCH_TIMEOUT_S)
        time.sleep(1.0)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        rc0 = procs[0].wait(timeout=timeout_s + 30)
        waited = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[1].returncode == -signal.SIGKILL
    assert rc0 == 1
    last = errs[0].read_text().strip().splitlines()[-1]
    assert last.startswith("onnxship train: error: rank 0/2:"), last
    assert "died or did not answer" in last
    assert waited < timeout_s + 30
    assert not (out / "checkpoints" / "teacher.pt").exists()
    assert not (out / "stages" / "train.json").exists()


def _workers(pid: int) -> list[int]:
    """The onnxship processes torchrun (`pid`) started."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"onnxship" in cmdline:
                found.append(int(child))
    return sorted(found)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc (Linux)")
def test_torchrun_when_a_worker_is_killed_both_exit_non_zero(
    tmp_path: Path, mnist_root: Path
) -> None:
    """Under torchrun: SIGKILL one worker mid-training; torchrun exits non-zero and the other
    worker is gone within the timeout; nothing is written."""
    timeout_s = 30
    out = tmp_path / "out"
    logs = tmp_path / "logs"
    cmd = _torchrun("-v", "train", "--arch", "tiny_cnn", "--epochs", "20", "--out", str(out),
                    "--dist-timeout", str(timeout_s), log_dir=logs)  # fmt: skip
    agent = subprocess.Popen(
        cmd, env=_env(mnist_root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while time.monotonic() < deadline:
            logs0 = sorted(logs.rglob("attempt_0/0/stderr.log"))
            if logs0 and "training tiny_cnn" in logs0[0].read_text(errors="replace"):
                break
            assert agent.poll() is None, "torchrun exited before training started"
            time.sleep(0.2)
        else:
            pytest.fail("training did not start")
        workers = _workers(agent.pid)
        assert len(workers) == 2, workers
        os.kill(workers[1], signal.SIGKILL)
        rc = agent.wait(timeout=timeout_s + 60)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert rc != 0
    assert not Path(f"/proc/{workers[0]}").exists() or _is_zombie(workers[0])
    assert not (out / "checkpoints" / "teacher.pt").exists()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_run_under_torchrun_builds_a_verified_bundle_and_resumes_on_every_rank(
    tmp_path: Path, mnist_subset: Path
) -> None:
    """`torchrun -m onnxship run` on the small config (conftest.SMALL, on an MNIST subset): a
    bundle that `verify` accepts; a rerun after the train and distill records are lost redoes
    both on both ranks (rank 0 decided) and reuses everything else, since the same seed and
    world size give the same teacher and student, byte for byte."""
    from onnxship.cli import main

    mnist_root = mnist_subset
    config = tmp_path / "small.toml"
    config.write_text(reduced_config(SMALL, data_dir=str(mnist_root)))
    out = tmp_path / "bundle"
    args = ("run", "--config", str(config), "--out", str(out))
    _launch(_torchrun(*args, log_dir=tmp_path / "logs1"), mnist_root)
    assert _rank_logs(tmp_path / "logs1", 1, "stdout") == ""
    assert main(["verify", str(out), "--data-dir", str(mnist_root)]) == 0
    train = json.loads((out / "stages" / "train.json").read_text())["metrics"]
    distill = json.loads((out / "stages" / "distill.json").read_text())["metrics"]
    assert train["world_size"] == distill["world_size"] == 2
    teacher_sha = sha256_file(out / "checkpoints" / "teacher.pt")
    student_sha = sha256_file(out / "checkpoints" / "student.pt")

    (out / "stages" / "train.json").unlink()
    (out / "stages" / "distill.json").unlink()
    proc = _launch(_torchrun(*args, log_dir=tmp_path / "logs2"), mnist_root)
    err0 = _rank_logs(tmp_path / "logs2", 0, "stderr")
    assert "[run ] train (2 ranks)" in err0 and "[run ] distill (2 ranks)" in err0
    assert "[skip] prune:" in err0 and "[skip] quantize:" in err0 and "[skip] bench:" in err0
    assert "2 stages ran" in proc.stdout + _rank_logs(tmp_path / "logs2", 0, "stdout")
    assert sha256_file(out / "checkpoints" / "teacher.pt") == teacher_sha
    assert sha256_file(out / "checkpoints" / "student.pt") == student_sha
