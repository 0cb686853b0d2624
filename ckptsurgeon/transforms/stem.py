"""Adapt a stem (input convolution) trained on RGB to another number of input channels.

The default strategy reproduces timm's ``adapt_input_conv`` as ``load_pretrained`` applies it, bit
for bit: the math is done in float32 and cast back to the stored dtype. ``mean`` and ``rgb-first``
go beyond timm; ``base_chans`` generalises every rule from 3 source channels to any number B.

Rules for a stem weight ``w`` of shape ``[O, I, kh, kw]`` with ``I = k·B`` (k = 1: plain stem;
k > 1: space-to-depth stem, channels in k groups of B consecutive ones), new channel count C:

- C == B (the stem already takes C channels): nothing to change, whatever the strategy.
- ``timm``: C = 1 → ``w.sum(dim=1, keepdim=True)`` (k = 1) or ``w.reshape(O, k, B, kh, kw).sum(2)``
  (k > 1). C > 1 on a plain stem → ``w.repeat(1, ceil(C / B), 1, 1)[:, :C] * (B / C)``. C > 1 on a
  space-to-depth stem: timm cannot; an error, or the weight is dropped with ``allow_drop`` (as timm).
- ``mean``: every new channel is ``w.sum(dim=1) / C``, the mean of the B source channels scaled by
  B / C, so the response to a constant image is kept: Σ_c w'[:, c] = Σ_i w[:, i]. Space-to-depth
  stems: the same within each group of B. For C = 1 this is timm's sum, bit for bit.
- ``rgb-first`` (C > B only): ``w'[:, :B] = w`` unchanged; the C - B extra channels start as the
  channel mean ``w.sum(dim=1) / B`` (``extra_init="mean"``) or zeros (``extra_init="zero"``).
  Space-to-depth stems: the same within each group.

A linear patch embedding ``[D, p·p·B]`` (channel fastest; ``find_stems`` kind "linear") is treated as
the space-to-depth conv ``[D, p·p·B, 1, 1]`` it is. The bias is never touched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckptsurgeon import dtypes
from ckptsurgeon.checkpoint import TensorRef
from ckptsurgeon.errors import SurgeonError
from ckptsurgeon.report import Change
from ckptsurgeon.transforms import State, StepResult, Transform

if TYPE_CHECKING:
    import torch

STRATEGIES = ("timm", "mean", "rgb-first")
EXTRA_INITS = ("mean", "zero")


@dataclass(frozen=True)
class StemPlan:
    """What will happen to one stem weight, decided from its shape alone (no tensor is read)."""

    action: str  # "reshaped" | "unchanged" | "dropped"
    formula: str  # the math, e.g. "w'[:, c] = w[:, c % 3] * 3/4"
    note: str  # what it means, e.g. "repeat x2, keep 4, scale 3/4, as timm"
    old_shape: tuple[int, ...]
    new_shape: tuple[int, ...] | None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def validate_options(in_chans: Any, strategy: str = "timm", base_chans: Any = 3, extra_init: str = "mean") -> None:
    """Check option values before any tensor is read; raise SurgeonError naming the bad one."""
    if not _is_int(in_chans) or in_chans <= 0:
        raise SurgeonError(f"--in-chans must be a positive integer, got {in_chans!r}")
    if strategy not in STRATEGIES:
        raise SurgeonError(f"unknown --strategy {strategy!r}", hint="choose one of " + ", ".join(STRATEGIES))
    if not _is_int(base_chans) or base_chans <= 0:
        raise SurgeonError(f"--base-chans must be a positive integer, got {base_chans!r}")
    if extra_init not in EXTRA_INITS:
        raise SurgeonError(f"unknown --extra-init {extra_init!r}", hint="choose one of " + ", ".join(EXTRA_INITS))
    if strategy == "rgb-first" and in_chans < base_chans:
        raise SurgeonError(
            f"--strategy rgb-first keeps the {base_chans} source channels and adds new ones, "
            f"so it needs --in-chans >= {base_chans}, got {in_chans}",
            hint="use --strategy timm or --strategy mean for fewer channels",
        )


def plan_stem(
    name: str,
    shape: Sequence[int],
    in_chans: int,
    *,
    strategy: str = "timm",
    base_chans: int = 3,
    extra_init: str = "mean",
    allow_drop: bool = False,
    kind: str = "conv",
) -> StemPlan:
    """Decide how the stem weight ``name`` of ``shape`` becomes one for ``in_chans`` channels.

    Raises:
        SurgeonError: the weight is not 4-D (2-D for ``kind="linear"``), its input dimension does not
            fit ``base_chans``, or the strategy cannot adapt it (and ``allow_drop`` is off).

    Example:
        >>> plan_stem("conv1.weight", (16, 3, 7, 7), 1).formula
        "w'[:, 0] = sum_i w[:, i]"
    """
    shape = tuple(int(d) for d in shape)
    if kind == "linear":  # [D, p*p*B], channel fastest: groups of B, like a space-to-depth stem
        if len(shape) != 2:
            raise SurgeonError(f"{name!r} has shape {list(shape)}: a linear patch embedding is 2-D [out, p*p*in]")
        what, unit = "linear patch embedding", "flattened patch pixels"
    elif len(shape) != 4:
        raise SurgeonError(f"{name!r} has shape {list(shape)}: a stem weight is 4-D [out, in, kh, kw]")
    else:
        what, unit = "space-to-depth stem", "space-to-depth"
    n_out, n_in = shape[:2]
    B, C = base_chans, in_chans
    if n_in == 0 or n_in % B:
        raise SurgeonError(
            f"stem {name!r} has {n_in} input channels, which is neither --base-chans {B} nor a multiple of it",
            hint=f"pass --base-chans {n_in} if it was trained on {n_in}-channel input",
        )
    k = n_in // B
    new_shape = (n_out, k * C, *shape[2:])
    if C == B:
        return StemPlan("unchanged", "-", f"already takes {B}-channel input: nothing to change", shape, shape)
    groups = f"within each of the {k} groups of {B} ({unit})" if k > 1 else ""
    if strategy == "timm":
        if C == 1:
            if k > 1:
                formula, note = f"w'[:, g] = sum_i w[:, {B}g+i]", f"sum {groups}, as timm"
            else:
                formula, note = "w'[:, 0] = sum_i w[:, i]", f"sum of the {B} channels, as timm"
            return StemPlan("reshaped", formula, note, shape, new_shape)
        if k > 1:
            why = f"timm cannot adapt a {what} ({n_in} = {k}x{B} input channels) to {C} channels"
            if allow_drop:
                return StemPlan("dropped", "-", f"{why}; dropped (--allow-drop): the model initialises it", shape, None)
            can = "mean" + (" or --strategy rgb-first" if C > B else "")
            hint = f"--strategy {can} can; --allow-drop drops it as timm does"
            raise SurgeonError(f"{why} (stem {name!r})", hint=hint)
        note = f"repeat x{math.ceil(C / B)}, keep {C}, scale by {B}/{C}, as timm"
        return StemPlan("reshaped", f"w'[:, c] = w[:, c % {B}] * {B}/{C}", note, shape, new_shape)
    if strategy == "mean":
        note = f"channel mean x {B}/{C}: the response to a constant image is kept" + (f"; {groups}" if groups else "")
        return StemPlan("reshaped", f"w'[:, c] = sum_i w[:, i] / {C}", note, shape, new_shape)
    # rgb-first (validate_options refused C < B)
    extra = f"sum_i w[:, i] / {B}" if extra_init == "mean" else "0"
    why = "channel mean" if extra_init == "mean" else "zeros"
    new = "1 new channel starts" if C - B == 1 else f"{C - B} new channels start"
    note = f"the {B} pretrained channels unchanged, {new} as {why}" + (f"; {groups}" if groups else "")
    return StemPlan("reshaped", f"w'[:, :{B}] = w; w'[:, {B}:{C}] = {extra}", note, shape, new_shape)


def adapt_input_conv(
    in_chans: int,
    weight: torch.Tensor,
    *,
    strategy: str = "timm",
    base_chans: int = 3,
    extra_init: str = "mean",
) -> torch.Tensor:
    """Return the stem ``weight`` adapted to ``in_chans`` input channels, in its own dtype.

    Computes in float32 and casts back, as timm does; with ``strategy="timm"`` and ``base_chans=3``
    the result is bit-identical to ``timm.models.adapt_input_conv(in_chans, weight)``.

    Args:
        in_chans: the new number of input channels C.
        weight: ``[O, I, kh, kw]`` trained on ``base_chans`` channels (I = k·base_chans: space-to-depth),
            or a linear patch embedding ``[D, p·p·base_chans]``.
        strategy: "timm", "mean" or "rgb-first" (formulas in the module docstring).
        base_chans: the channel count B the weight was trained on.
        extra_init: "rgb-first" only: the channels beyond B start as the channel "mean" or "zero".

    Returns:
        A new contiguous tensor ``[O, k·C, kh, kw]`` (``weight`` itself when C == B).

    Raises:
        SurgeonError: a bad option, or a weight the strategy cannot adapt (see ``plan_stem``).

    Example:
        >>> adapt_input_conv(1, torch.ones(8, 3, 3, 3)).shape
        torch.Size([8, 1, 3, 3])
    """
    validate_options(in_chans, strategy, base_chans, extra_init)
    kind = "linear" if weight.dim() == 2 else "conv"
    plan = plan_stem("weight", tuple(weight.shape), in_chans, strategy=strategy, base_chans=base_chans,
                     extra_init=extra_init, kind=kind)  # fmt: skip
    if plan.action == "unchanged":
        return weight
    return _compute(weight, in_chans, strategy, base_chans, extra_init)


def _compute(weight: torch.Tensor, C: int, strategy: str, B: int, extra_init: str) -> torch.Tensor:
    import torch

    if weight.dim() == 2:  # linear patch embedding [D, p*p*B]: the same numbers as a [D, p*p*B, 1, 1] conv
        return _compute(weight[:, :, None, None], C, strategy, B, extra_init).flatten(1)
    stored = weight.dtype
    w = weight.float()
    O, I, J, K = w.shape  # noqa: E741 - timm's names
    k = I // B
    if strategy == "timm":
        # timm's exact sequence of float32 ops (adapt_input_conv), with B in place of 3
        if C == 1:
            w = w.reshape(O, I // B, B, J, K).sum(dim=2, keepdim=False) if I > B else w.sum(dim=1, keepdim=True)
        else:
            w = w.repeat(1, int(math.ceil(C / B)), 1, 1)[:, :C, :, :]
            w *= B / float(C)
    elif strategy == "mean":
        s = w.sum(dim=1, keepdim=True) if k == 1 else w.reshape(O, k, B, J, K).sum(dim=2)
        w = (s / C).repeat_interleave(C, dim=1)
    else:  # rgb-first
        g = w.reshape(O, k, B, J, K)
        if extra_init == "mean":
            extra = (g.sum(dim=2, keepdim=True) / B).expand(O, k, C - B, J, K)
        else:
            extra = torch.zeros(O, k, C - B, J, K, dtype=w.dtype)
        w = torch.cat([g, extra], dim=2).reshape(O, k * C, J, K)
    return w.to(stored).contiguous()


@dataclass
class AdaptStem(Transform):
    """Fit the stem(s) of an RGB checkpoint to ``in_chans`` input channels.

    Stems are found from names and shapes (``ckptsurgeon.detect.find_stems``) unless ``convs`` names
    them. Only stem weights change; their biases and every other tensor stay as they are.

    Example:
        >>> Pipeline([AdaptStem(1)]).run("resnet.safetensors", "resnet_gray.safetensors")
        >>> Pipeline([AdaptStem(4, strategy="rgb-first", extra_init="zero")]).run("vit.pth", "vit_rgbd.pth")
    """

    in_chans: int
    strategy: str = "timm"
    base_chans: int = 3
    convs: Sequence[str] | None = None
    allow_drop: bool = False
    extra_init: str = "mean"
    op = "adapt-stem"

    def __post_init__(self) -> None:
        validate_options(self.in_chans, self.strategy, self.base_chans, self.extra_init)
        if isinstance(self.convs, str):
            self.convs = [self.convs]
        self.convs = list(self.convs) if self.convs else None

    def params(self) -> dict[str, Any]:
        return {
            "in_chans": self.in_chans,
            "strategy": self.strategy,
            "base_chans": self.base_chans,
            "convs": list(self.convs) if self.convs else None,
            "allow_drop": self.allow_drop,
            "extra_init": self.extra_init,
        }

    def apply(self, state: State) -> StepResult:
        from ckptsurgeon.detect import find_stems

        shapes = {n: r.shape for n, r in state.tensors.items()}
        stems = find_stems(shapes, base_chans=self.base_chans, names=self.convs)
        plans = []
        for stem in stems:  # decide everything from shapes first: a refusal reads no tensor
            ref = state.tensors[stem.weight]
            if stem.kind == "linear" and getattr(stem, "layout", "hwc") not in ("hwc", None):
                raise SurgeonError(
                    f"stem {stem.weight!r} is a linear patch embedding whose channel order is "
                    f"{stem.layout!r}, not channel-fastest: it cannot be adapted safely"
                )
            if not dtypes.get(ref.dtype).is_floating:
                raise SurgeonError(f"stem {stem.weight!r} is {ref.dtype}: only floating-point weights can be adapted")
            plans.append(
                plan_stem(
                    stem.weight,
                    ref.shape,
                    self.in_chans,
                    strategy=self.strategy,
                    base_chans=self.base_chans,
                    extra_init=self.extra_init,
                    allow_drop=self.allow_drop,
                    kind=stem.kind,
                )
            )

        tensors = dict(state.tensors)
        changes: list[Change] = []
        lines: list[str] = []
        facts: list[dict[str, Any]] = []
        for stem, plan in zip(stems, plans):
            ref = state.tensors[stem.weight]
            old, new = _shape(plan.old_shape), _shape(plan.new_shape)
            lines.append(f"stem {stem.weight} {old} {ref.dtype}: {stem.reason}")
            if plan.action == "reshaped":
                t = _compute(ref.load(), self.in_chans, self.strategy, self.base_chans, self.extra_init)
                tensors[stem.weight] = TensorRef.from_tensor(stem.weight, t)
                changes.append(Change("reshaped", stem.weight, detail=f"{self.strategy}: {plan.formula}"))
                lines.append(f"  {self.strategy}: {plan.formula}  ({plan.note}); {old} → {new}")
            elif plan.action == "dropped":
                del tensors[stem.weight]
                changes.append(Change("dropped", stem.weight, detail=f"{self.strategy}: cannot adapt; --allow-drop"))
                lines.append(f"  {plan.note}")
            else:
                lines.append(f"  {plan.note}")
            if stem.bias and plan.action != "unchanged":
                lines.append(f"  bias {stem.bias} unchanged")
            facts.append(
                {
                    "weight": stem.weight,
                    "bias": stem.bias,
                    "reason": stem.reason,
                    "action": plan.action,
                    "strategy": self.strategy,
                    "formula": plan.formula,
                    "note": plan.note,
                    "old_shape": list(plan.old_shape),
                    "new_shape": list(plan.new_shape) if plan.new_shape else None,
                    "dtype": ref.dtype,
                }
            )
        result = StepResult(State(tensors, dict(state.metadata)), changes, lines)
        result.facts = {"in_chans": self.in_chans, "base_chans": self.base_chans, "stems": facts}
        return result


def _shape(shape: Sequence[int] | None) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]" if shape is not None else "-"
