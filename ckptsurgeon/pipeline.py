"""Run transforms in order over a lazily opened checkpoint, then write once, atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ckptsurgeon.checkpoint import Checkpoint, TensorRef, tied_groups
from ckptsurgeon.errors import SurgeonError
from ckptsurgeon.report import Entry, Report, StepSummary, TensorInfo
from ckptsurgeon.transforms import State, StepResult, Transform

if TYPE_CHECKING:
    import torch

SHARED_NOTE = "tensors sharing one storage"
_HEADLINE = ("dropped", "added", "reshaped", "cast", "renamed")


def _info(ref: TensorRef) -> TensorInfo:
    return TensorInfo(tuple(ref.shape), ref.dtype)


class Pipeline:
    """An ordered list of transforms, run over one checkpoint and written once.

    Example:
        >>> from ckptsurgeon import Pipeline, StripPrefix
        >>> report = Pipeline([StripPrefix("module.")]).run("ddp.pth", "plain.safetensors")
        >>> report.counts()["renamed"]
        62
    """

    def __init__(self, steps: Sequence[Transform] = ()):
        self.steps = list(steps)

    def apply(self, ckpt: Checkpoint) -> tuple[State, Report]:
        """Run every step over ``ckpt`` in memory-light form; nothing is written."""
        state = State(dict(ckpt.tensors), dict(ckpt.metadata))
        report = Report(
            source=ckpt.path,
            source_format=ckpt.format,
            container=_container_json(ckpt),
            notes=list(ckpt.notes),
            params_before=ckpt.num_params,
        )
        origin: dict[str, str | None] = {n: n for n in state.tensors}
        history: dict[str, list[str]] = {n: [] for n in state.tensors}
        details: dict[str, list[str]] = {n: [] for n in state.tensors}
        added: dict[str, list[str]] = {}
        versions = ckpt.module_versions
        for step in self.steps:
            result = step.apply(state)
            _track(result, origin, history, details, added)
            versions = _remap_versions(versions, result.changes)
            report.steps.append(StepSummary(step.op, step.params(), result.lines, result.facts))
            state = result.state
        if not any(s.op == "strip-prefix" for s in self.steps):
            names = list(state.tensors)
            for prefix in ("module.", "_orig_mod."):
                if names and all(n.startswith(prefix) for n in names):
                    report.notes.append(f"every name starts with {prefix!r}: --strip-prefix {prefix} removes it")
        for group in tied_groups(state.tensors):
            report.notes.append(f"{SHARED_NOTE}: {', '.join(group)}")

        final_of = {src: cur for cur, src in origin.items() if src is not None}
        for name, ref in ckpt.tensors.items():
            before = _info(ref)
            acts = history[name]
            if name not in final_of:
                report.entries.append(Entry(name, "dropped", acts, name, before, None, "; ".join(details[name])))
                continue
            cur = final_of[name]
            headline = next((a for a in _HEADLINE if a in acts), "kept")
            after = _info(state.tensors[cur])
            report.entries.append(Entry(cur, headline, acts or ["kept"], name, before, after, "; ".join(details[name])))
        for name, acts in added.items():
            if name in state.tensors:
                detail = "; ".join(details.get(name, []))
                report.entries.append(Entry(name, "added", acts, None, None, _info(state.tensors[name]), detail))
        state.module_versions = versions
        report.params_after = sum(r.numel for r in state.tensors.values())
        report.metadata_out = dict(state.metadata)
        return state, report

    def run(
        self,
        src: str | os.PathLike,
        dst: str | os.PathLike | None = None,
        *,
        key: str | None = None,
        force: bool = False,
        dry_run: bool = False,
        verify: bool = False,
        max_shard_size: int | str | None = None,
        progress: bool = False,
    ) -> Report:
        """Open ``src``, apply the steps, write ``dst`` (unless ``dry_run``) and return the Report.

        Example:
            >>> report = Pipeline([AdaptHead(num_classes=7)]).run("resnet.pth", "resnet7.safetensors")
            >>> report.counts()["dropped"], report.output_bytes
            (2, 161816)

        ``dst`` may be a folder (or end with '/'), or ``max_shard_size`` (``"5GB"``) may be given:
        the output is then sharded as transformers writes it (see ``formats.writer.plan_output``).
        ``progress`` shows a byte progress bar on stderr while writing takes more than a second.

        Raises:
            SurgeonError: bad input, a step that cannot apply, or an output that cannot be written.
        """
        from ckptsurgeon.formats import open_checkpoint
        from ckptsurgeon.formats import writer as w

        src = os.fspath(src)
        target = None
        if dst is not None:
            dst = os.fspath(dst)
            target = w.plan_output(dst, max_shard_size)
            w.check_target(target, [src], force)
        ckpt = open_checkpoint(src, key=key)
        state, report = self.apply(ckpt)
        if dst is None or target is None:
            return report
        fmt = target.format
        report.output, report.output_format, report.dry_run = dst, fmt, dry_run
        refs = list(state.tensors.values())
        if fmt == "safetensors":
            report.metadata_out = w.safetensors_metadata(_provenance(state.metadata, self.steps))
        if dry_run:
            return report
        from ckptsurgeon.progress import ByteProgress

        with ByteProgress(sum(r.nbytes for r in refs), f"writing {dst}", enabled=progress) as advance:
            report.output_bytes = w.write(target, refs, report.metadata_out, advance, state.module_versions)
        if target.sharded:
            report.notes.append(_sharded_note(target))
        if verify:
            from ckptsurgeon.verify import verify_output

            verify_output(target.result, refs)
            report.notes.append("verified: every tensor in the output matches what was intended")
        return report

    def state_dict(self, src: str | os.PathLike, *, key: str | None = None) -> dict[str, torch.Tensor]:
        """Apply the steps and return the result in memory as ``{name: tensor}``, writing nothing.

        Example:
            >>> sd = Pipeline([AdaptHead(num_classes=7)]).state_dict("resnet.pth")
            >>> model.load_state_dict(sd, strict=False)
        """
        from ckptsurgeon.formats import open_checkpoint

        state, _ = self.apply(open_checkpoint(os.fspath(src), key=key))
        return {name: ref.load() for name, ref in state.tensors.items()}


def _track(result: StepResult, origin, history, details, added) -> None:
    """Follow each key through one step's changes, so the report can say where it ended."""
    for ch in result.changes:
        if ch.action == "renamed":
            src = origin.pop(ch.old_name)
            origin[ch.name] = src
            key = src if src is not None else ch.old_name
            if src is None:
                added[ch.name] = added.pop(ch.old_name)
                details[ch.name] = details.pop(ch.old_name, [])
            acts = history[key] if src is not None else added[ch.name]
            if "renamed" not in acts:
                acts.append("renamed")
            if ch.detail:
                details.setdefault(src if src is not None else ch.name, []).append(ch.detail)
            continue
        if ch.action == "added":
            origin[ch.name] = None
            added[ch.name] = ["added"]
            details[ch.name] = [ch.detail] if ch.detail else []
            continue
        src = origin.get(ch.name)
        if ch.action == "dropped":
            origin.pop(ch.name, None)
            if src is None:
                added.pop(ch.name, None)
                continue
        acts = history[src] if src is not None else added.setdefault(ch.name, ["added"])
        if ch.action not in acts:
            acts.append(ch.action)
        if ch.detail:
            details.setdefault(src if src is not None else ch.name, []).append(ch.detail)
    missing = set(origin) - set(result.state.tensors)
    extra = set(result.state.tensors) - set(origin)
    if missing or extra:
        raise SurgeonError(
            f"internal error: a step changed keys it did not report ({sorted(missing)[:3]}, {sorted(extra)[:3]})"
        )


def _remap_versions(versions: dict[str, dict] | None, changes) -> dict[str, dict] | None:
    """Follow tensor renames in torch's module version table (``module.features.0`` → ``features.0``).

    A rename maps the module prefixes it changed: the part before the longest common suffix of the
    old and new names, plus each module along that suffix.
    """
    if not versions:
        return versions
    mapping: dict[str, str] = {}
    for ch in changes:
        if ch.action != "renamed" or ch.old_name is None:
            continue
        old, new = ch.old_name.split("."), ch.name.split(".")
        k = 0
        while k < min(len(old), len(new)) and old[-1 - k] == new[-1 - k]:
            k += 1
        old_head, new_head, common = old[: len(old) - k], new[: len(new) - k], old[len(old) - k :]
        for i in range(max(k, 1)):  # module prefixes only: never the parameter's own name
            mapping.setdefault(".".join(old_head + common[:i]), ".".join(new_head + common[:i]))

    def moved(key: str) -> str:
        if key in mapping:
            return mapping[key]
        parts = key.split(".")
        for i in range(len(parts) - 1, -1, -1):  # modules without tensors follow their parent
            parent = ".".join(parts[:i])
            if parent in mapping:
                return ".".join(p for p in (mapping[parent], *parts[i:]) if p)
        return key

    out: dict[str, dict] = {}
    for key, value in versions.items():
        out.setdefault(moved(key), value)
    return out


def _sharded_note(target) -> str:
    if not target.index_written:
        return f"everything fits in one shard: wrote just {target.result}"
    n = len(target.files) - 1
    return f"sharded output: {n} shard{'s' if n != 1 else ''} listed in {target.result}"


def _container_json(ckpt: Checkpoint) -> dict[str, Any]:
    return {"key": ckpt.container.key, "reason": ckpt.container.reason, "others": ckpt.container.others}


def _provenance(metadata: dict[str, str], steps: Sequence[Transform]) -> dict[str, str]:
    """The source's metadata plus what produced this file (appended to any earlier history)."""
    from ckptsurgeon import __version__

    out = dict(metadata)
    try:
        ops = json.loads(out.get("ckptsurgeon_operations", "[]"))
        ops = ops if isinstance(ops, list) else []
    except ValueError:
        ops = []
    ops.append([{"op": s.op, **s.params()} for s in steps])
    out["ckptsurgeon_version"] = __version__
    out["ckptsurgeon_operations"] = json.dumps(ops, separators=(",", ":"))
    return out
