"""Adapt a classifier head to a new class count: drop it (as timm does), re-initialise, extend or pick rows.

The reference is timm's ``load_pretrained``: with ``mode="drop"`` a head whose class count differs
from ``num_classes`` is removed and the model's own init fills it (load with ``strict=False``), a
head with exactly one extra row loses row 0 (the background class of old TF weights), and every
other tensor stays bit for bit. The other modes write head tensors of the new shape, so the output
loads with ``strict=True``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ckptsurgeon import dtypes
from ckptsurgeon.checkpoint import TensorRef
from ckptsurgeon.errors import SurgeonError
from ckptsurgeon.report import Change
from ckptsurgeon.transforms import State, StepResult, Transform

if TYPE_CHECKING:
    import torch

    from ckptsurgeon.detect import Head

MODES = ("drop", "reinit", "extend")
INITS = ("torch-default", "zeros", "normal", "trunc-normal")
DEFAULT_STD = {"normal": 0.01, "trunc-normal": 0.02}
CLASS_NAMES_KEY = "class_names"

Rows = list  # output row i comes from old row rows[i], or is new when rows[i] is None
_INDEX = re.compile(r"[0-9]+")


def parse_class_spec(spec: str) -> list[int]:
    """Parse an inline ``--keep-classes`` spec: indices and inclusive ranges, in the given order.

    Example:
        >>> parse_class_spec("0,5,10-12")
        [0, 5, 10, 11, 12]

    Raises:
        SurgeonError: an item that is not an index or a forward range.
    """
    out: list[int] = []
    for item in spec.split(","):
        item = item.strip()
        lo, sep, hi = (part.strip() for part in item.partition("-"))
        if not _INDEX.fullmatch(lo) or (sep and not _INDEX.fullmatch(hi)):
            raise SurgeonError(
                f"--keep-classes: {item!r} is not an index or a range",
                hint="use indices and ranges like 0,5,10-19, or @FILE with one index per line",
            )
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise SurgeonError(
                f"--keep-classes: range {item!r} is backwards", hint=f"write {b}-{a}, or list the indices"
            )
        out.extend(range(a, b + 1))
    return out


def parse_class_file(text: str, source: str = "file") -> tuple[list[int], list[str] | None]:
    """Parse a ``--keep-classes @FILE`` body: one index per line, optionally followed by a class name.

    Blank lines and lines starting with ``#`` are skipped. Names are all-or-none.

    Example:
        >>> parse_class_file("3 goldfish\\n7 cock\\n")
        ([3, 7], ['goldfish', 'cock'])
    """
    indices: list[int] = []
    names: list[str | None] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        first, *rest = line.split(None, 1)
        if not _INDEX.fullmatch(first):
            raise SurgeonError(f"line {lineno}: {first!r} is not a class index", path=source)
        indices.append(int(first))
        names.append(rest[0].strip() if rest else None)
    if not indices:
        raise SurgeonError("no class indices in the file", path=source, hint="one index per line, optionally a name")
    named = [n is not None for n in names]
    if any(named) and not all(named):
        lineno = named.index(False) + 1
        raise SurgeonError(
            f"class {indices[lineno - 1]} has no name but others do", path=source, hint="name every class or none"
        )
    return indices, ([n for n in names if n is not None] if all(named) else None)


class AdaptHead(Transform):
    """Give every classifier head ``num_classes`` outputs (timm's ``load_pretrained`` rule by default).

    Args:
        num_classes: the new class count; with ``keep_classes`` it defaults to the number kept.
        mode: ``drop`` (remove mismatched heads, timm parity), ``reinit`` (new tensors of the right
            shape) or ``extend`` (keep every row, append new ones up to ``num_classes``).
        heads: layer prefixes (``fc``, ``head_dist``) to adapt instead of detecting them.
        label_offset: keep rows ``K:K+N`` (drop), skip the first K rows (extend), or shift
            ``keep_classes`` indices by K. Unset: in drop mode, a head with exactly N+1 rows loses row 0.
        keep_classes: pretrained rows to keep, in this order (indices shifted by ``label_offset``).
        class_names: names of ``keep_classes``, stored in the output metadata as ``class_names``.
        init, std, seed: how new rows are made: ``torch-default`` (as ``nn.Linear``/``nn.Conv2d``),
            ``zeros``, ``normal`` (std 0.01) or ``trunc-normal`` (std 0.02, cut at ±2 std); biases
            of new rows are zero except with ``torch-default``. Computed in float32, cast to the
            head's dtype; the same seed gives the same bits, each head its own stream.

    Example:
        >>> Pipeline([AdaptHead(7)]).run("resnet.safetensors", "resnet7.safetensors")
        >>> Pipeline([AdaptHead(mode="reinit", num_classes=7, seed=1)]).state_dict("vit.pth")
        >>> Pipeline([AdaptHead(keep_classes=[0, 5, 9], class_names=["a", "b", "c"])]).run(src, dst)
    """

    op = "adapt-head"

    def __init__(
        self,
        num_classes: int | None = None,
        *,
        mode: str = "drop",
        heads: Sequence[str] | None = None,
        label_offset: int | None = None,
        keep_classes: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        init: str = "torch-default",
        std: float | None = None,
        seed: int = 0,
    ):
        self.num_classes = num_classes
        self.mode = mode
        self.heads = list(heads) if heads else None
        self.label_offset = label_offset
        self.keep_classes = list(keep_classes) if keep_classes is not None else None
        self.class_names = list(class_names) if class_names is not None else None
        self.init = init
        self.std = std
        self.seed = seed
        self._validate()

    def params(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "mode": self.mode,
            "heads": self.heads,
            "label_offset": self.label_offset,
            "keep_classes": self.keep_classes,
            "class_names": self.class_names,
            "init": self.init,
            "std": self.std,
            "seed": self.seed,
        }

    def _validate(self) -> None:
        """Reject bad options before any tensor is read."""

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        n, keep = self.num_classes, self.keep_classes
        if self.mode not in MODES:
            raise SurgeonError(f"unknown mode {self.mode!r}", hint="choose drop, reinit or extend")
        if self.init not in INITS:
            raise SurgeonError(f"unknown init {self.init!r}", hint="choose " + ", ".join(INITS))
        if n is None and keep is None:
            raise SurgeonError("the new class count is missing", hint="pass --num-classes N (or --keep-classes)")
        if n is not None and (not is_int(n) or n <= 0):
            raise SurgeonError(f"--num-classes must be a positive integer, not {n!r}")
        if self.label_offset is not None and (not is_int(self.label_offset) or self.label_offset < 0):
            raise SurgeonError(f"--label-offset must be an integer >= 0, not {self.label_offset!r}")
        if self.label_offset is not None and self.mode == "reinit":
            raise SurgeonError("--label-offset has no effect with --mode reinit: no pretrained row is kept")
        if self.std is not None:
            if self.init not in DEFAULT_STD:
                raise SurgeonError(f"--std applies to --init normal and trunc-normal, not {self.init!r}")
            if not isinstance(self.std, (int, float)) or not math.isfinite(self.std) or self.std <= 0:
                raise SurgeonError(f"--std must be a positive number, not {self.std!r}")
        if not is_int(self.seed) or not 0 <= self.seed < 2**63:
            raise SurgeonError(f"--seed must be an integer in [0, 2**63), not {self.seed!r}")
        if self.heads is not None and (not all(isinstance(h, str) and h for h in self.heads)):
            raise SurgeonError("--head needs a layer prefix such as 'fc' or 'head_dist'")
        if self.class_names is not None and keep is None:
            raise SurgeonError("class names come with --keep-classes", hint="name the rows you keep in its @FILE")
        if keep is None:
            return
        if self.mode == "reinit":
            raise SurgeonError("--keep-classes keeps pretrained rows; --mode reinit replaces them all")
        if not keep:
            raise SurgeonError("--keep-classes is empty")
        bad = [k for k in keep if not is_int(k) or k < 0]
        if bad:
            raise SurgeonError(f"--keep-classes: {bad[0]!r} is not a class index")
        seen: set[int] = set()
        for k in keep:
            if k in seen:
                raise SurgeonError(f"--keep-classes: class {k} is given twice", hint="each class may be kept once")
            seen.add(k)
        if self.class_names is not None and len(self.class_names) != len(keep):
            raise SurgeonError(f"{len(self.class_names)} class names for {len(keep)} kept classes")
        if n is not None and self.mode == "drop" and n != len(keep):
            raise SurgeonError(
                f"--num-classes {n} but --keep-classes keeps {len(keep)}",
                hint="drop --num-classes, or use --mode extend to add new rows after the kept ones",
            )
        if n is not None and self.mode == "extend" and n < len(keep):
            raise SurgeonError(f"--mode extend to {n} classes, but --keep-classes keeps {len(keep)}")

    # -- planning ---------------------------------------------------------------------------------

    def _plan(self, count: int) -> tuple[Rows | None, str]:
        """Which old row each new row comes from (None: new row; whole result None: head removed)."""
        k = self.label_offset or 0
        keep = self.keep_classes
        if keep is not None:
            for c in keep:
                if k + c >= count:
                    shift = f" (row {k + c} with --label-offset {k})" if k else ""
                    raise SurgeonError(
                        f"--keep-classes: class {c}{shift} is out of range: the head has {count} rows",
                        hint=f"valid classes are 0-{count - k - 1}",
                    )
            n = self.num_classes or len(keep)
            rows: Rows = [k + c for c in keep] + [None] * (n - len(keep))
            return rows, "--keep-classes"
        n = self.num_classes
        assert n is not None
        if self.mode == "reinit":
            return [None] * n, "reinit"
        if self.mode == "extend":
            old = list(range(k, count))
            if n < len(old):
                raise SurgeonError(
                    f"--mode extend keeps all {len(old)} pretrained classes and cannot make {n}",
                    hint="use --mode drop or --keep-classes to shrink a head",
                )
            return old + [None] * (n - len(old)), "extend"
        if self.label_offset is not None:
            if k + n > count:
                raise SurgeonError(
                    f"--label-offset {k} with --num-classes {n} needs rows {k}:{k + n}, but the head has {count}",
                    hint=f"at most {count - k} classes fit after offset {k}",
                )
            return list(range(k, k + n)), "label-offset"
        if n == count:
            return list(range(count)), "same"
        if n == count - 1:
            return list(range(1, count)), "background"
        return None, "drop"

    def _describe(self, rows: Rows | None, why: str, count: int) -> str:
        if rows is None:
            return "removed; the model's own init fills it (load with strict=False)"
        old = [r for r in rows if r is not None]
        new = len(rows) - len(old)
        init = self.init + (f" std {self.std_value}" if self.init in DEFAULT_STD else "")
        init += f", seed {self.seed}" if self.init != "zeros" else ""
        if not old:
            return f"all {new} rows new ({init})"
        if why == "background":
            text = f"rows 1:{count} (background row 0 removed; --label-offset 0 keeps rows 0:{count - 1} instead)"
        elif why == "--keep-classes":
            text = f"rows {_compress(old)} kept (--keep-classes)"
        elif old == list(range(count)):
            text = f"all {count} pretrained rows kept"
        else:
            text = (
                f"rows {old[0]}:{old[-1] + 1}" if old == list(range(old[0], old[-1] + 1)) else f"rows {_compress(old)}"
            )
            text += " kept" + (f" (--label-offset {self.label_offset})" if self.label_offset else "")
        if new:
            text += f" + {new} new rows ({init})"
        return text

    @property
    def std_value(self) -> float:
        return self.std if self.std is not None else DEFAULT_STD.get(self.init, 0.0)

    # -- apply ------------------------------------------------------------------------------------

    def apply(self, state: State) -> StepResult:
        from ckptsurgeon.detect import find_heads

        # find_heads refuses heads that disagree on the class count, and lists the candidates
        found = find_heads({n: r.shape for n, r in state.tensors.items()}, names=self.heads)
        count = found[0].num_classes
        rows, why = self._plan(count)
        unchanged = rows == list(range(count))
        new_n = len(rows) if rows is not None else self.num_classes
        mode = "keep-classes" if self.keep_classes is not None and self.mode == "drop" else self.mode
        how = self._describe(rows, why, count)

        tensors = dict(state.tensors)
        changes: list[Change] = []
        lines: list[str] = []
        facts_heads = []
        for head in found:
            kind = head.kind
            wshape = list(state.tensors[head.weight].shape)
            lines.append(f"found {head.prefix} ({kind}, weight {wshape}): {head.reason}")
            if unchanged:
                lines.append(f"{head.prefix}: nothing to change, it already has {count} classes")
            else:
                lines.append(f"{head.prefix}: {count} → {new_n} classes, mode {mode}: {how}")
                changes += self._edit(head, rows, tensors, how)
            facts_heads.append(
                {
                    "prefix": head.prefix,
                    "kind": kind,
                    "role": getattr(head, "role", "main"),
                    "weight": head.weight,
                    "bias": head.bias,
                    "reason": head.reason,
                    "old_classes": count,
                    "new_classes": new_n,
                    "mode": mode,
                    "rows": "unchanged" if unchanged else how,
                    "source_rows": rows,
                }
            )
        metadata = dict(state.metadata)
        names_line = None if unchanged else self._names(metadata, rows, count)
        if names_line:
            lines.append(names_line)
        facts: dict[str, Any] = {
            "num_classes": new_n,
            "mode": mode,
            "changed": not unchanged,
            "heads": facts_heads,
        }
        if metadata.get(CLASS_NAMES_KEY) != state.metadata.get(CLASS_NAMES_KEY):
            facts["class_names"] = json.loads(metadata[CLASS_NAMES_KEY]) if CLASS_NAMES_KEY in metadata else None
        return StepResult(State(tensors, metadata), changes, lines, facts)

    def _edit(self, head: Head, rows: Rows | None, tensors: dict[str, TensorRef], how: str) -> list[Change]:
        """Replace (or remove) one head's weight and bias in ``tensors``; return the Changes."""
        names = [n for n in (head.weight, head.bias) if n is not None]
        if rows is None:
            for n in names:
                del tensors[n]
            return [Change("dropped", n, detail=f"head {head.prefix}: {how}") for n in names]
        import torch

        gen = torch.Generator().manual_seed(_stream_seed(self.seed, head.prefix))
        n_new = sum(r is None for r in rows)
        old_rows = [r for r in rows if r is not None]
        if rows[len(old_rows) :] != [None] * n_new:  # pragma: no cover - new rows always come last
            raise AssertionError("new rows must follow the kept ones")
        wref = tensors[head.weight]
        if n_new and not dtypes.get(wref.dtype).is_floating:
            raise SurgeonError(f"{head.weight} is {wref.dtype}: new rows need a floating-point head")
        new_w, new_b = self._new_rows(n_new, tuple(wref.shape[1:]), head.bias is not None, gen)
        changes = []
        for n, fresh in ((head.weight, new_w), (head.bias, new_b)):
            if n is None:
                continue
            ref = tensors[n]
            tdtype = dtypes.torch_dtype(ref.dtype)
            parts = []
            if old_rows:
                old = ref.load()
                parts.append(old.index_select(0, torch.tensor(old_rows, dtype=torch.long)))
            if n_new:
                parts.append(fresh.to(tdtype))
            out = torch.cat(parts).contiguous() if len(parts) > 1 else parts[0].contiguous().clone()
            tensors[n] = TensorRef.from_tensor(n, out)
            changes.append(Change("reshaped", n, detail=f"head {head.prefix}: {how}"))
        return changes

    def _new_rows(
        self, n: int, rest: tuple[int, ...], with_bias: bool, gen: torch.Generator
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``n`` new weight rows (and bias entries) in float32, drawn from ``gen`` (weight first)."""
        if not n:
            return None, None
        import torch
        from torch import nn

        w = torch.empty((n, *rest), dtype=torch.float32)
        b = torch.zeros(n, dtype=torch.float32) if with_bias else None
        if self.init == "torch-default":
            # What nn.Linear / nn.Conv2d.reset_parameters do: both bounds are 1/sqrt(fan_in).
            nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
            if b is not None:
                bound = 1 / math.sqrt(math.prod(rest)) if math.prod(rest) else 0.0
                nn.init.uniform_(b, -bound, bound, generator=gen)
        elif self.init == "zeros":
            w.zero_()
        elif self.init == "normal":
            nn.init.normal_(w, 0.0, self.std_value, generator=gen)
        else:
            s = self.std_value
            nn.init.trunc_normal_(w, 0.0, s, -2 * s, 2 * s, generator=gen)
        return w, b

    def _names(self, metadata: dict[str, str], rows: Rows | None, count: int) -> str | None:
        """Update ``class_names`` metadata: given names, or the source's carried through the rows."""
        if self.class_names is not None:
            assert rows is not None
            names = list(self.class_names) + [""] * (len(rows) - len(self.class_names))
            metadata[CLASS_NAMES_KEY] = json.dumps(names, ensure_ascii=False)
            return (
                f"{len(self.class_names)} class names go to the output metadata as {CLASS_NAMES_KEY!r}"
                " (.safetensors outputs only)"
            )
        if CLASS_NAMES_KEY not in metadata:
            return None
        try:
            old = json.loads(metadata[CLASS_NAMES_KEY])
        except ValueError:
            old = None
        if rows is None or not isinstance(old, list) or len(old) != count or all(r is None for r in rows):
            del metadata[CLASS_NAMES_KEY]
            return f"{CLASS_NAMES_KEY!r} metadata removed: it no longer matches the head"
        metadata[CLASS_NAMES_KEY] = json.dumps([old[r] if r is not None else "" for r in rows], ensure_ascii=False)
        return f"{CLASS_NAMES_KEY!r} metadata follows the kept rows"


def _stream_seed(seed: int, prefix: str) -> int:
    """A 63-bit seed per (seed, head): each head gets its own stream, the same on every run."""
    digest = hashlib.sha256(f"{seed}:{prefix}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _compress(idx: Sequence[int], limit: int = 12) -> str:
    """``[0, 1, 2, 5, 9, 10]`` → ``"0-2,5,9-10"`` (shortened past ``limit`` runs)."""
    runs: list[list[int]] = []
    for i in idx:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs]
    if len(parts) > limit:
        return ",".join(parts[:limit]) + f",… ({len(idx)} rows)"
    return ",".join(parts)
