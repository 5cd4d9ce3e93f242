"""Argument helpers shared by the command modules (stdlib only).

Flags that fill a config field are declared on the config dataclass (`onnxship.core.flags`);
`add_config_flags` adds them to a parser and `config_from_args` builds the config back. A
command whose config lives in a heavy library (torch, onnx) registers through `add_command`,
which adds its arguments only when that command is parsed or its help shown, so `onnxship
--help` and the torch-free commands never import torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from onnxship.core.flags import (  # noqa: F401  (the value parsers, re-exported for the commands)
    FLAG,
    FROM_CONFIG,
    NESTED,
    Flag,
    dim_value,
    float_csv,
    float_list,
    fraction,
    int_csv,
    int_list,
    key_value,
    non_negative_int,
    number,
    parse_ratios,
    positive_float,
    positive_int,
    width_value,
)

DATA_DIR_ENV = "ONNXSHIP_DATA_DIR"


def resolve_user_paths(args: argparse.Namespace) -> None:
    """The CLI's edge: every path the user gave - each `Path` flag or positional (lists too)
    and `$ONNXSHIP_DATA_DIR` - made absolute against the caller's working directory, once, so
    nothing downstream (a library call, a child process, a config written to a bundle) ever
    sees a relative path. Config-file values are resolved against the file's folder by
    `onnxship.pipeline.load_config`."""
    for key, value in vars(args).items():
        if isinstance(value, Path):
            setattr(args, key, Path(os.path.abspath(value)))
        elif isinstance(value, list) and value and all(isinstance(v, Path) for v in value):
            setattr(args, key, [Path(os.path.abspath(v)) for v in value])
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        os.environ[DATA_DIR_ENV] = os.path.abspath(env)


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="MNIST root holding MNIST/raw/*-ubyte (default: $ONNXSHIP_DATA_DIR, else ./data)",
    )


def add_out_dir(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        required=required,
        help="output folder; artifacts go to OUT/artifacts or OUT/checkpoints, records to OUT/stages",
    )


def add_session_config(target: argparse._ActionsContainer, help: str) -> None:
    """`--session-config FILE`: a session-config file from `onnxship bench --tune-session`
    (read by `runtime_bench.session_options`); `help` says what the command does with it."""
    target.add_argument("--session-config", type=Path, default=None, metavar="FILE", help=help)


def output_file(out_dir: Path, subdir: str, filename: str) -> Path:
    """`out_dir/subdir/filename`, creating the folder (one-line error if it cannot be made)."""
    from onnxship.api import output_path

    return output_path(out_dir, subdir, filename)


DEFAULT_DIST_TIMEOUT_S = 120.0  # mirrors models.distributed.DEFAULT_TIMEOUT_S (torch-free here)


def artifact_name(text: str) -> str:
    """An artifact or record name: a bare name, no folders (`.onnx` dropped)."""
    if not text or "/" in text or "\\" in text or text.startswith("."):
        raise argparse.ArgumentTypeError(
            f"expected an artifact name like teacher-fp32 (no folders), got {text!r}"
        )
    return text.removesuffix(".onnx")


def add_artifact_names(parser: argparse.ArgumentParser, name_help: str, record: str) -> None:
    """--name (the artifact file's name) and --record-name (its stage record's, default
    `record`)."""
    parser.add_argument("--name", type=artifact_name, default=None, help=name_help)
    parser.add_argument(
        "--record-name",
        type=artifact_name,
        default=record,
        help=f"stage record name: OUT/stages/RECORD.json (default: {record})",
    )


def artifact_names(args: argparse.Namespace) -> dict[str, Any]:
    """The names `add_artifact_names` parsed, as the api stage's `name=` and `record_name=`."""
    return {"name": args.name, "record_name": args.record_name}


def record_path(args: argparse.Namespace) -> Path:
    """The stage record an artifact command wrote: OUT/stages/RECORD.json."""
    return Path(args.out) / "stages" / f"{args.record_name}.json"


def add_checkpoint_name(parser: argparse.ArgumentParser, default: str) -> None:
    """--name of a command that writes a checkpoint (train, prune, distill)."""
    parser.add_argument(
        "--name",
        default=default,
        help=f"checkpoint name: writes OUT/checkpoints/NAME.pt (default: {default})",
    )


def checkpoint_destination(args: argparse.Namespace, example: str) -> tuple[str, Path]:
    """A checkpoint command's --name (a plain file name, e.g. `example`) and --out (a folder,
    or not there yet), checked before any work."""
    from onnxship.models.errors import ModelsError

    name = str(args.name)
    if not name or Path(name).name != name or name in (".", "..") or name.startswith("."):
        raise ModelsError(
            f"--name {name!r} must be a plain file name (no folders, not hidden), e.g. {example}"
        )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ModelsError(f"--out {out} exists and is not a folder; pass a folder path")
    return name, out


def add_torch_threads(parser: argparse.ArgumentParser, note: str = "") -> None:
    """--threads: torch's intra-op threads for a training command (`note` follows the help)."""
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch intra-op threads (default: torch's choice, usually the core count)"
        + (f". {note}" if note else ""),
    )


def add_dist_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dist-timeout",
        type=positive_float,
        default=DEFAULT_DIST_TIMEOUT_S,
        metavar="SECONDS",
        help="under torchrun: a collective that waits longer than this fails on every rank "
        "with a one-line error instead of hanging (a rank that dies is noticed at once; "
        f"default: {DEFAULT_DIST_TIMEOUT_S:g})",
    )


Config = TypeVar("Config")


class CommandParser(argparse.ArgumentParser):
    """A command's parser whose arguments are added on first use: when it parses, or prints
    its help or usage. Registering every command then costs nothing, and only the command that
    runs imports its library (to read the flags off its config)."""

    _add_arguments: Callable[[argparse.ArgumentParser], None] | None = None

    def defer(self, add_arguments: Callable[[argparse.ArgumentParser], None]) -> None:
        self._add_arguments = add_arguments

    def populate(self) -> None:
        add, self._add_arguments = self._add_arguments, None
        if add is not None:
            add(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self.populate()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self.populate()
        return super().format_usage()

    def format_help(self) -> str:
        self.populate()
        return super().format_help()


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    func: Callable[[argparse.Namespace], int],
    help: str,
    description: str | None = None,
    epilog: str | None = None,
    *,
    wrap: bool = False,
) -> None:
    """Register command `name`; `add_arguments(parser)` runs when the command is used. The
    description and epilog are shown as written (line breaks kept), or re-wrapped if `wrap`."""
    formatter = argparse.HelpFormatter if wrap else argparse.RawDescriptionHelpFormatter
    parser = sub.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=formatter
    )
    parser.set_defaults(func=func)
    if isinstance(parser, CommandParser):
        parser.defer(add_arguments)
    else:
        add_arguments(parser)


class _Shown:
    """A default as the help shows it: enums by value, tuples comma-joined (like the input)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __format__(self, spec: str) -> str:
        value = self.value
        if isinstance(value, enum.Enum):
            return format(value.value, spec)
        if isinstance(value, tuple):
            return ",".join(format(v, spec) for v in value)
        return format(value, spec)


def _flags(config: Any, names: tuple[str, ...]) -> Iterator[tuple[str, Flag, Any]]:
    """(field path, flag, config default) of `names` (all flagged fields if none), in order."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    flagged = tuple(n for n, f in fields.items() if FLAG in f.metadata or NESTED in f.metadata)
    for name in names or flagged:
        meta = fields[name].metadata
        value = getattr(config, name)
        if FLAG in meta:
            yield name, meta[FLAG], value
        elif NESTED in meta:
            for sub, flag in meta[NESTED].items():
                yield f"{name}.{sub}", flag, getattr(value, sub)
        else:
            raise TypeError(f"{type(config).__name__}.{name} declares no flag")


def add_config_flags(target: argparse._ActionsContainer, config: Any, *names: str) -> None:
    """Add the flags of `config`'s fields `names` (a parser or an argument group), defaults
    and `{default}` in the help taken from `config` (an instance: the defaults a command uses).
    """
    for _, flag, value in _flags(config, names):
        default = flag.default
        if default is FROM_CONFIG:
            default = value.value if isinstance(value, enum.Enum) else value
        choices = flag.choices
        if choices is None and flag.default is FROM_CONFIG and isinstance(value, enum.Enum):
            choices = tuple(m.value for m in type(value))
        if flag.action == "store_true":
            default = False
        elif flag.action == "append":
            default = []
        kwargs = {
            "type": flag.type, "metavar": flag.metavar, "choices": choices, "nargs": flag.nargs,
            "const": flag.const, "dest": flag.dest, "action": flag.action,
        }  # fmt: skip
        help_text = (
            flag.help.format(default=_Shown(value)) if "{default" in flag.help else flag.help
        )
        target.add_argument(
            flag.option,
            default=default,
            help=help_text,
            **{k: v for k, v in kwargs.items() if v is not None},
        )


def _value(args: argparse.Namespace, flag: Flag, current: Any) -> Any:
    value = getattr(args, flag.key)
    if flag.invert:
        return not value
    if value is None:
        return current  # a flag whose default the command resolves: the config's stands
    if isinstance(current, enum.Enum):
        try:
            return type(current)(value)
        except ValueError:
            return value  # not a member: the config's own check reports it (with the choices)
    return tuple(value) if isinstance(value, list) else value


def config_from_args(args: argparse.Namespace, config: Config, *names: str, **fixed: Any) -> Config:
    """`config` with the fields `names` (all flagged fields if none) set from the parsed flags;
    `fixed` fields are set as given (values the command resolved itself)."""
    changes: dict[str, Any] = dict(fixed)
    nested: dict[str, dict[str, Any]] = {}
    for path, flag, current in _flags(config, names):
        name, _, sub = path.partition(".")
        if name in fixed:
            continue
        if sub:
            nested.setdefault(name, {})[sub] = _value(args, flag, current)
        else:
            changes[name] = _value(args, flag, current)
    for name, values in nested.items():
        changes[name] = dataclasses.replace(getattr(config, name), **values)
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]
