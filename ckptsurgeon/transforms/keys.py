"""Key transforms: prefixes, renames, selection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ckptsurgeon.errors import SurgeonError
from ckptsurgeon.report import Change
from ckptsurgeon.transforms import State, StepResult, Transform


def _rename_all(state: State, mapping: dict[str, str], detail: str) -> StepResult:
    """Apply ``old -> new`` renames, refusing collisions (naming both sources)."""
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    changes = []
    for name, ref in state.tensors.items():
        new = mapping.get(name, name)
        if new in out:
            raise SurgeonError(f"renaming makes two tensors one name {new!r}: {origin[new]!r} and {name!r}")
        out[new] = ref.renamed(new) if new != name else ref
        origin[new] = name
        if new != name:
            changes.append(Change("renamed", new, old_name=name, detail=detail))
    return StepResult(State(out, dict(state.metadata)), changes)


@dataclass
class StripPrefix(Transform):
    """Remove a leading ``prefix`` from every name that has it (``module.``, ``_orig_mod.``).

    Example:
        >>> Pipeline([StripPrefix("module.")]).run("ddp.pth", "plain.safetensors")
    """

    prefix: str
    op = "strip-prefix"

    def params(self) -> dict[str, Any]:
        return {"prefix": self.prefix}

    def apply(self, state: State) -> StepResult:
        if not self.prefix:
            raise SurgeonError("--strip-prefix needs a non-empty prefix")
        mapping = {n: n[len(self.prefix) :] for n in state.tensors if n.startswith(self.prefix)}
        result = _rename_all(state, mapping, f"stripped {self.prefix!r}")
        result.lines.append(f"stripped {self.prefix!r} from {len(mapping)} of {len(state.tensors)} names")
        result.facts["renamed"] = len(mapping)
        return result
