"""TOML <-> frozen dataclass configs: unknown keys, wrong types, enums, round trip."""

from __future__ import annotations

import dataclasses
import enum
import tomllib

import pytest

from onnxship.configio import dataclass_from_mapping, to_toml
from onnxship.core.artifact import jsonable
from onnxship.errors import PipelineError


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float = 0.1
    colour: Colour = Colour.RED


@dataclasses.dataclass(frozen=True)
class Outer:
    n: int = 3
    sizes: tuple[int, ...] = (1, 64)
    opset: int | None = None
    inner: Inner = dataclasses.field(default_factory=Inner)

    def validate(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")


def test_dataclass_from_mapping_converts_nested_tables_enums_and_tuples() -> None:
    cfg = dataclass_from_mapping(
        Outer, {"n": 5, "sizes": [1, 2], "inner": {"lr": 1, "colour": "blue"}}, "cfg"
    )
    assert cfg == Outer(n=5, sizes=(1, 2), inner=Inner(lr=1.0, colour=Colour.BLUE))


def test_to_toml_round_trips_through_tomllib() -> None:
    cfg = Outer(n=7, sizes=(4,), inner=Inner(lr=0.5, colour=Colour.BLUE))
    assert dataclass_from_mapping(Outer, tomllib.loads(to_toml(jsonable(cfg))), "cfg") == cfg


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"m": 1, "zz": 2}, "unknown key(s) m, zz"),
        ({"n": "three"}, "cfg.n: expected an integer"),
        ({"n": True}, "cfg.n: expected an integer"),
        ({"inner": {"colour": "green"}}, "cfg.inner.colour: expected one of 'red', 'blue'"),
        ({"inner": {"lr": "fast"}}, "cfg.inner.lr: expected a number"),
        ({"sizes": 3}, "cfg.sizes: expected a list"),
        ({"n": 0}, "n must be >= 1"),
    ],
)
def test_dataclass_from_mapping_names_the_bad_key(table: dict, message: str) -> None:
    with pytest.raises(PipelineError) as info:
        dataclass_from_mapping(Outer, table, "cfg")
    assert message in str(info.value)


def test_dataclass_from_mapping_converts_fixed_length_tuples_per_position() -> None:
    @dataclasses.dataclass(frozen=True)
    class Widths:
        widths: tuple[tuple[str, int], ...] = ()

    cfg = dataclass_from_mapping(Widths, {"widths": [["conv_channels", 8], ["hidden", 32]]}, "cfg")
    assert cfg.widths == (("conv_channels", 8), ("hidden", 32))
