"""Cast floating tensors to one dtype (a bf16 or fp16 release); integer and bool buffers keep theirs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from ckptsurgeon import dtypes
from ckptsurgeon.checkpoint import TensorRef, tied_groups
from ckptsurgeon.errors import SurgeonError
from ckptsurgeon.report import Change
from ckptsurgeon.transforms import State, StepResult, Transform

TARGETS = ("float16", "bfloat16", "float32")
# Sources we cast. float8 tensors are scaled quantized data: casting them without their scales
# would silently change the model, so they are kept and named in the summary.
SOURCES = ("float64", "float32", "float16", "bfloat16")


def _cast_ref(ref: TensorRef, target: str) -> TensorRef:
    """A ref whose tensor is decoded and cast only when a writer asks, one tensor at a time."""

    def load():
        return ref.load().to(dtypes.torch_dtype(target))

    # A cast copy shares no storage with anything, so it has no alias.
    return TensorRef(ref.name, ref.shape, target, loader=load)


@dataclass
class Cast(Transform):
    """Cast every floating tensor (float64/32/16, bfloat16) to ``dtype``: float16, bfloat16 or float32.

    Integer and bool tensors (``num_batches_tracked``, masks, indices) and tensors already in ``dtype``
    are kept as they are. Casting happens lazily, as the output is written.

    Example:
        >>> Pipeline([Cast("bfloat16")]).run("model.pth", "model-bf16.safetensors")
    """

    dtype: str
    op = "cast"

    def __post_init__(self) -> None:
        if self.dtype not in TARGETS:
            raise SurgeonError(f"cannot cast to {self.dtype!r}", hint=f"choose one of {', '.join(TARGETS)}")

    def params(self) -> dict[str, Any]:
        return {"dtype": self.dtype}

    def apply(self, state: State) -> StepResult:
        out: dict[str, TensorRef] = {}
        changes: list[Change] = []
        cast_from: Counter[str] = Counter()
        kept: Counter[str] = Counter()
        for name, ref in state.tensors.items():
            if ref.dtype in SOURCES and ref.dtype != self.dtype:
                out[name] = _cast_ref(ref, self.dtype)
                changes.append(Change("cast", name, detail=f"{ref.dtype} → {self.dtype}"))
                cast_from[ref.dtype] += 1
            else:
                out[name] = ref
                kept[ref.dtype] += 1
        lines = [
            f"cast {len(changes)} floating tensors to {self.dtype}"
            + (f" (from {_counts(cast_from)})" if cast_from else "")
            + (f"; kept {sum(kept.values())} as they were ({_counts(kept)})" if kept else "")
        ]
        skipped_f8 = sorted(n for n, r in state.tensors.items() if r.dtype.startswith("float8"))
        if skipped_f8:
            lines.append(f"note: float8 tensors are scaled data and were not cast: {', '.join(skipped_f8[:5])}")
        cast_names = {c.name for c in changes}
        for group in tied_groups(state.tensors):
            if not cast_names.intersection(group):
                continue
            lines.append(f"note: {', '.join(group)} shared one storage; after the cast each is written separately")
        facts = {"dtype": self.dtype, "cast": len(changes), "from": dict(cast_from), "kept": dict(kept)}
        return StepResult(State(out, dict(state.metadata)), changes, lines, facts)


def _counts(c: Counter[str]) -> str:
    return ", ".join(f"{n} {d}" for d, n in c.most_common())
