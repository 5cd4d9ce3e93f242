"""Student search spaces: which architectures the `search` stage may pick from.

A *space* turns the teacher (its architecture and widths) into a list of `StudentCandidate`s.
Spaces live in a registry like the model registry: adding one is one registration,

    @register_space("my_task")
    def my_task(teacher: TeacherInfo) -> list[StudentCandidate]: ...

Built in:

- `mnist_students`: for the built-in MNIST task. Strided / patchify stems (`patch_cnn`: a conv
  k x k stride s, its channels, the hidden units) plus the pruned teacher, which is one
  candidate like the others (already trained by the prune + distill stages).
- `width_multipliers`: the default for any other model: the teacher's own architecture with its
  width-like keyword arguments scaled by 0.25 / 0.375 / 0.5 / 0.75. `WidthMultiplierSpace` does
  the same for a user model given as a factory (`"pkg.mod:fn"` or any callable) plus kwargs.

Candidates are described by a registry name (or factory) and keyword arguments only, so a
trained candidate saves and reloads through `models.checkpoint` unchanged.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from onnxship.models.errors import ModelsError
from onnxship.models.registry import ModelFactory, create_model, list_models, sorted_kwargs

log = logging.getLogger(__name__)

PRUNED = "pruned"  # a candidate that is the pipeline's pruned + distilled teacher
SCRATCH = "scratch"  # a candidate trained from scratch by KD in the search stage

# Keyword arguments a width multiplier scales: names that say "how wide" ...
WIDTH_LIKE = re.compile(r"(width|channel|hidden|dim|features|filters|units|planes)", re.I)
# ... except those fixed by the data or the task: the input's channels/features
# (in_channels, input_dim, in_features) and the number of classes.
NOT_WIDTH = re.compile(r"(^|_)(in|input|inputs)(_|$)|class|label|output_dim|out_features", re.I)
DEFAULT_MULTIPLIERS = (0.25, 0.375, 0.5, 0.75)


@dataclass(frozen=True)
class StudentCandidate:
    """One student architecture: `arch` is a registry name (or a "module:function" factory),
    `kwargs` its widths. `origin` is SCRATCH (trained by the search) or PRUNED (the pipeline's
    pruned + distilled teacher, already trained)."""

    name: str
    arch: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    origin: str = SCRATCH
    factory: Callable[..., nn.Module] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", sorted_kwargs(self.kwargs))
        if self.origin not in (SCRATCH, PRUNED):
            raise ModelsError(
                f"candidate {self.name!r}: origin {self.origin!r} must be {SCRATCH!r} or {PRUNED!r}"
            )

    @property
    def widths(self) -> dict[str, Any]:
        return dict(self.kwargs)

    def build(self) -> nn.Module:
        """A fresh, untrained model of this architecture."""
        if self.factory is not None:
            model = self.factory(**self.widths)
        elif ":" in self.arch:  # imported, called and checked like a [model] factory
            return ModelFactory(self.arch, self.widths).build()
        else:
            return create_model(self.arch, **self.widths)
        if not isinstance(model, nn.Module):
            raise ModelsError(
                f"candidate {self.name!r}: factory {self.arch!r} returned "
                f"{type(model).__name__}, expected a torch.nn.Module"
            )
        return model

    def dominates(self, other: StudentCandidate) -> bool:
        """True when `other` is this architecture with every numeric width <= this one's: a
        candidate that cannot plausibly hold accuracy once this one could not."""
        if other.arch != self.arch or other.origin != self.origin:
            return False
        mine, theirs = self.widths, other.widths
        if set(mine) != set(theirs):
            return False
        for key, value in mine.items():
            if _is_structural(key):
                if theirs[key] != value:
                    return False
            elif not theirs[key] <= value:
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arch": self.arch,
            "widths": self.widths,
            "origin": self.origin,
        }


def _is_structural(key: str) -> bool:
    """Widths that change the shape of the computation rather than its width (stem kernel and
    stride): candidates differing in them are not comparable by capacity."""
    return key in ("kernel", "stride", "patch")


@dataclass(frozen=True)
class TeacherInfo:
    """What a space may look at: the teacher's architecture (registry name or factory), its
    widths/kwargs, and the task ("mnist" for the built-in data)."""

    arch: str
    widths: Mapping[str, Any]
    task: str = "mnist"
    # A user's network: builds the model from keyword arguments (the factory imported with its
    # config folder on sys.path); `arch` is then its "module:function" name, for the record.
    build: Callable[..., nn.Module] | None = field(default=None, compare=False, repr=False)


SpaceFn = Callable[[TeacherInfo], list[StudentCandidate]]
_SPACES: dict[str, SpaceFn] = {}


def register_space(name: str) -> Callable[[SpaceFn], SpaceFn]:
    def decorator(fn: SpaceFn) -> SpaceFn:
        if name in _SPACES:
            raise ModelsError(f"search space {name!r} is registered twice")
        _SPACES[name] = fn
        return fn

    return decorator


def list_spaces() -> list[str]:
    return sorted(_SPACES)


AUTO_SPACE = "auto"


def default_space(teacher: TeacherInfo) -> str:
    """The built-in MNIST task's own space for its SimpleCNN teacher; width multipliers of the
    teacher's architecture otherwise."""
    if teacher.task == "mnist" and teacher.arch == "simple_cnn":
        return "mnist_students"
    return "width_multipliers"


def space_candidates(name: str, teacher: TeacherInfo) -> list[StudentCandidate]:
    """The candidates of space `name` ("auto" = `default_space`), names unique."""
    resolved = default_space(teacher) if name == AUTO_SPACE else name
    if resolved not in _SPACES:
        raise ModelsError(
            f"unknown search space {name!r}; known spaces: {AUTO_SPACE}, {', '.join(list_spaces())}"
        )
    candidates = _SPACES[resolved](teacher)
    names = [c.name for c in candidates]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelsError(f"search space {resolved!r} names candidates twice: {duplicates}")
    if not candidates:
        raise ModelsError(f"search space {resolved!r} has no candidate for teacher {teacher.arch}")
    return candidates


def pruned_candidate(teacher: TeacherInfo) -> StudentCandidate:
    return StudentCandidate("pruned-teacher", teacher.arch, (), origin=PRUNED)


def patch_candidate(kernel: int, stride: int, channels: int, hidden: int) -> StudentCandidate:
    """A `patch_cnn` candidate: a conv `kernel` x `kernel` stride `stride` with `channels`
    filters, then `hidden` units."""
    return StudentCandidate(
        f"patch k{kernel}s{stride} c{channels} h{hidden}",
        "patch_cnn",
        sorted_kwargs(
            {"kernel": kernel, "stride": stride, "conv_channels": channels, "hidden": hidden}
        ),
    )


# The MNIST grid (kernel, stride, conv channels, hidden units): overlapping 6x6/4 stems (a 6x6
# grid) and patchify 4x4/4 / 7x7/7 stems, a few widths each, from well below to well above the
# accuracy a 0.3 pp budget needs. Latency on the CPU EP follows MACs closely here, so the grid is
# dense where cost and accuracy trade. Which candidates can hold the accuracy is decided in each
# run, on its validation split (`onnxship.search`): the space only lists architectures.
MNIST_GRID: tuple[tuple[int, int, int, int], ...] = (
    (6, 4, 16, 64),
    (6, 4, 18, 64),
    (6, 4, 20, 48),
    (6, 4, 20, 56),
    (6, 4, 20, 64),
    (6, 4, 24, 32),
    (6, 4, 24, 48),
    (6, 4, 24, 64),
    (6, 4, 32, 64),
    (4, 4, 32, 64),
    (4, 4, 32, 128),
    (4, 4, 8, 64),
    (4, 4, 16, 64),
    (4, 4, 24, 64),
    (7, 7, 32, 64),
    (7, 7, 48, 64),
)


@register_space("mnist_students")
def mnist_students(teacher: TeacherInfo) -> list[StudentCandidate]:
    return [pruned_candidate(teacher), *(patch_candidate(*g) for g in MNIST_GRID)]


def is_width_like(key: str) -> bool:
    """A keyword argument the width-multiplier space scales by default (see WIDTH_LIKE)."""
    return bool(WIDTH_LIKE.search(key)) and not NOT_WIDTH.search(key)


def scale_widths(
    kwargs: Mapping[str, Any], multiplier: float, keys: Sequence[str] | None = None
) -> dict[str, Any]:
    """`kwargs` with its width-like integers (or `keys`) multiplied, rounded, at least 1."""
    out = dict(kwargs)
    for key, value in kwargs.items():
        chosen = key in keys if keys is not None else is_width_like(key)
        if chosen and isinstance(value, int) and not isinstance(value, bool):
            out[key] = max(1, int(math.floor(value * multiplier + 0.5)))
    return out


@dataclass(frozen=True)
class WidthMultiplierSpace:
    """A user model's default space: `factory(**kwargs)` with its width-like kwargs scaled.

    factory: a "module:function" string or a callable returning an nn.Module (e.g.
      `create_model`-style: `functools.partial(create_model, "bn_cnn")`).
    kwargs: the full-width model's keyword arguments (the teacher's).
    width_keys: which kwargs to scale; default: names matching `WIDTH_LIKE` (width, channels,
      hidden, dim, features, ...) except the input's and the classes' (`NOT_WIDTH`).
    """

    factory: str | Callable[..., nn.Module]
    kwargs: Mapping[str, Any]
    multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS
    width_keys: tuple[str, ...] | None = None
    label: str = "width"
    arch_name: str | None = None  # the candidates' `arch` (default: the factory's name)

    def candidates(self) -> list[StudentCandidate]:
        if not self.multipliers or any(not 0 < m <= 1 for m in self.multipliers):
            raise ModelsError(
                f"width multipliers must be in (0, 1], got {self.multipliers}; e.g. 0.25, 0.5"
            )
        keys = self.width_keys
        scalable = [
            k
            for k, v in self.kwargs.items()
            if (k in keys if keys is not None else is_width_like(k))
            and isinstance(v, int)
            and not isinstance(v, bool)
        ]
        if not scalable:
            raise ModelsError(
                f"no width-like integer keyword argument to scale in {dict(self.kwargs)}; name "
                "them with width_keys (e.g. ['channels', 'hidden'])"
            )
        arch = self.arch_name or (
            self.factory if isinstance(self.factory, str) else _callable_name(self.factory)
        )
        fn = None if isinstance(self.factory, str) else self.factory
        seen: set[tuple[tuple[str, Any], ...]] = set()
        out = []
        for m in sorted(self.multipliers):
            scaled = sorted_kwargs(scale_widths(self.kwargs, m, keys))
            if scaled in seen:
                continue
            seen.add(scaled)
            out.append(StudentCandidate(f"{self.label} x{m:g}", arch, scaled, factory=fn))
        return out


def _callable_name(fn: Callable[..., Any]) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    module = getattr(inner, "__module__", "?")
    return f"{module}:{getattr(inner, '__qualname__', repr(inner))}"


@register_space("width_multipliers")
def width_multipliers(teacher: TeacherInfo) -> list[StudentCandidate]:
    # A user's factory builds through `teacher.build`; a registry name or a "module:function"
    # string rebuilds from the string.
    if teacher.build is None and ":" not in teacher.arch and teacher.arch not in list_models():
        raise ModelsError(
            f"width_multipliers: teacher architecture {teacher.arch!r} is neither registered "
            "nor a 'module:function' factory"
        )
    factory: str | Callable[..., nn.Module] = teacher.build or teacher.arch
    space = WidthMultiplierSpace(factory, dict(teacher.widths), arch_name=teacher.arch)
    try:
        scaled = space.candidates()
    except ModelsError as exc:
        # A factory without width-like kwargs still gets the stage: its pruned teacher is
        # screened and ships; the run says how to widen the space.
        log.warning(
            "search: %s; only the pruned teacher is a candidate (give the factory a width-like "
            "keyword argument in [model] kwargs, e.g. width = 16, to search narrower networks)",
            exc,
        )
        return [pruned_candidate(teacher)]
    return [pruned_candidate(teacher), *scaled]
