"""Find classifier heads and input stems from tensor names and shapes alone.

Everything here works on a mapping ``name -> shape`` (a state dict's keys and the shapes
of its tensors), so it never imports torch and never depends on key order (safetensors
files sort their keys).  Two public finders:

``find_heads(shapes)``
    The layers whose output size is the checkpoint's class count: plain linear heads
    (``fc``, ``head``, ``classifier.6``, ...), distillation heads (``head_dist``),
    auxiliary heads (``AuxLogits.fc``, ``aux1.fc2``), 1x1-conv heads (SqueezeNet's
    ``classifier.1``), with or without bias.  The class count is not given: it is the
    output size of a classifier-named layer that *nothing else in the checkpoint uses*
    (no other tensor has a channel dimension of that size).  That one rule keeps out
    pre-logits layers, ``conv_head``, MLP layers, norms and embeddings, whose sizes
    always reappear somewhere else.  Projection heads whose size is also a hidden width
    (CLIP towers: ``head`` [512, 512]) are taken by their conventional name instead.

``find_stems(shapes, base_chans=3)``
    The convolutions that read the image: 4-D weights ``[O, I, kh, kw]`` with
    ``I == base_chans`` (or, for space-to-depth stems such as TResNet's, ``I ==
    base_chans * k`` with ``k`` a square block size and ``I`` produced by no layer).
    Parallel stems (FastViT/MobileOne/RepVGG's ``conv_kxk`` + ``conv_scale``, CrossViT's
    two patch embeddings) are all returned; grouped convs deeper in the network that
    merely read 3 channels per group are not.  Linear patch embeddings over flattened
    patches (timm's NaFlexViT ``embeds.proj``, weight ``[D, p*p*C]``) are returned as
    ``kind="linear"`` when no conv reads the image, with the flattening order (``layout``)
    when the name is a known convention.

Both raise :class:`~ckptsurgeon.errors.SurgeonError` listing the candidates (with shapes)
when nothing is found or the choice is not clear, with a hint to name the layers
explicitly (``--head`` / ``--conv``), and both accept those explicit names.

Example:
    >>> shapes = {"conv1.weight": (64, 3, 7, 7), "fc.weight": (1000, 2048), "fc.bias": (1000,),
    ...           "layer4.2.bn3.weight": (2048,)}
    >>> [h.prefix for h in find_heads(shapes)], [s.prefix for s in find_stems(shapes)]
    (['fc'], ['conv1'])
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ckptsurgeon.errors import SurgeonError

__all__ = ["Head", "Stem", "find_heads", "find_stems", "layer_prefixes"]

HEAD_HINT = "name the head layers with --head PREFIX (repeatable)"
STEM_HINT = "name the input convolutions with --conv PREFIX (repeatable)"
_MAX_LISTED = 12


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Head:
    """One classifier head: a linear or 1x1-conv layer producing the class scores."""

    prefix: str  # layer prefix, e.g. "fc", "head_dist", "classifier.1", "AuxLogits.fc"
    weight: str  # "fc.weight"
    bias: str | None  # "fc.bias" or None
    num_classes: int  # weight.shape[0]
    in_features: int  # weight.shape[1]
    kind: str  # "linear" | "conv1x1"
    reason: str  # why it was taken, one short sentence
    role: str = "main"  # "main" | "distillation" | "auxiliary"


@dataclass(frozen=True)
class Stem:
    """One layer that reads the input image."""

    prefix: str
    weight: str
    bias: str | None
    in_chans: int  # weight.shape[1]
    groups_of: int  # 1 for a normal stem, k for space-to-depth (in_chans == base_chans * k)
    reason: str
    kind: str = "conv"  # "conv" (4-D weight) | "linear" (2-D projection of flattened patches)
    out_chans: int = 0  # weight.shape[0]
    # kind "linear" only: how a flattened patch orders its values. "hwc": channel fastest
    # (timm NaFlexViT, transformers SigLIP 2), "chw": channel slowest (timm Gemma4 ViT),
    # "unknown": not a known convention (shapes cannot tell). None for convs.
    layout: str | None = None


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class _Layer:
    prefix: str
    weight: str
    shape: tuple[int, ...]
    bias: str | None

    @property
    def out(self) -> int:
        return self.shape[0]

    @property
    def inp(self) -> int:
        return self.shape[1]

    @property
    def linear_like(self) -> bool:
        """A 2-D weight or a 4-D ``[N, C, 1, 1]`` weight: it could map features to classes."""
        s = self.shape
        return len(s) == 2 or (len(s) == 4 and s[2] == 1 and s[3] == 1)

    @property
    def kind(self) -> str:
        return "linear" if len(self.shape) == 2 else "conv1x1"

    def describe(self) -> str:
        return f"{self.prefix} {list(self.shape)}"


def _norm_shapes(shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in shapes.items():
        try:
            out[str(key)] = tuple(int(d) for d in shape)
        except TypeError as e:  # a bare int, or an object without a shape
            raise SurgeonError(f"tensor {key!r} has no usable shape: {shape!r}") from e
    return out


def _layers(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, _Layer]:
    """Every ``PREFIX.weight`` with 2+ dimensions, as a layer (sorted by prefix)."""
    layers: dict[str, _Layer] = {}
    for key in sorted(shapes):
        if not key.endswith(".weight"):
            continue
        shape = shapes[key]
        if len(shape) < 2:
            continue
        prefix = key[: -len(".weight")]
        bias = prefix + ".bias"
        layers[prefix] = _Layer(prefix, key, shape, bias if bias in shapes else None)
    return layers


def layer_prefixes(shapes: Mapping[str, Sequence[int]]) -> list[str]:
    """All layer prefixes (``P`` for each ``P.weight`` with 2+ dims), sorted."""
    return list(_layers(_norm_shapes(shapes)))


def _components(prefix: str) -> list[str]:
    return prefix.lower().split(".")


# --------------------------------------------------------------------------- heads

# Path components that never hold a head, whatever the shape: pre-logits projections,
# the 1x1 conv before pooling, a language model's vocabulary projection, norms,
# embeddings, tokens, attention and MLP internals.
_NEVER_HEAD = re.compile(
    r"(pre_?logits|conv_head|head_conv|^lm_head$|embed|token|^pos|norm|^bn\d*$|^ln\d*$|^gn$|^ls\d*$"
    r"|^attn$|^qkv$|^q$|^k$|^v$|^kv$|^mlp$|^se$|^attn_pool$)"
)
# Path components that mark a classifier by convention.
_HEAD_NAME = re.compile(r"(^fc$|^fc_?out$|head|classif|^last_linear$|logit|^aux|^cls$|^predictions?$|^score$|^final)")
# Further components allowed inside a head module (``head.linear``, ``head.proj``,
# ``classifier.1``, ``aux1.fc2``) when a whole prefix is judged a conventional head name.
_INSIDE_HEAD = re.compile(r"^(fc\d*|linear|proj|l|\d+)$")
_DIST = re.compile(r"dist")
_AUX = re.compile(r"aux")


def _never_head(prefix: str) -> bool:
    return any(_NEVER_HEAD.search(c) for c in _components(prefix))


def _head_named(prefix: str) -> bool:
    """Some component of the prefix is a classifier name (``head``, ``fc``, ``aux1``...)."""
    return any(_HEAD_NAME.search(c) for c in _components(prefix))


def _wrapper_depth(keys: Sequence[str]) -> int:
    """How many leading components every key shares (``module.`` of DDP, ``model.``)."""
    split = [k.split(".")[:-1] for k in keys]
    depth = 0
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        depth += 1
    return depth


def _conventional_head(prefix: str, skip: int = 0) -> bool:
    """The whole prefix (after ``skip`` wrapper components) is a head name: ``head``,
    ``head.fc``, ``classifier.1``, ``fc``, ``module.head``."""
    comps = _components(prefix)[skip:]
    return (
        bool(comps)
        and bool(_HEAD_NAME.search(comps[0]))
        and all(_HEAD_NAME.search(c) or _INSIDE_HEAD.match(c) for c in comps[1:])
    )


def _channel_dims(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The dimensions of a tensor that count channels or features (not kernel taps)."""
    if len(shape) == 0:
        return ()
    if len(shape) == 1:
        return shape
    if key.endswith(".weight"):
        return shape[:2]
    return shape[-1:]  # tokens, position embeddings: [..., C]


def _dim_owners(shapes: Mapping[str, tuple[int, ...]]) -> dict[int, set[str]]:
    """size -> keys of the tensors having a channel dimension of that size."""
    owners: dict[int, set[str]] = {}
    for key, shape in shapes.items():
        for d in set(_channel_dims(key, shape)):
            owners.setdefault(d, set()).add(key)
    return owners


def _role(prefix: str) -> str:
    comps = _components(prefix)
    if any(_AUX.search(c) for c in comps):
        return "auxiliary"
    if any(_DIST.search(c) for c in comps):
        return "distillation"
    return "main"


def _what(layer: _Layer) -> str:
    role = {"main": "", "distillation": "distillation ", "auxiliary": "auxiliary "}[_role(layer.prefix)]
    return role + ("linear layer" if layer.kind == "linear" else "1x1 conv")


def _to_head(layer: _Layer, reason: str) -> Head:
    return Head(
        prefix=layer.prefix,
        weight=layer.weight,
        bias=layer.bias,
        num_classes=layer.out,
        in_features=layer.inp,
        kind=layer.kind,
        reason=reason,
        role=_role(layer.prefix),
    )


def _listing(layers: Sequence[_Layer]) -> str:
    shown = [lay.describe() for lay in layers[:_MAX_LISTED]]
    if len(layers) > _MAX_LISTED:
        shown.append(f"... {len(layers) - _MAX_LISTED} more")
    return ", ".join(shown)


def _strip_param_suffix(name: str) -> str:
    for suffix in (".weight", ".bias"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _closest(name: str, pool: Sequence[str], fallback: Sequence[str] = (), n: int = 3) -> list[str]:
    """Prefixes of ``pool`` that look like ``name`` (difflib, then same last component),
    else the first of ``fallback`` (the likeliest layers of the right kind)."""
    got = difflib.get_close_matches(name, pool, n=n, cutoff=0.4)
    if not got:  # "fc" -> "head.fc"
        last = name.rsplit(".", 1)[-1]
        got = [p for p in pool if p.rsplit(".", 1)[-1] == last][:n]
    return got or list(fallback[:n])


def _explicit_heads(shapes: dict[str, tuple[int, ...]], names: Sequence[str]) -> list[Head]:
    layers = _layers(shapes)
    classifier_shaped = [p for p, lay in layers.items() if lay.linear_like]
    heads: list[Head] = []
    for raw in names:
        name = _strip_param_suffix(str(raw).strip())
        layer = layers.get(name)
        if layer is None or not layer.linear_like:
            if layer is None:
                why = f"no tensor {name}.weight in the checkpoint"
            else:
                why = f"{name}.weight has shape {list(layer.shape)}, not [N, C] or [N, C, 1, 1]"
            likely = sorted(classifier_shaped, key=lambda p: (not _head_named(p), _never_head(p), p))
            near = _closest(name, classifier_shaped, likely)
            hint = (
                f"closest classifier-shaped layers: {', '.join(near)}"
                if near
                else "the checkpoint has no 2-D or [N, C, 1, 1] weight"
            )
            try:
                found = find_heads(shapes)
                hint += f"; detected heads: {', '.join(h.prefix for h in found)}"
            except SurgeonError:
                pass
            raise SurgeonError(f"--head {raw}: {why}", hint=hint)
        if any(h.prefix == name for h in heads):
            continue
        heads.append(_to_head(layer, f"named with --head; {_what(layer)} with {layer.out} outputs"))
    _check_agree(heads, "the named heads")
    return sorted(heads, key=lambda h: h.prefix)


def _check_agree(heads: Sequence[Head], who: str) -> None:
    counts = sorted({h.num_classes for h in heads})
    if len(counts) > 1:
        listed = ", ".join(f"{h.prefix} [{h.num_classes}, {h.in_features}]" for h in heads)
        raise SurgeonError(
            f"{who} disagree on the class count ({', '.join(map(str, counts))}): {listed}",
            hint=f"every head of one checkpoint must produce the same number of classes; {HEAD_HINT}",
        )


def _block_pattern(prefix: str) -> str:
    """The prefix with every module index but a final one replaced by ``#``."""
    parts = prefix.split(".")
    return ".".join("#" if p.isdigit() and i < len(parts) - 1 else p for i, p in enumerate(parts))


def _repeated_check(all_prefixes: Sequence[str]):
    """A test for "sits inside one of several copies of a block" (``blocks.3.attn.qkv``)."""
    counts = Counter(_block_pattern(p) for p in all_prefixes)

    def repeated(prefix: str) -> bool:
        pat = _block_pattern(prefix)
        return pat != prefix and counts[pat] > 1

    return repeated


def _unused_sizes(shapes: dict[str, tuple[int, ...]], layers: dict[str, _Layer]) -> set[int]:
    """Output sizes of linear-like layers that nothing else in the checkpoint uses.

    N qualifies when no tensor other than the weights and biases of the layers producing N
    has a channel dimension of N, none of those layers reads N features itself, and none
    is a pre-logits / ``conv_head`` layer.  A class count has this property; a hidden
    width never does (a norm, the next layer or a residual branch uses it).
    """
    owners = _dim_owners(shapes)
    producers: dict[int, list[_Layer]] = {}
    for lay in layers.values():
        producers.setdefault(lay.out, []).append(lay)
    sizes = set()
    for n, group in producers.items():
        if not all(lay.linear_like for lay in group):
            continue  # a 3x3 conv produces it: a width
        if any(_never_head(lay.prefix) or lay.inp == n for lay in group):
            continue
        own = {lay.weight for lay in group} | {lay.bias for lay in group if lay.bias}
        if owners.get(n, set()) - own:
            continue
        sizes.add(n)
    return sizes


def find_heads(shapes: Mapping[str, Sequence[int]], names: Sequence[str] | None = None) -> list[Head]:
    """Find the classifier heads of a checkpoint from its tensor names and shapes.

    ``names`` are explicit layer prefixes (``--head``): each must have a 2-D or
    ``[N, C, 1, 1]`` weight.  Without them the heads are found automatically:

    1. the class count N is the output size of a classifier-named layer (a path component
       such as ``head``, ``fc``, ``classifier``, ``last_linear``, ``aux1``) that no other
       tensor uses; every linear or 1x1-conv layer producing N is a head (auxiliary and
       distillation heads included, whatever their names);
    2. failing that (projection heads whose size is also a hidden width: CLIP towers), the
       layers whose whole prefix is a conventional head name (``head``, ``head.fc``,
       ``head.proj``, ``classifier.1``) and that agree on one size.

    Returns the heads sorted by prefix.  Raises :class:`SurgeonError` when none is found,
    when heads disagree on the class count, or when the choice is unclear, listing the
    candidates with their shapes.
    """
    norm = _norm_shapes(shapes)
    if names:
        return _explicit_heads(norm, names)
    layers = _layers(norm)
    cands = [lay for lay in layers.values() if lay.linear_like and not _never_head(lay.prefix)]
    unused = _unused_sizes(norm, layers)

    # 1. a classifier-named layer whose output size nothing else uses
    named_sizes = sorted({lay.out for lay in cands if lay.out in unused and _head_named(lay.prefix)})
    if len(named_sizes) > 1:
        groups = [(n, [lay for lay in cands if lay.out == n]) for n in named_sizes]
        listed = "; ".join(f"{n} classes: {_listing(g)}" for n, g in groups)
        raise SurgeonError(
            f"classifier-like layers disagree on the class count ({listed})",
            hint=f"every head must produce the same number of classes; {HEAD_HINT}",
        )
    if named_sizes:
        n = named_sizes[0]
        group = [lay for lay in cands if lay.out == n]
        names_txt = ", ".join(f"'{lay.prefix}'" for lay in group if _head_named(lay.prefix))
        heads = []
        for lay in group:
            also = f"; {len(group)} heads agree on it" if len(group) > 1 else ""
            via = "" if _head_named(lay.prefix) else f" (class count taken from {names_txt})"
            heads.append(
                _to_head(
                    lay,
                    f"{_what(lay)} '{lay.prefix}' with {n} outputs, a size nothing else in the checkpoint "
                    f"uses (the class count){via}{also}",
                )
            )
        return heads

    # 2. conventional head names, agreeing on a size that is also a width elsewhere
    repeated = _repeated_check(list(layers))
    skip = _wrapper_depth(list(norm))
    conventional = [lay for lay in cands if _conventional_head(lay.prefix, skip) and not repeated(lay.prefix)]
    # a head-named layer feeding another one (head.fc1 -> head.fc2) is a pre-logits step
    last = [lay for lay in conventional if not any(o is not lay and o.inp == lay.out for o in conventional)]
    conventional = last or conventional
    sizes = sorted({lay.out for lay in conventional})
    if len(sizes) == 1:
        n = sizes[0]
        return [
            _to_head(
                lay,
                f"{_what(lay)} named '{lay.prefix}', the usual head name; {n} outputs "
                f"(a size also used inside the network, so taken by name)",
            )
            for lay in conventional
        ]
    if len(sizes) > 1:
        raise SurgeonError(
            f"cannot tell which layers are the classifier heads: head-named layers have different "
            f"output sizes: {_listing(conventional)}",
            hint=HEAD_HINT,
        )

    # 3. nothing conventional: list what could be a head and let the user decide
    terminal = [lay for lay in cands if lay.out in unused and not repeated(lay.prefix)]
    named = [lay for lay in cands if _head_named(lay.prefix) and not repeated(lay.prefix)]
    listed = sorted(set(terminal) | set(named), key=lambda lay: lay.prefix)
    if listed:
        raise SurgeonError(
            "cannot tell which layers are the classifier heads: no layer named like a classifier "
            f"has an output size that nothing else uses; candidates: {_listing(listed)}",
            hint=HEAD_HINT,
        )
    raise SurgeonError(
        "no classifier head found: no linear or 1x1-conv layer is named like a classifier or "
        "has an output size that nothing else uses",
        hint=HEAD_HINT,
    )


# --------------------------------------------------------------------------- stems

# Digits that are not positions: kernel sizes ("3x3"), "conv2d", "1d".
_NOT_POSITION = re.compile(r"\d+x\d+|\d+d(?=$|_|\b)", re.IGNORECASE)
_EMBED_NAME = re.compile(r"embed|patch|stem")
_PROJ_NAME = re.compile(r"proj|linear")


def _positions(prefix: str) -> list[int]:
    """The numbers in a prefix that index modules (``layer3.0.conv2`` -> [3, 0, 2])."""
    cleaned = _NOT_POSITION.sub("", prefix)
    return [int(x) for x in re.findall(r"\d+", cleaned)]


def _early(prefix: str) -> bool:
    """Every module index in the prefix is 0 or 1: the first module at every level."""
    return all(p <= 1 for p in _positions(prefix))


def _is_square(k: int) -> bool:
    r = math.isqrt(k)
    return r * r == k


# Known flattening orders of linear patch embeddings (the shapes cannot tell them apart).
_PATCH_LAYOUTS = (
    (re.compile(r"(^|\.)embeds\.proj$"), "hwc"),  # timm NaFlexViT: (ph, pw, C), C fastest
    (re.compile(r"(^|\.)embeddings\.patch_embedding$"), "hwc"),  # transformers SigLIP 2
    (re.compile(r"(^|\.)patch_embed\.input_proj$"), "chw"),  # timm Gemma4 ViT: (C, ph, pw)
)


def _patch_layout(prefix: str) -> str:
    for pattern, layout in _PATCH_LAYOUTS:
        if pattern.search(prefix):
            return layout
    return "unknown"


def _to_stem(layer: _Layer, base: int, reason: str, kind: str = "conv") -> Stem:
    return Stem(
        prefix=layer.prefix,
        weight=layer.weight,
        bias=layer.bias,
        in_chans=layer.inp,
        groups_of=max(layer.inp // base, 1) if layer.inp % base == 0 else 1,
        reason=reason,
        kind=kind,
        out_chans=layer.out,
        layout=_patch_layout(layer.prefix) if kind == "linear" else None,
    )


def _linear_patch_embed(layer: _Layer, base: int) -> bool:
    """A 2-D ``[D, base * p * p]`` weight named like a patch embedding (``embeds.proj``,
    ``patch_embed.input_proj``, ``embeddings.patch_embedding``): a linear layer over
    flattened ``p x p`` patches (NaFlexViT, SigLIP 2).  Text embedding tables do not match:
    their names end in ``embeddings``/``embed_tokens``, not a projection."""
    if len(layer.shape) != 2 or layer.inp % base:
        return False
    k = layer.inp // base
    if k < 4 or not _is_square(k):
        return False
    comps = _components(layer.prefix)
    last = comps[-1]
    if "patch" in last:
        return True
    return bool(_PROJ_NAME.search(last)) and any(_EMBED_NAME.search(c) for c in comps[:-1])


def _explicit_stems(shapes: dict[str, tuple[int, ...]], base: int, names: Sequence[str]) -> list[Stem]:
    layers = _layers(shapes)
    convs = [p for p, lay in layers.items() if len(lay.shape) == 4]
    stems: list[Stem] = []
    for raw in names:
        name = _strip_param_suffix(str(raw).strip())
        layer = layers.get(name)
        linear = layer is not None and _linear_patch_embed(layer, base)
        if layer is None or (len(layer.shape) != 4 and not linear):
            why = (
                f"no tensor {name}.weight in the checkpoint"
                if layer is None
                else f"{name}.weight has shape {list(layer.shape)}, not a 4-D conv weight"
            )
            likely = [
                lay.prefix
                for lay in sorted(layers.values(), key=lambda lay: (lay.inp, lay.prefix))
                if len(lay.shape) == 4
            ]
            near = _closest(name, convs, likely)
            hint = f"closest conv layers: {', '.join(near)}" if near else "the checkpoint has no 4-D conv weight"
            try:
                found = find_stems(shapes, base_chans=base)
                hint += f"; detected stems: {', '.join(s.prefix for s in found)}"
            except SurgeonError:
                pass
            raise SurgeonError(f"--conv {raw}: {why}", hint=hint)
        if any(s.prefix == name for s in stems):
            continue
        what = "linear patch embedding" if linear else "conv"
        stems.append(
            _to_stem(
                layer,
                base,
                f"named with --conv; {what} reading {layer.inp} channels",
                kind="linear" if linear else "conv",
            )
        )
    return sorted(stems, key=lambda s: s.prefix)


# A component naming the input end of a network, and one naming a repeated stage or block.
_STEM_PART = re.compile(
    r"(stem|embed|patch|^conv_?[01]$|^conv_?1_1$|^conv0|_1a|^1a|^base_layer$|^layer0$|^conv_proj$|^input|^first)"
)
_BODY_PART = re.compile(r"^(layers?|stages?|blocks?|dense_stages?|res\d|mixed|cell|features\d)")


def _stem_named(prefix: str) -> bool:
    comps = _components(prefix)
    return any(_STEM_PART.search(c) for c in comps) and not any(_BODY_PART.match(c) for c in comps)


_DEPTHWISE_NAME = re.compile(r"(^|[._])(dw|depthwise|dwconv|dw_?conv|conv_?dw)([._\d]|$)")


def _split_index(a: str, b: str) -> tuple[int, int] | None:
    """Where two prefixes first differ, if both differ by a module index: (index a, index b)."""
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            return (int(x), int(y)) if x.isdigit() and y.isdigit() else None
    return None


def _follows(later: _Layer, earlier: _Layer) -> bool:
    """``later`` sits after ``earlier`` in one sequence (``stem.1`` after ``stem.0``) and keeps its
    channel count: a depthwise or grouped conv reading ``earlier``'s output, not a parallel stem
    (CrossViT's ``patch_embed.0``/``patch_embed.1`` produce different widths)."""
    idx = _split_index(earlier.prefix, later.prefix)
    return idx is not None and idx[0] < idx[1] and later.out == earlier.out


def _common_parent(prefixes: Sequence[str]) -> str:
    split = [p.split(".")[:-1] for p in prefixes]
    common: list[str] = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


def _pick_direct(direct: list[_Layer], base: int) -> list[Stem]:
    """Choose among the convs whose weight reads exactly ``base`` channels.

    Several can: parallel stems (re-parameterisable branches, CrossViT's two patch sizes)
    and, deeper in the network, grouped convs with ``base`` channels per group (DPN's
    ``conv2_1.c3x3_b`` reads 96 channels in 32 groups of 3) or, for ``base=1``, every
    depthwise conv.  Keep the convs at the start of the network (every module index 0
    or 1), then those named like a stem; what is left must sit side by side in one
    stem-named module, with shapes that differ, to be taken as parallel stems.
    """
    what = f"{base} channel" + ("s" if base != 1 else "")
    if len(direct) == 1:
        return [_to_stem(direct[0], base, f"the only conv reading {what}")]
    cands, dropped = direct, []

    def keep(subset: list[_Layer]) -> None:
        nonlocal cands
        if subset and len(subset) < len(cands):
            dropped.extend(lay for lay in cands if lay not in subset)
            cands = subset

    keep([lay for lay in cands if _early(lay.prefix)])
    keep([lay for lay in cands if not _DEPTHWISE_NAME.search(lay.prefix.lower())])
    keep([lay for lay in cands if not any(_follows(lay, other) for other in cands)])
    if len(cands) > 1:
        keep([lay for lay in cands if _stem_named(lay.prefix)])
    note = ""
    if dropped:
        shown = ", ".join(lay.prefix for lay in dropped[:3]) + (" ..." if len(dropped) > 3 else "")
        note = f"; {shown} also read {what} but sit deeper (grouped/depthwise)"
    if len(cands) == 1:
        return [_to_stem(cands[0], base, f"the conv reading {what} at the start of the network{note}")]
    parent = _common_parent([lay.prefix for lay in cands])
    # Parallel branches differ in kernel or width (conv_kxk + conv_scale 1x1, CrossViT's
    # two patch sizes); identical shapes may as well be a stem and a depthwise conv after it.
    distinct = len({lay.shape for lay in cands}) == len(cands)
    if parent and distinct and all(_stem_named(lay.prefix) for lay in cands):
        reason = f"one of {len(cands)} parallel convs in '{parent}' reading {what}{note}"
        return [_to_stem(lay, base, reason) for lay in cands]
    raise SurgeonError(
        f"cannot tell which convs read the image: {len(cands)} convs read {what} "
        f"and they are not parallel branches of one stem: {_listing(cands)}",
        hint=STEM_HINT,
    )


def find_stems(
    shapes: Mapping[str, Sequence[int]], base_chans: int = 3, names: Sequence[str] | None = None
) -> list[Stem]:
    """Find the layers that read the image (``base_chans`` channels) from names and shapes.

    ``names`` are explicit prefixes (``--conv``; a trailing ``.weight`` is accepted) whose
    ``.weight`` must be 4-D, or a 2-D linear patch embedding.  Without them:

    1. the convs reading exactly ``base_chans`` channels; when several do, those at the start
       of the network (every module index 0 or 1), not depthwise-named, not a same-width
       successor of another (``stem.1`` after ``stem.0``), and stem-named; several left are
       returned as parallel stems when they sit in one stem module with distinct shapes;
    2. else one conv reading ``base_chans * k`` channels (``k`` a square: a space-to-depth
       block) that no layer produces: ``groups_of = k``;
    3. else one linear patch embedding ``[D, base_chans * p * p]`` (``kind="linear"``).

    Returns the stems sorted by prefix; raises :class:`SurgeonError` listing candidates when
    none is found or the choice is unclear.
    """
    if base_chans < 1:
        raise SurgeonError(f"base channel count must be positive, got {base_chans}")
    norm = _norm_shapes(shapes)
    if names:
        return _explicit_stems(norm, base_chans, names)
    layers = _layers(norm)
    convs = [lay for lay in layers.values() if len(lay.shape) == 4]

    # 1. convs reading exactly base_chans channels
    direct = sorted((lay for lay in convs if lay.inp == base_chans), key=lambda lay: lay.prefix)
    if direct:
        return _pick_direct(direct, base_chans)

    # 2. space-to-depth: reads base_chans * k channels (k a square block), a count that
    #    no layer produces (nothing in the network outputs that many channels)
    owners = _dim_owners(norm)
    s2d = []
    for lay in convs:
        if lay.inp % base_chans or lay.inp == base_chans:
            continue
        k = lay.inp // base_chans
        if not _is_square(k):
            continue
        users = owners.get(lay.inp, set()) - {lay.weight}
        if users:
            continue
        s2d.append(lay)
    if len(s2d) == 1:
        lay = s2d[0]
        k = lay.inp // base_chans
        r = math.isqrt(k)
        return [
            _to_stem(
                lay,
                base_chans,
                f"space-to-depth stem: reads {lay.inp} = {base_chans}x{r}x{r} channels that no layer produces",
            )
        ]
    if len(s2d) > 1:
        raise SurgeonError(
            f"cannot tell which convs read the image: several read a multiple of {base_chans} "
            f"channels that no layer produces: {_listing(s2d)}",
            hint=STEM_HINT,
        )

    # 3. a linear patch embedding over flattened patches: [D, base_chans * p * p]
    lin = [lay for lay in layers.values() if _linear_patch_embed(lay, base_chans)]
    if len(lin) == 1:
        lay = lin[0]
        r = math.isqrt(lay.inp // base_chans)
        layout = _patch_layout(lay.prefix)
        order = {"hwc": "channel fastest", "chw": "channel slowest", "unknown": "value order unknown"}[layout]
        reason = f"linear patch embedding over flattened {r}x{r} patches of {base_chans} channels ({order})"
        return [_to_stem(lay, base_chans, reason, kind="linear")]
    if lin:
        raise SurgeonError(
            f"cannot tell which linear patch embedding reads the image: {_listing(lin)}",
            hint=STEM_HINT,
        )
    few = sorted(convs, key=lambda lay: (lay.inp, lay.prefix))
    raise SurgeonError(
        f"no input convolution found: no conv reads {base_chans} channels (or a space-to-depth multiple)"
        + (
            f"; convs with the fewest input channels: {_listing(few[:5])}"
            if few
            else "; the checkpoint has no 4-D conv weight"
        ),
        hint=STEM_HINT,
    )
