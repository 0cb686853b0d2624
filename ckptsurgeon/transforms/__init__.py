"""Transforms: small pure units that edit a checkpoint's tensor map and say what they did.

A transform's ``apply(state)`` returns a new State and the Changes it made; it never prints,
never touches files and never parses options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ckptsurgeon.checkpoint import TensorRef
from ckptsurgeon.report import Change


@dataclass
class State:
    """The checkpoint as the pipeline sees it between steps: name → TensorRef, and metadata.

    Example:
        >>> state = State(dict(open_checkpoint("resnet.pth").tensors))
        >>> state.tensors["fc.weight"].shape
        (10, 32)
    """

    tensors: dict[str, TensorRef]
    metadata: dict[str, str] = field(default_factory=dict)
    # torch's module version table, carried by the pipeline (transforms need not copy it)
    module_versions: dict[str, dict] | None = None


@dataclass
class StepResult:
    state: State
    changes: list[Change] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # human summary of the step
    facts: dict[str, Any] = field(default_factory=dict)  # the same for machines


class Transform:
    """Base class: subclasses set ``op`` and implement ``apply`` and ``params``.

    Example (a transform that drops optimizer-only buffers):
        >>> class DropEma(Transform):
        ...     op = "drop-ema"
        ...     def apply(self, state):
        ...         gone = [n for n in state.tensors if n.endswith("_ema")]
        ...         kept = {n: r for n, r in state.tensors.items() if n not in gone}
        ...         return StepResult(State(kept, state.metadata), [Change("dropped", n) for n in gone])
        >>> Pipeline([DropEma()]).run("in.pth", "out.pth")
    """

    op: ClassVar[str] = ""

    def params(self) -> dict[str, Any]:
        return {}

    def apply(self, state: State) -> StepResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"
