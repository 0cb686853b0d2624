"""Recipes: an ordered list of surgery steps in a TOML file, validated whole before any tensor is read.

A recipe is a top-level array of ``[[step]]`` tables, each with an ``op`` and that op's parameters
(the same names as the Python classes' arguments), plus an optional top-level ``key``: the state
dict to use in a training checkpoint (``--key`` on the command line wins over it)::

    key = "state_dict_ema"

    [[step]]
    op = "strip-prefix"
    prefix = "module."

    [[step]]
    op = "adapt-head"
    num_classes = 7
    mode = "reinit"

Ops: strip-prefix, add-prefix, rename, select, drop, cast, adapt-head, adapt-stem.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckptsurgeon.errors import SurgeonError
from ckptsurgeon.pipeline import Pipeline
from ckptsurgeon.transforms import State, StepResult, Transform

if TYPE_CHECKING:
    import torch

    from ckptsurgeon.checkpoint import Checkpoint
    from ckptsurgeon.report import Report

__all__ = ["OPS", "Recipe", "load_recipe", "parse_recipe"]


# --- value kinds: check a TOML value and turn it into what the transform takes -------------------


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    for kind, name in ((float, "float"), (str, "string"), (list, "array"), (dict, "table")):
        if isinstance(value, kind):
            return name
    if isinstance(value, (_dt.date, _dt.time)):
        return "date/time"
    return type(value).__name__  # pragma: no cover - TOML has no other types


def _got(value: Any) -> str:
    shown = repr(value) if not isinstance(value, (list, dict)) or len(repr(value)) < 40 else "…"
    return f"got {_type_name(value)} {shown}"


def _as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, {_got(value)}")
    return value


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, {_got(value)}")
    return value


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, {_got(value)}")
    return float(value)


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, {_got(value)}")
    return value


def _as_str_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'must be an array of strings such as ["a", "b"], {_got(value)}')
    return value


def _as_names(value: Any) -> list[str]:
    """A string or an array of strings (one glob or name needs no brackets)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'must be a string or an array of strings such as ["a", "b"], {_got(value)}')
    return value


def _class_spec(spec: str) -> list[int]:
    """Class indices from ``"0-9,12"`` (inclusive ranges and single indices, in the order written).

    Example:
        >>> _class_spec("0-2,7")
        [0, 1, 2, 7]
    """
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        if not lo.strip().isdigit() or (sep and not hi.strip().isdigit()):
            raise ValueError(f'{spec!r} is not a class list: write e.g. "0-9,12" or [0, 1, 2]')
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"{spec!r}: range {part!r} runs backwards")
        out.extend(range(a, b + 1))
    return out


def _as_classes(value: Any) -> list[int]:
    if isinstance(value, str):
        return _class_spec(value)
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    raise ValueError(f'must be an array of integers or a string such as "0-9,12", {_got(value)}')


# --- the ops ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One recipe op: how to build its transform and which parameters it takes."""

    name: str
    factory: Callable[[], type[Transform]]  # imported late: head/stem pull in torch when used
    params: dict[str, Callable[[Any], Any]]
    required: tuple[str, ...] = ()


def _keys(name: str) -> Callable[[], type[Transform]]:
    def factory() -> type[Transform]:
        from ckptsurgeon.transforms import keys

        return getattr(keys, name)

    return factory


def _cast() -> type[Transform]:
    from ckptsurgeon.transforms.cast import Cast

    return Cast


def _head() -> type[Transform]:
    from ckptsurgeon.transforms.head import AdaptHead

    return AdaptHead


def _stem() -> type[Transform]:
    from ckptsurgeon.transforms.stem import AdaptStem

    return AdaptStem


OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op("strip-prefix", _keys("StripPrefix"), {"prefix": _as_str}, ("prefix",)),
        Op("add-prefix", _keys("AddPrefix"), {"prefix": _as_str}, ("prefix",)),
        Op("rename", _keys("Rename"), {"pattern": _as_str, "replacement": _as_str}, ("pattern", "replacement")),
        Op("select", _keys("Select"), {"globs": _as_names}, ("globs",)),
        Op("drop", _keys("Drop"), {"globs": _as_names}, ("globs",)),
        Op("cast", _cast, {"dtype": _as_str}, ("dtype",)),
        Op(
            "adapt-head",
            _head,
            {
                "num_classes": _as_int,
                "mode": _as_str,
                "heads": _as_names,
                "label_offset": _as_int,
                "keep_classes": _as_classes,
                "class_names": _as_str_list,
                "init": _as_str,
                "std": _as_float,
                "seed": _as_int,
            },
        ),
        Op(
            "adapt-stem",
            _stem,
            {
                "in_chans": _as_int,
                "strategy": _as_str,
                "base_chans": _as_int,
                "convs": _as_names,
                "allow_drop": _as_bool,
                "extra_init": _as_str,
            },
            ("in_chans",),
        ),
    )
}

_TOP_LEVEL = ("key", "step")


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _build_step(n: int, table: Any) -> Transform:
    if not isinstance(table, dict):
        raise ValueError(f"step {n}: must be a table of op and parameters, {_got(table)}")
    if "op" not in table:
        raise ValueError(f'step {n}: has no op; every [[step]] needs one, e.g. op = "strip-prefix"')
    name = table["op"]
    if not isinstance(name, str):
        raise ValueError(f"step {n}: op must be a string, {_got(name)}")
    if name not in OPS:
        raise ValueError(f"step {n}: unknown op {name!r} ({_suggest(name, list(OPS))}ops: {', '.join(OPS)})")
    op = OPS[name]
    where = f"step {n} ({name})"
    kwargs: dict[str, Any] = {}
    for param, value in table.items():
        if param == "op":
            continue
        if param not in op.params:
            raise ValueError(
                f"{where}: unknown parameter {param!r} ({_suggest(param, list(op.params))}"
                f"{name} takes {', '.join(op.params)})"
            )
        try:
            kwargs[param] = op.params[param](value)
        except ValueError as e:
            raise ValueError(f"{where}: {param} {e}") from None
    missing = [p for p in op.required if p not in kwargs]
    if missing:
        raise ValueError(f"{where}: missing parameter {', '.join(missing)}")
    try:
        return op.factory()(**kwargs)
    except SurgeonError as e:
        raise ValueError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:  # a transform that checks its arguments the plain-Python way
        raise ValueError(f"{where}: {e}") from None


def parse_recipe(data: Mapping[str, Any], *, path: str | os.PathLike | None = None) -> Recipe:
    """Validate a parsed recipe (the TOML document as a dict) and build its transforms.

    Raises:
        SurgeonError: "step N (op): problem" for the first thing wrong, naming ``path``.

    Example:
        >>> parse_recipe({"step": [{"op": "cast", "dtype": "bfloat16"}]}).steps
        [Cast(dtype='bfloat16')]
    """
    try:
        for top in data:
            if top not in _TOP_LEVEL:
                raise ValueError(
                    f"unknown top-level entry {top!r} ({_suggest(top, _TOP_LEVEL)}a recipe has [[step]] tables and "
                    "an optional key)"
                )
        key = data.get("key")
        if key is not None and (not isinstance(key, str) or not key):
            raise ValueError(f'key must be the state dict\'s dotted path such as "state_dict_ema", {_got(key)}')
        tables = data.get("step")
        if tables is None:
            raise ValueError("has no [[step]] tables: add one per step, each with an op and its parameters")
        if isinstance(tables, dict):
            raise ValueError("step must be an array of tables: write [[step]], not [step]")
        if not isinstance(tables, list) or not tables:
            raise ValueError("has no [[step]] tables: add one per step, each with an op and its parameters")
        steps = [_build_step(n, table) for n, table in enumerate(tables, 1)]
    except ValueError as e:
        raise SurgeonError(str(e), path=path) from None
    return Recipe(steps, key=key, path=path)


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and validate a TOML recipe; nothing is opened but the recipe itself.

    Example:
        >>> recipe = load_recipe("examples/recipes/ddp-to-gray-7class.toml")
        >>> report = recipe.run("ddp.pth", "gray7.safetensors")
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise SurgeonError("recipe not found", path=path) from None
    except IsADirectoryError:
        raise SurgeonError("the recipe is a folder; give a .toml file", path=path) from None
    except OSError as e:
        raise SurgeonError(f"cannot read the recipe: {e.strerror or e}", path=path) from None
    except UnicodeDecodeError:
        raise SurgeonError("the recipe is not UTF-8 text", path=path) from None
    except tomllib.TOMLDecodeError as e:
        raise SurgeonError(f"the recipe is not valid TOML: {e}", path=path) from None
    return parse_recipe(data, path=path)


# --- running ---------------------------------------------------------------------------------------


class _Numbered(Transform):
    """A recipe step that names itself ("step 3 (rename): ...") in the errors it raises."""

    def __init__(self, number: int, inner: Transform):
        self.number, self.inner = number, inner
        self.op = inner.op

    def params(self) -> dict[str, Any]:
        return self.inner.params()

    def apply(self, state: State) -> StepResult:
        try:
            return self.inner.apply(state)
        except SurgeonError as e:
            e.message = f"step {self.number} ({self.op}): {e.message}"
            raise


class Recipe(Pipeline):
    """A Pipeline read from a recipe file: its steps, plus the state dict ``key`` it asks for.

    ``run`` and ``state_dict`` use the recipe's ``key`` unless given one; a step that fails while
    running names its step number.

    Example:
        >>> recipe = load_recipe("ema-to-bf16-release.toml")
        >>> sd = recipe.state_dict("train.pth")   # in memory, nothing written
    """

    def __init__(
        self, steps: Sequence[Transform] = (), *, key: str | None = None, path: str | os.PathLike | None = None
    ):
        super().__init__(steps)
        self.key = key
        self.path = os.fspath(path) if path is not None else None

    def numbered_steps(self) -> list[Transform]:
        """The steps, wrapped so that their errors say which recipe step failed."""
        return [_Numbered(n, s) for n, s in enumerate(self.steps, 1)]

    def apply(self, ckpt: Checkpoint) -> tuple[State, Report]:
        """Like ``Pipeline.apply``, with errors naming the recipe step that raised them."""
        return Pipeline(self.numbered_steps()).apply(ckpt)

    def run(
        self, src: str | os.PathLike, dst: str | os.PathLike | None = None, *, key: str | None = None, **options: Any
    ) -> Report:
        """Like ``Pipeline.run``; ``key`` defaults to the recipe's."""
        return super().run(src, dst, key=key or self.key, **options)

    def state_dict(self, src: str | os.PathLike, *, key: str | None = None) -> dict[str, torch.Tensor]:
        """Like ``Pipeline.state_dict``; ``key`` defaults to the recipe's."""
        return super().state_dict(src, key=key or self.key)

    def __repr__(self) -> str:
        return f"Recipe({self.steps!r}, key={self.key!r}, path={self.path!r})"
