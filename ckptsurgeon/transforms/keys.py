"""Key transforms: prefixes, regex renames, glob selection.

All of them edit names only: every tensor they keep stays the same TensorRef (byte-copied on
write, never decoded), and every name they change or drop is reported as renamed or dropped.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ckptsurgeon.errors import SurgeonError
from ckptsurgeon.report import Change
from ckptsurgeon.transforms import State, StepResult, Transform

RENAME_SEP = "=>"


def _q(text: str) -> str:
    """Quote a regex or rule as the user typed it (repr would double every backslash)."""
    return f"'{text}'"


def _rename_all(state: State, mapping: dict[str, str], detail: str) -> StepResult:
    """Apply ``old -> new`` renames, refusing collisions (naming both sources) and empty names."""
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    changes = []
    for name, ref in state.tensors.items():
        new = mapping.get(name, name)
        if not new:
            raise SurgeonError(f"{detail} leaves {name!r} with an empty name")
        if new in out:
            raise SurgeonError(f"{detail} gives two tensors the name {new!r}: {origin[new]!r} and {name!r}")
        out[new] = ref.renamed(new) if new != name else ref
        origin[new] = name
        if new != name:
            changes.append(Change("renamed", new, old_name=name, detail=detail))
    return StepResult(State(out, dict(state.metadata)), changes)


def _check_prefix(op: str, prefix: Any) -> str:
    if not isinstance(prefix, str) or not prefix:
        raise SurgeonError(f"{op} needs a non-empty prefix, got {prefix!r}")
    return prefix


def _globs(op: str, globs: str | Iterable[str]) -> tuple[str, ...]:
    """A glob or a list of them (a bare string is one glob, not a list of characters)."""
    items = (globs,) if isinstance(globs, str) else tuple(globs)
    if not items:
        raise SurgeonError(f"{op} needs at least one glob")
    for g in items:
        if not isinstance(g, str) or not g:
            raise SurgeonError(f"{op} globs must be non-empty strings, got {g!r}")
    return items


@dataclass
class StripPrefix(Transform):
    """Remove a leading ``prefix`` from every name that has it (``module.``, ``_orig_mod.``).

    Names without the prefix are kept as they are.

    Example:
        >>> Pipeline([StripPrefix("module.")]).run("ddp.pth", "plain.safetensors")
    """

    prefix: str
    op = "strip-prefix"

    def __post_init__(self) -> None:
        _check_prefix(self.op, self.prefix)

    def params(self) -> dict[str, Any]:
        return {"prefix": self.prefix}

    def apply(self, state: State) -> StepResult:
        mapping = {n: n[len(self.prefix) :] for n in state.tensors if n.startswith(self.prefix)}
        result = _rename_all(state, mapping, f"stripping {self.prefix!r}")
        for ch in result.changes:
            ch.detail = f"stripped {self.prefix!r}"
        result.lines.append(f"stripped {self.prefix!r} from {len(mapping)} of {len(state.tensors)} names")
        result.facts["renamed"] = len(mapping)
        return result


@dataclass
class AddPrefix(Transform):
    """Put ``prefix`` before every name (``backbone.`` to load weights into a bigger model).

    Example:
        >>> Pipeline([AddPrefix("backbone.")]).run("resnet.safetensors", "backbone.safetensors")
    """

    prefix: str
    op = "add-prefix"

    def __post_init__(self) -> None:
        _check_prefix(self.op, self.prefix)

    def params(self) -> dict[str, Any]:
        return {"prefix": self.prefix}

    def apply(self, state: State) -> StepResult:
        mapping = {n: self.prefix + n for n in state.tensors}
        result = _rename_all(state, mapping, f"adding {self.prefix!r}")
        for ch in result.changes:
            ch.detail = f"added prefix {self.prefix!r}"
        result.lines.append(f"added {self.prefix!r} to {len(mapping)} names")
        result.facts["renamed"] = len(mapping)
        return result


_GROUP_REF = re.compile(r"\\g<([^>]*)>|\\(\d{1,2})")


@dataclass
class Rename(Transform):
    """Rewrite names with a regular expression: ``re.sub(pattern, replacement, name)`` (Python ``re`` syntax).

    Every occurrence in a name is replaced; anchor with ``^``/``$`` to touch only the start or end.
    Two names becoming one is an error naming both.

    Example:
        >>> Rename(r"^encoder\\.", "backbone.")            # encoder.x → backbone.x
        >>> Rename(r"\\.gamma$", ".weight")                 # ln.gamma → ln.weight
        >>> Rename.parse(r"blocks\\.(\\d+)\\.=>layers.\\1.")    # the CLI's 'REGEX=>REPLACEMENT' form
    """

    pattern: str
    replacement: str
    op = "rename"
    _regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise SurgeonError(f"rename needs a non-empty pattern, got {self.pattern!r}")
        if not isinstance(self.replacement, str):
            raise SurgeonError(f"rename replacement must be a string, got {self.replacement!r}")
        try:
            self._regex = re.compile(self.pattern)
        except re.error as e:
            raise SurgeonError(f"rename pattern {_q(self.pattern)} is not a valid regular expression: {e}") from None
        # Group references are only resolved on a match; check them now so a bad rule fails early.
        for m in _GROUP_REF.finditer(self.replacement):
            ref = m.group(1) if m.group(1) is not None else m.group(2)
            ok = (ref.isdigit() and int(ref) <= self._regex.groups) or ref in self._regex.groupindex
            if not ok:
                raise SurgeonError(
                    f"rename replacement {_q(self.replacement)} refers to group {ref!r}, "
                    f"which {_q(self.pattern)} does not have"
                )

    @classmethod
    def parse(cls, rule: str) -> Rename:
        """Build from the command line's ``'REGEX=>REPLACEMENT'`` (split at the first ``=>``)."""
        if RENAME_SEP not in rule:
            raise SurgeonError(
                f"--rename {_q(rule)} has no {RENAME_SEP!r}",
                hint="write it as 'REGEX=>REPLACEMENT', e.g. '^encoder\\.=>'",
            )
        pattern, replacement = rule.split(RENAME_SEP, 1)
        return cls(pattern, replacement)

    def params(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "replacement": self.replacement}

    def apply(self, state: State) -> StepResult:
        rule = f"{self.pattern}{RENAME_SEP}{self.replacement}"
        mapping = {}
        for name in state.tensors:
            try:
                new = self._regex.sub(self.replacement, name)
            except re.error as e:
                raise SurgeonError(f"rename {_q(rule)} cannot rewrite {name!r}: {e}") from None
            if new != name:
                mapping[name] = new
        result = _rename_all(state, mapping, f"rename {_q(rule)}")
        if mapping:
            result.lines.append(f"renamed {len(mapping)} of {len(state.tensors)} names with {_q(rule)}")
        else:
            result.lines.append(f"note: {_q(rule)} matched no name; nothing renamed")
            result.facts["unmatched"] = [self.pattern]
        result.facts["renamed"] = len(mapping)
        return result


def _match(globs: Sequence[str], name: str) -> str | None:
    """The first glob matching ``name`` (case-sensitive; ``*`` also matches dots), or None."""
    return next((g for g in globs if fnmatch.fnmatchcase(name, g)), None)


def _drop(state: State, keep: dict[str, bool], why: dict[str, str], op: str) -> StepResult:
    if not any(keep.values()):
        raise SurgeonError(f"{op} would leave no tensors", hint="check the globs; inspect --filter GLOB shows matches")
    tensors = {n: r for n, r in state.tensors.items() if keep[n]}
    changes = [Change("dropped", n, detail=why[n]) for n in state.tensors if not keep[n]]
    return StepResult(State(tensors, dict(state.metadata)), changes)


@dataclass(init=False)
class Select(Transform):
    """Keep only the tensors whose name matches one of ``globs`` (fnmatch, case-sensitive); drop the rest.

    Example:
        >>> Pipeline([Select(["blocks.*", "norm.*"])]).run("vit.safetensors", "trunk.safetensors")
    """

    globs: tuple[str, ...]
    op = "select"

    def __init__(self, globs: str | Sequence[str]):
        self.globs = _globs(self.op, globs)

    def params(self) -> dict[str, Any]:
        return {"globs": list(self.globs)}

    def apply(self, state: State) -> StepResult:
        keep = {n: _match(self.globs, n) is not None for n in state.tensors}
        shown = ", ".join(repr(g) for g in self.globs)
        why = {n: f"matches no select glob ({shown})" for n in state.tensors}
        result = _drop(state, keep, why, f"select {shown}")
        result.lines.append(f"kept {len(result.state.tensors)} of {len(state.tensors)} tensors matching {shown}")
        _note_unmatched(result, self.globs, state.tensors)
        result.facts["dropped"] = len(result.changes)
        return result


@dataclass(init=False)
class Drop(Transform):
    """Drop the tensors whose name matches one of ``globs`` (fnmatch, case-sensitive).

    Example:
        >>> Pipeline([Drop(["head.*", "*.num_batches_tracked"])]).run("vit.pth", "trunk.safetensors")
    """

    globs: tuple[str, ...]
    op = "drop"

    def __init__(self, globs: str | Sequence[str]):
        self.globs = _globs(self.op, globs)

    def params(self) -> dict[str, Any]:
        return {"globs": list(self.globs)}

    def apply(self, state: State) -> StepResult:
        hit = {n: _match(self.globs, n) for n in state.tensors}
        keep = {n: g is None for n, g in hit.items()}
        why = {n: f"matched drop {g!r}" for n, g in hit.items() if g is not None}
        shown = ", ".join(repr(g) for g in self.globs)
        result = _drop(state, keep, why, f"drop {shown}")
        result.lines.append(f"dropped {len(result.changes)} of {len(state.tensors)} tensors matching {shown}")
        _note_unmatched(result, self.globs, state.tensors)
        result.facts["dropped"] = len(result.changes)
        return result


def _note_unmatched(result: StepResult, globs: Sequence[str], names: Iterable[str]) -> None:
    """A glob that matches nothing is likely a typo, but not an error: say so in the step's summary."""
    names = list(names)
    unmatched = [g for g in globs if not any(fnmatch.fnmatchcase(n, g) for n in names)]
    if unmatched:
        result.lines.append(f"note: {', '.join(repr(g) for g in unmatched)} matched no name")
        result.facts["unmatched"] = unmatched
