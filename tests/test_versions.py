"""pyproject's dependency floors are versions the suite has passed with (README says which)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _floors() -> dict[str, tuple[int, ...]]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        match = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", dep)
        assert match, f"dependency {dep!r} has no >= floor"
        out[match.group(1)] = tuple(int(p) for p in match.group(2).split("."))
    return out


def _tested() -> dict[str, tuple[int, ...]]:
    text = (REPO / "README.md").read_text()
    line = text[text.index("Tested versions:") :].split("\n\n")[0]
    return {
        name: tuple(int(p) for p in version.split("."))
        for name, version in re.findall(r"`([A-Za-z0-9_.-]+) ([0-9][0-9.]*)`", line)
    }


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


def test_pyproject_floors_are_the_tested_versions() -> None:
    tested = _tested()
    for name, floor in _floors().items():
        assert name in tested, f"README 'Tested versions' does not name {name}"
        assert floor == tested[name][: len(floor)], (name, floor, tested[name])


def test_installed_versions_satisfy_the_floors() -> None:
    for name, floor in _floors().items():
        installed = _release(metadata.version(name))
        assert installed[: len(floor)] >= floor, (name, installed, floor)
