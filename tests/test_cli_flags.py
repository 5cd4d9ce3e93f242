"""The CLI's flags and help, pinned: every command's and sub-verb's parser compared with a
snapshot (tests/cli_flags.json) - each action's option strings, dest, default, type, choices,
nargs, const, required, metavar and help, and the rendered `--help` text.

Flags are declared once, beside the config they fill; this test is what keeps a refactor of
that machinery from changing what a user types or reads. A deliberate change of a flag or its
help is made by regenerating the snapshot and reviewing the diff:

    ONNXSHIP_WRITE_CLI_SNAPSHOT=1 .venv/bin/python -m pytest tests/test_cli_flags.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import TORCH_AND_ONNX, import_blocker  # noqa: E402  (tests/ is on sys.path)

from onnxship.cli import BENCH_SUBVERBS, build_parser
from onnxship.commands import COMMAND_MODULES

SNAPSHOT = Path(__file__).with_name("cli_flags.json")
WIDTH = "100"  # argparse wraps help at $COLUMNS - 2; pinned so the text does not depend on the tty


def _name(value: Any) -> Any:
    if value is None:
        return None
    return getattr(value, "__name__", None) or type(value).__name__


def _action(action: argparse.Action) -> dict[str, Any]:
    return {
        "kind": type(action).__name__,
        "option_strings": list(action.option_strings),
        "dest": action.dest,
        "default": repr(action.default),
        "type": _name(action.type),
        "choices": None if action.choices is None else repr(list(action.choices)),
        "nargs": action.nargs,
        "const": repr(action.const),
        "required": action.required,
        "metavar": action.metavar,
        "help": action.help,
    }


def _parsers() -> dict[str, argparse.ArgumentParser]:
    root = build_parser()
    found = {"onnxship": root}
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def _describe(parser: argparse.ArgumentParser) -> dict[str, Any]:
    text = parser.format_help()  # first: a command's parser may add its arguments on first use
    actions = [_action(a) for a in parser._actions if not isinstance(a, argparse._SubParsersAction)]
    groups = [
        [g.title, sorted(a.dest for a in g._group_actions)]
        for g in parser._mutually_exclusive_groups
    ]
    return {"help": text, "actions": actions, "exclusive": groups}


def _snapshot(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("COLUMNS", WIDTH)
    return {name: _describe(p) for name, p in sorted(_parsers().items())}


def test_cli_flags_and_help_match_the_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    live = _snapshot(monkeypatch)
    if os.environ.get("ONNXSHIP_WRITE_CLI_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(live, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(SNAPSHOT.read_text())
    assert sorted(live) == sorted(pinned), "commands added or removed"
    for name in sorted(pinned):
        want, got = pinned[name], live[name]
        assert [a["dest"] for a in got["actions"]] == [a["dest"] for a in want["actions"]], name
        for a, b in zip(got["actions"], want["actions"], strict=True):
            assert a == b, f"onnxship {name} {a['option_strings'] or a['dest']}"
        assert got["exclusive"] == want["exclusive"], name
        assert got["help"] == want["help"], f"onnxship {name} --help"


def test_cli_snapshot_covers_every_command_and_sub_verb() -> None:
    names = set(json.loads(SNAPSHOT.read_text()))
    assert {"onnxship", *COMMAND_MODULES, *BENCH_SUBVERBS.values()} <= names


# `onnxship ARGS --help` with torch and the ONNX export stack unimportable, as on a box without
# them: the help must come out, and the quantizer (onnxruntime.quantization) must stay unloaded.
HELP_WITHOUT_TORCH = (
    import_blocker(TORCH_AND_ONNX)
    + """
import contextlib, io
from onnxship.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
    main([*sys.argv[1:], "--help"])
assert out.getvalue().startswith("usage: onnxship"), out.getvalue()[:200]
leaked = sorted(m for m in sys.modules if m.startswith("onnxruntime.quantization"))
assert not leaked, f"--help imported {leaked}"
"""
)

HELP_ARGVS = [[], *([name] for name in COMMAND_MODULES), *(["bench", v] for v in BENCH_SUBVERBS)]


@pytest.mark.parametrize("argv", HELP_ARGVS, ids=lambda argv: " ".join(argv) or "onnxship")
def test_cli_help_imports_no_torch_onnx_or_quantizer(argv: list[str]) -> None:
    """Every command's flags come off a config declared in a torch- and onnx-free module, and
    its library is imported only when it runs: `onnxship CMD --help` is instant everywhere."""
    done = subprocess.run(
        [sys.executable, "-c", HELP_WITHOUT_TORCH, *argv], capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
