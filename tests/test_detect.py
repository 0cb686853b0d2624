"""Head and stem detection from names and shapes (``ckptsurgeon.detect``), on synthetic shape maps.

Every layout here copies the names and shapes of a real architecture (timm, torchvision or
transformers); the compat tier (``tests/compat/test_detect_all.py``) checks the same code on
every timm and torchvision model.  No torch needed.
"""

from __future__ import annotations

import ast
import random
import sys
from pathlib import Path

import pytest

from ckptsurgeon.detect import Head, Stem, find_heads, find_stems
from ckptsurgeon.errors import SurgeonError

# --------------------------------------------------------------------------- builders


def bn(prefix: str, c: int) -> dict:
    return {f"{prefix}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()
    }


def conv(prefix: str, o: int, i: int, k: int = 3, bias: bool = False) -> dict:
    out = {f"{prefix}.weight": (o, i, k, k)}
    if bias:
        out[f"{prefix}.bias"] = (o,)
    return out


def linear(prefix: str, o: int, i: int, bias: bool = True) -> dict:
    out = {f"{prefix}.weight": (o, i)}
    if bias:
        out[f"{prefix}.bias"] = (o,)
    return out


def ln(prefix: str, c: int) -> dict:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)}


def resnet_body(stem: str = "conv1", width: int = 64, final: int = 2048, stem_in: int = 3) -> dict:
    """A ResNet-50-like trunk: stem conv + bn, a few bottlenecks, ``final`` features out."""
    sd = conv(stem, width, stem_in, 7) | bn("bn1", width)
    c_in = width
    for stage, (mid, out) in enumerate([(64, 256), (128, 512), (256, 1024), (512, final)], start=1):
        for block in range(2):
            p = f"layer{stage}.{block}"
            sd |= conv(f"{p}.conv1", mid, c_in, 1) | bn(f"{p}.bn1", mid)
            sd |= conv(f"{p}.conv2", mid, mid, 3) | bn(f"{p}.bn2", mid)
            sd |= conv(f"{p}.conv3", out, mid, 1) | bn(f"{p}.bn3", out)
            if block == 0:
                sd |= conv(f"{p}.downsample.0", out, c_in, 1) | bn(f"{p}.downsample.1", out)
            c_in = out
    return sd


def vit_body(dim: int = 192, depth: int = 2, patch: str = "patch_embed.proj", in_chans: int = 3) -> dict:
    """A ViT trunk: patch embedding, tokens, blocks, final norm."""
    sd = conv(patch, dim, in_chans, 16, bias=True)
    sd |= {"cls_token": (1, 1, dim), "pos_embed": (1, 197, dim)}
    for b in range(depth):
        p = f"blocks.{b}"
        sd |= ln(f"{p}.norm1", dim) | linear(f"{p}.attn.qkv", 3 * dim, dim) | linear(f"{p}.attn.proj", dim, dim)
        sd |= ln(f"{p}.norm2", dim) | linear(f"{p}.mlp.fc1", 4 * dim, dim) | linear(f"{p}.mlp.fc2", dim, 4 * dim)
    return sd | ln("norm", dim)


def heads_of(shapes, **kw) -> list[str]:
    return [h.prefix for h in find_heads(shapes, **kw)]


def stems_of(shapes, **kw) -> list[str]:
    return [s.prefix for s in find_stems(shapes, **kw)]


def orders(shapes: dict):
    """The same shape map in its own order, sorted (safetensors) and shuffled."""
    yield shapes
    yield dict(sorted(shapes.items()))
    items = list(shapes.items())
    random.Random(0).shuffle(items)
    yield dict(items)
    yield dict(reversed(items))


# --------------------------------------------------------------------------- heads: what is taken

HEAD_CASES = {
    # name: (shape map, expected head prefixes)
    "resnet fc": (resnet_body() | linear("fc", 1000, 2048), ["fc"]),
    "vit head": (vit_body() | linear("head", 1000, 192), ["head"]),
    "convnext head.fc": (
        resnet_body(final=768) | ln("head.norm", 768) | linear("head.fc", 1000, 768),
        ["head.fc"],
    ),
    "densenet classifier": (resnet_body(final=1024) | linear("classifier", 1000, 1024), ["classifier"]),
    "vgg classifier.6": (
        resnet_body(final=512)
        | linear("classifier.0", 4096, 512 * 7 * 7)
        | linear("classifier.3", 4096, 4096)
        | linear("classifier.6", 1000, 4096),
        ["classifier.6"],
    ),
    "senet last_linear": (resnet_body() | linear("last_linear", 1000, 2048), ["last_linear"]),
    "inception_resnet_v2 classif": (resnet_body(final=1536) | linear("classif", 1000, 1536), ["classif"]),
    "torchvision vit heads.head": (
        vit_body(768, patch="conv_proj") | linear("heads.head", 1000, 768),
        ["heads.head"],
    ),
    "levit head.linear + head_dist.linear": (
        vit_body(384)
        | bn("head.bn", 384)
        | linear("head.linear", 1000, 384)
        | bn("head_dist.bn", 384)
        | linear("head_dist.linear", 1000, 384),
        ["head.linear", "head_dist.linear"],
    ),
    "deit head + head_dist": (
        vit_body() | {"dist_token": (1, 1, 192)} | linear("head", 1000, 192) | linear("head_dist", 1000, 192),
        ["head", "head_dist"],
    ),
    "inception_v3 AuxLogits.fc + fc": (
        conv("Conv2d_1a_3x3.conv", 32, 3)
        | bn("Conv2d_1a_3x3.bn", 32)
        | resnet_body(stem="Conv2d_2a_3x3.conv", stem_in=32)
        | conv("AuxLogits.conv0.conv", 128, 768, 1)
        | bn("AuxLogits.conv0.bn", 128)
        | conv("AuxLogits.conv1.conv", 768, 128, 5)
        | bn("AuxLogits.conv1.bn", 768)
        | linear("AuxLogits.fc", 1000, 768)
        | linear("fc", 1000, 2048),
        ["AuxLogits.fc", "fc"],
    ),
    "googlenet aux1.fc2 + aux2.fc2 + fc": (
        resnet_body(stem="conv1.conv", final=1024)
        | conv("aux1.conv.conv", 128, 512, 1)
        | linear("aux1.fc1", 1024, 2048)
        | linear("aux1.fc2", 1000, 1024)
        | conv("aux2.conv.conv", 128, 528, 1)
        | linear("aux2.fc1", 1024, 2048)
        | linear("aux2.fc2", 1000, 1024)
        | linear("fc", 1000, 1024),
        ["aux1.fc2", "aux2.fc2", "fc"],
    ),
    "squeezenet classifier.1 (1x1 conv)": (
        resnet_body(final=512) | conv("classifier.1", 1000, 512, 1, bias=True),
        ["classifier.1"],
    ),
    "dla fc (1x1 conv, no bias)": (resnet_body(final=512) | conv("fc", 1000, 512, 1), ["fc"]),
    "efficientnet conv_head is not the head": (
        resnet_body(final=320) | conv("conv_head", 1280, 320, 1) | bn("bn2", 1280) | linear("classifier", 1000, 1280),
        ["classifier"],
    ),
    "head without bias": (vit_body() | linear("head", 1000, 192, bias=False), ["head"]),
    "1001 classes (label offset)": (resnet_body() | linear("fc", 1001, 2048), ["fc"]),
    "21843 classes": (vit_body() | linear("head", 21843, 192), ["head"]),
    "transformers ViTForImageClassification": (
        {
            "vit.embeddings.cls_token": (1, 1, 768),
            "vit.embeddings.position_embeddings": (1, 197, 768),
            **conv("vit.embeddings.patch_embeddings.projection", 768, 3, 16, bias=True),
            **linear("vit.encoder.layer.0.attention.attention.query", 768, 768),
            **linear("vit.encoder.layer.0.attention.output.dense", 768, 768),
            **linear("vit.encoder.layer.0.intermediate.dense", 3072, 768),
            **linear("vit.encoder.layer.0.output.dense", 768, 3072),
            **ln("vit.encoder.layer.0.layernorm_before", 768),
            **ln("vit.layernorm", 768),
            **linear("classifier", 10, 768),
        },
        ["classifier"],
    ),
    "transformers ResNetForImageClassification classifier.1": (
        conv("resnet.embedder.embedder.convolution", 64, 3, 7)
        | bn("resnet.embedder.embedder.normalization", 64)
        | resnet_body(stem="resnet.encoder.stages.0.shortcut.convolution", stem_in=64)
        | linear("classifier.1", 2, 2048),
        ["classifier.1"],
    ),
    "pre_logits and head.pre_logits are not heads": (
        vit_body()
        | linear("pre_logits.fc1", 4096, 192)
        | linear("head.pre_logits.fc", 4096, 4096)
        | ln("head.norm", 4096)
        | linear("head.fc", 1000, 4096),
        ["head.fc"],
    ),
    "metaformer head.fc.fc2 behind head.fc.fc1 + head.fc.norm": (
        resnet_body(final=512)
        | linear("head.fc.fc1", 2048, 512)
        | ln("head.fc.norm", 2048)
        | linear("head.fc.fc2", 1000, 2048),
        ["head.fc.fc2"],
    ),
    "CLIP tower: projection head whose size is also a width": (
        vit_body(512) | linear("head", 512, 512, bias=False),
        ["head"],
    ),
    "DDP module. prefix, projection head": (
        {f"module.{k}": v for k, v in (vit_body(512) | linear("head", 512, 512)).items()},
        ["module.head"],
    ),
    "DDP module. prefix, plain head": (
        {f"module.{k}": v for k, v in (resnet_body() | linear("fc", 1000, 2048)).items()},
        ["module.fc"],
    ),
    "class count equal to a hidden width (rdnet: 1000 channels inside)": (
        resnet_body(final=1760)
        | bn("dense.8.0", 1000)
        | conv("dense.8.1", 496, 1000, 1)
        | linear("head.fc", 1000, 1760),
        ["head.fc"],
    ),
    "gated MLP fc1 with an unused size is not a head (gMLP)": (
        vit_body(256) | linear("blocks.0.mlp_channels.fc1", 1536, 256) | linear("head", 1000, 256),
        ["head"],
    ),
}


@pytest.mark.parametrize("case", list(HEAD_CASES))
def test_find_heads(case):
    shapes, expected = HEAD_CASES[case]
    for variant in orders(shapes):
        assert heads_of(variant) == expected, case


def test_head_fields():
    shapes = resnet_body() | linear("fc", 1000, 2048)
    (head,) = find_heads(shapes)
    assert head == Head(
        prefix="fc",
        weight="fc.weight",
        bias="fc.bias",
        num_classes=1000,
        in_features=2048,
        kind="linear",
        reason=head.reason,
        role="main",
    )
    assert "1000 outputs" in head.reason and "'fc'" in head.reason


def test_head_fields_conv_no_bias_and_roles():
    (head,) = find_heads(resnet_body(final=512) | conv("fc", 1000, 512, 1))
    assert (head.kind, head.bias, head.num_classes, head.in_features) == ("conv1x1", None, 1000, 512)
    shapes, _ = HEAD_CASES["googlenet aux1.fc2 + aux2.fc2 + fc"]
    roles = {h.prefix: h.role for h in find_heads(shapes)}
    assert roles == {"aux1.fc2": "auxiliary", "aux2.fc2": "auxiliary", "fc": "main"}
    shapes, _ = HEAD_CASES["deit head + head_dist"]
    assert {h.prefix: h.role for h in find_heads(shapes)} == {"head": "main", "head_dist": "distillation"}
    assert all(h.reason for h in find_heads(shapes))


def test_reason_says_taken_by_name_for_projection_heads():
    shapes, _ = HEAD_CASES["CLIP tower: projection head whose size is also a width"]
    (head,) = find_heads(shapes)
    assert "taken by name" in head.reason


# --------------------------------------------------------------------------- heads: what is never taken


@pytest.mark.parametrize(
    "extra",
    [
        linear("pre_logits.fc1", 777, 2048),  # an unused size, but pre-logits
        conv("conv_head", 777, 2048, 1),
        linear("head.pre_logits", 777, 2048),
        {"head.norm.weight": (777,), "head.norm.bias": (777,)},
        bn("head.bn", 777),
        {"cls_token": (1, 1, 777), "dist_token": (1, 1, 777), "pos_embed": (1, 50, 777)},
        {"head.token_embed.weight": (777, 2048), "pos_embed.weight": (777, 2048)},
    ],
    ids=["pre_logits.fc1", "conv_head", "head.pre_logits", "head.norm", "head.bn", "tokens", "embeddings"],
)
def test_never_taken(extra):
    shapes = resnet_body() | extra | linear("fc", 1000, 2048)
    assert heads_of(shapes) == ["fc"]
    # and without the real head they do not become heads either
    without = {k: v for k, v in shapes.items() if not k.startswith("fc.")}
    with pytest.raises(SurgeonError):
        find_heads(without)


def test_headless_checkpoint_raises():
    with pytest.raises(SurgeonError) as e:
        find_heads(vit_body())  # a ViT feature extractor (num_classes=0)
    assert "no classifier head found" in e.value.message
    assert "--head" in e.value.hint


def test_disagreeing_heads_raise_with_candidates_and_shapes():
    shapes = vit_body() | linear("head", 1000, 192) | linear("head_dist", 10, 192)
    for variant in orders(shapes):
        with pytest.raises(SurgeonError) as e:
            find_heads(variant)
        msg = e.value.message
        assert "disagree on the class count" in msg
        assert "head [1000, 192]" in msg and "head_dist [10, 192]" in msg
        assert "--head" in e.value.hint


def test_aux_head_disagreeing_with_main_head_raises():
    shapes, _ = HEAD_CASES["inception_v3 AuxLogits.fc + fc"]
    shapes = dict(shapes) | linear("AuxLogits.fc", 10, 768)
    with pytest.raises(SurgeonError, match=r"AuxLogits.fc \[10, 768\].*fc \[1000, 2048\]"):
        find_heads(shapes)


def test_undecidable_head_lists_candidates():
    # nothing is named like a classifier; two unrelated layers end in unused sizes
    shapes = resnet_body() | linear("out_a", 1000, 2048) | linear("out_b", 7, 2048)
    with pytest.raises(SurgeonError) as e:
        find_heads(shapes)
    msg = e.value.message
    assert "cannot tell which layers are the classifier heads" in msg
    assert "out_a [1000, 2048]" in msg and "out_b [7, 2048]" in msg
    assert "--head" in e.value.hint


def test_unnamed_unique_layer_is_a_candidate_not_a_guess():
    # a feature extractor's last projection (Qwen's merger.fc2) must not be taken as a head
    shapes = vit_body() | ln("merger.norm", 192) | linear("merger.fc1", 768, 768) | linear("merger.fc2", 1024, 768)
    with pytest.raises(SurgeonError, match=r"candidates: merger.fc2 \[1024, 768\]"):
        find_heads(shapes)


def test_head_named_layers_of_different_sizes_sharing_widths_raise():
    # no unused size, and two conventional head names disagree (neither feeds the other)
    shapes = vit_body(512) | linear("head", 1536, 2048) | linear("classifier", 512, 2048)
    with pytest.raises(SurgeonError, match="head-named layers have different output sizes"):
        find_heads(shapes)


# --------------------------------------------------------------------------- heads: --head


def test_names_override():
    shapes = resnet_body() | linear("fc", 1000, 2048) | linear("my.out", 1000, 2048, bias=False)
    heads = find_heads(shapes, names=["my.out"])
    assert [(h.prefix, h.bias, h.kind) for h in heads] == [("my.out", None, "linear")]
    assert "--head" in heads[0].reason
    assert heads_of(shapes, names=["fc.weight", "my.out", "fc"]) == ["fc", "my.out"]  # .weight ok, dedup, sorted


def test_names_override_accepts_conv1x1():
    shapes = resnet_body(final=512) | conv("classifier.1", 1000, 512, 1, bias=True)
    (head,) = find_heads(shapes, names=["classifier.1"])
    assert head.kind == "conv1x1" and head.bias == "classifier.1.bias"


def test_names_override_unknown_suggests_closest():
    shapes = vit_body() | linear("head", 1000, 192) | linear("head_dist", 1000, 192)
    with pytest.raises(SurgeonError) as e:
        find_heads(shapes, names=["head_dst"])
    assert "--head head_dst" in e.value.message and "no tensor head_dst.weight" in e.value.message
    assert "head_dist" in e.value.hint


def test_names_override_wrong_shape_suggests_classifier_shaped():
    shapes = resnet_body() | linear("fc", 1000, 2048)
    with pytest.raises(SurgeonError) as e:
        find_heads(shapes, names=["conv1"])  # a 7x7 conv
    assert "[64, 3, 7, 7]" in e.value.message and "not [N, C] or [N, C, 1, 1]" in e.value.message
    assert e.value.hint.startswith("closest classifier-shaped layers: ")  # difflib: layer4.1.conv1, ...
    assert e.value.hint.endswith("; detected heads: fc")
    with pytest.raises(SurgeonError) as e:
        find_heads(shapes, names=["bn1"])  # a 1-D norm: not a layer at all
    assert "bn1" in e.value.message


def test_names_override_suggests_by_last_component():
    shapes = resnet_body() | ln("head.norm", 2048) | linear("head.fc", 1000, 2048)
    with pytest.raises(SurgeonError) as e:
        find_heads(shapes, names=["fc"])
    assert "head.fc" in e.value.hint


def test_names_override_disagreeing_raise():
    shapes = vit_body() | linear("head", 1000, 192) | linear("aux", 10, 192)
    with pytest.raises(SurgeonError, match=r"named heads disagree on the class count \(10, 1000\)"):
        find_heads(shapes, names=["head", "aux"])


# --------------------------------------------------------------------------- stems: what is taken


def s2d_body() -> dict:
    return conv("body.conv1.conv", 64, 48) | bn("body.conv1.bn", 64) | conv("body.layer1.0.conv1.conv", 64, 64)


STEM_CASES = {
    "conv1": (resnet_body(), ["conv1"]),
    "conv1.0 (deep stem)": (
        conv("conv1.0", 32, 3) | bn("conv1.1", 32) | conv("conv1.3", 32, 32) | conv("conv1.6", 64, 32) | bn("bn1", 64),
        ["conv1.0"],
    ),
    "conv_stem": (conv("conv_stem", 32, 3) | bn("bn1", 32) | conv("blocks.0.0.conv_dw", 32, 1), ["conv_stem"]),
    "stem.conv": (conv("stem.conv", 64, 3, 7) | bn("stem.bn", 64) | conv("stages.0.conv", 64, 64), ["stem.conv"]),
    "stem.0": (
        conv("stem.0", 96, 3, 4, bias=True) | ln("stem.1", 96) | conv("stages.0.blocks.0.conv_dw", 96, 1, 7),
        ["stem.0"],
    ),
    "stem.conv1": (conv("stem.conv1", 32, 3) | conv("stem.conv2", 64, 32), ["stem.conv1"]),
    "stem.conv1.linear (LeViT)": (
        conv("stem.conv1.linear", 16, 3) | conv("stem.conv2.linear", 32, 16),
        ["stem.conv1.linear"],
    ),
    "features.0 (VGG)": (conv("features.0", 64, 3, bias=True) | conv("features.2", 64, 64, bias=True), ["features.0"]),
    "features.0.0 (torchvision EfficientNet)": (
        conv("features.0.0", 32, 3) | bn("features.0.1", 32) | conv("features.1.0.block.0.0", 32, 1),
        ["features.0.0"],
    ),
    "features.conv0 (DenseNet)": (conv("features.conv0", 64, 3, 7) | bn("features.norm0", 64), ["features.conv0"]),
    "Conv2d_1a_3x3.conv (Inception v3)": (
        conv("Conv2d_1a_3x3.conv", 32, 3)
        | conv("Conv2d_2a_3x3.conv", 32, 32)
        | conv("Mixed_5b.branch1x1.conv", 64, 192, 1),
        ["Conv2d_1a_3x3.conv"],
    ),
    "conv2d_1a.conv (Inception-ResNet v2)": (
        conv("conv2d_1a.conv", 32, 3) | conv("conv2d_2a.conv", 32, 32),
        ["conv2d_1a.conv"],
    ),
    "base_layer.0 (DLA)": (
        conv("base_layer.0", 16, 3, 7) | bn("base_layer.1", 16) | conv("level0.0", 16, 16),
        ["base_layer.0"],
    ),
    "patch_embed.proj": (vit_body(), ["patch_embed.proj"]),
    "patch_embed1.proj (PVT v2)": (
        conv("patch_embed1.proj", 64, 3, 7, bias=True) | conv("patch_embed2.proj", 128, 64, bias=True),
        ["patch_embed1.proj"],
    ),
    "patch_embed.conv": (
        conv("patch_embed.conv", 96, 3, 4, bias=True) | ln("patch_embed.norm", 96),
        ["patch_embed.conv"],
    ),
    "transformers vit.embeddings.patch_embeddings.projection": (
        conv("vit.embeddings.patch_embeddings.projection", 768, 3, 16, bias=True) | linear("classifier", 1000, 768),
        ["vit.embeddings.patch_embeddings.projection"],
    ),
    "FastViT two parallel stems": (
        conv("stem.0.conv_kxk.0.conv", 64, 3)
        | bn("stem.0.conv_kxk.0.bn", 64)
        | conv("stem.0.conv_scale.conv", 64, 3, 1)
        | conv("stem.1.conv_kxk.0.conv", 64, 1)
        | conv("stem.2.conv_kxk.0.conv", 64, 64, 1),
        ["stem.0.conv_kxk.0.conv", "stem.0.conv_scale.conv"],
    ),
    "RepVGG stem.conv_kxk + stem.conv_1x1": (
        conv("stem.conv_kxk.conv", 64, 3)
        | conv("stem.conv_1x1.conv", 64, 3, 1)
        | conv("stages.0.0.conv_kxk.conv", 64, 64),
        ["stem.conv_1x1.conv", "stem.conv_kxk.conv"],
    ),
    "CrossViT two patch embeddings": (
        conv("patch_embed.0.proj", 192, 3, 12, bias=True) | conv("patch_embed.1.proj", 384, 3, 16, bias=True),
        ["patch_embed.0.proj", "patch_embed.1.proj"],
    ),
    "DPN: grouped convs with 3 channels per group are not stems": (
        conv("features.conv1_1.conv", 64, 3, 7)
        | conv("features.conv2_1.c1x1_a.conv", 96, 64, 1)
        | conv("features.conv2_1.c3x3_b.conv", 96, 3)
        | conv("features.conv2_2.c3x3_b.conv", 96, 3)
        | conv("features.conv3_1.c3x3_b.conv", 192, 6),
        ["features.conv1_1.conv"],
    ),
    "grouped conv deep in a ResNeXt is not a stem": (
        resnet_body() | conv("layer3.0.conv2", 192, 3),
        ["conv1"],
    ),
}


@pytest.mark.parametrize("case", list(STEM_CASES))
def test_find_stems(case):
    shapes, expected = STEM_CASES[case]
    for variant in orders(shapes):
        assert stems_of(variant) == expected, case


def test_stem_fields():
    (stem,) = find_stems(resnet_body())
    assert stem == Stem(
        prefix="conv1",
        weight="conv1.weight",
        bias=None,
        in_chans=3,
        groups_of=1,
        reason=stem.reason,
        kind="conv",
        out_chans=64,
    )
    assert stem.reason
    (stem,) = find_stems(vit_body())
    assert stem.bias == "patch_embed.proj.bias"


def test_space_to_depth_stem():
    for variant in orders(s2d_body()):
        (stem,) = find_stems(variant)
        assert (stem.prefix, stem.in_chans, stem.groups_of, stem.kind) == ("body.conv1.conv", 48, 16, "conv")
        assert "space-to-depth" in stem.reason


def test_space_to_depth_needs_an_unproduced_channel_count():
    # 48 channels that another layer produces: a body conv, not an image reader
    shapes = s2d_body() | conv("other", 48, 64, 1)
    with pytest.raises(SurgeonError, match="no input convolution found"):
        find_stems(shapes)


def test_linear_patch_embedding_stem():
    # NaFlexViT: Linear over flattened 16x16x3 patches, no conv anywhere
    shapes = linear("embeds.proj", 768, 768) | {"embeds.pos_embed": (1, 16, 16, 768)}
    shapes |= linear("blocks.0.attn.qkv", 2304, 768) | linear("head", 1000, 768)
    (stem,) = find_stems(shapes)
    assert (stem.prefix, stem.kind, stem.in_chans, stem.groups_of) == ("embeds.proj", "linear", 768, 256)
    assert "16x16" in stem.reason
    # SigLIP 2 in transformers
    shapes = linear("vision_model.embeddings.patch_embedding", 768, 768) | linear(
        "vision_model.encoder.layers.0.mlp.fc1", 3072, 768
    )
    assert stems_of(shapes) == ["vision_model.embeddings.patch_embedding"]


def test_text_embedding_table_is_not_a_stem():
    shapes = {"embeddings.word_embeddings.weight": (30522, 768)} | linear(
        "encoder.layer.0.attention.self.query", 768, 768
    )
    with pytest.raises(SurgeonError, match="no input convolution found") as e:
        find_stems(shapes)
    assert "no 4-D conv weight" in e.value.message and "--conv" in e.value.hint


def test_no_stem_lists_fewest_input_convs():
    shapes = conv("stem_dct.conv_y", 24, 64, 1) | conv("stages.0.0.dwconv", 32, 1, 7)  # CSATv2: a DCT stem
    with pytest.raises(SurgeonError) as e:
        find_stems(shapes)
    assert "stages.0.0.dwconv [32, 1, 7, 7]" in e.value.message


def test_ambiguous_stems_raise_with_candidates():
    shapes = conv("encoder_a.conv", 64, 3) | conv("encoder_b.conv", 32, 3) | conv("fuse", 64, 96, 1)
    for variant in orders(shapes):
        with pytest.raises(SurgeonError) as e:
            find_stems(variant)
        msg = e.value.message
        assert "cannot tell which convs read the image" in msg
        assert "encoder_a.conv [64, 3, 3, 3]" in msg and "encoder_b.conv [32, 3, 3, 3]" in msg
        assert "--conv" in e.value.hint


def test_base_chans_one_skips_depthwise_convs():
    # a grayscale MobileNet: every depthwise conv also reads one channel (per group)
    shapes = (
        conv("conv_stem", 32, 1)
        | bn("bn1", 32)
        | conv("blocks.0.0.conv_dw", 32, 1)
        | conv("blocks.0.0.conv_pw", 16, 32, 1)
        | conv("blocks.1.0.conv_dw", 96, 1)
    )
    assert stems_of(shapes, base_chans=1) == ["conv_stem"]
    # torchvision layout: the depthwise conv follows in the same Sequential with the same width
    shapes = conv("features.0.0", 32, 1) | bn("features.0.1", 32) | conv("features.1.conv.0.0", 32, 1)
    assert stems_of(shapes, base_chans=1) == ["features.0.0"]


def test_base_chans_other_than_three():
    shapes = conv("conv1", 64, 4, 7) | conv("layer1.0.conv1", 64, 64, 1)
    (stem,) = find_stems(shapes, base_chans=4)
    assert (stem.in_chans, stem.groups_of) == (4, 1)
    with pytest.raises(SurgeonError):
        find_stems(shapes)  # nothing reads 3 channels
    with pytest.raises(SurgeonError, match="positive"):
        find_stems(shapes, base_chans=0)


# --------------------------------------------------------------------------- stems: --conv


def test_conv_names_override():
    shapes = resnet_body()
    stems = find_stems(shapes, names=["layer1.0.conv2.weight", "conv1"])
    assert [(s.prefix, s.in_chans) for s in stems] == [("conv1", 3), ("layer1.0.conv2", 64)]
    assert "--conv" in stems[0].reason


def test_conv_names_override_errors_suggest_convs():
    shapes = resnet_body() | linear("fc", 1000, 2048)
    with pytest.raises(SurgeonError) as e:
        find_stems(shapes, names=["conv_1"])
    assert "no tensor conv_1.weight" in e.value.message and "conv1" in e.value.hint
    with pytest.raises(SurgeonError) as e:
        find_stems(shapes, names=["fc"])
    assert "[1000, 2048], not a 4-D conv weight" in e.value.message
    assert e.value.hint.startswith("closest conv layers: conv1, ")
    assert e.value.hint.endswith("; detected stems: conv1")


def test_conv_names_override_accepts_linear_patch_embedding():
    shapes = linear("embeds.proj", 768, 768) | linear("blocks.0.attn.qkv", 2304, 768)
    (stem,) = find_stems(shapes, names=["embeds.proj"])
    assert stem.kind == "linear" and stem.groups_of == 256
    with pytest.raises(SurgeonError, match="not a 4-D conv weight"):
        find_stems(shapes, names=["blocks.0.attn.qkv"])


def test_bad_shape_values_raise():
    with pytest.raises(SurgeonError, match="no usable shape"):
        find_heads({"fc.weight": 7})


def test_linear_patch_embedding_layouts():
    # Gemma4 ViT flattens patches channel-first; an unknown name says so rather than guess
    shapes = linear("encoder.patch_embed.input_proj", 768, 768, bias=False) | linear(
        "encoder.blocks.0.mlp.fc1", 3072, 768
    )
    (stem,) = find_stems(shapes)
    assert (stem.kind, stem.layout) == ("linear", "chw") and "channel slowest" in stem.reason
    (stem,) = find_stems(linear("embeds.proj", 768, 768))
    assert stem.layout == "hwc"
    (stem,) = find_stems(linear("patch_embed.proj", 768, 768))
    assert stem.layout == "unknown" and "value order unknown" in stem.reason
    (stem,) = find_stems(resnet_body())
    assert stem.layout is None


def test_identical_convs_in_one_stem_are_not_taken_as_parallel():
    # transformers MobileNetV2 cut to one channel: the stem conv and the depthwise conv after it
    shapes = conv("mobilenet_v2.conv_stem.first_conv.convolution", 32, 1) | conv(
        "mobilenet_v2.conv_stem.conv_3x3.convolution", 32, 1
    )
    with pytest.raises(SurgeonError, match="not parallel branches of one stem"):
        find_stems(shapes, base_chans=1)


def test_head_named_chain_takes_the_last_layer():
    # CPU-bone / InceptionNeXt with a class count that is also a width: head.fc1 feeds head.fc2
    shapes = resnet_body() | conv("stages.0.dw", 10, 1) | linear("head.fc1", 960, 2048) | ln("head.norm", 960)
    shapes |= linear("head.fc2", 10, 960)
    assert heads_of(shapes) == ["head.fc2"]


def test_detect_imports_only_the_standard_library():
    """detect works on names and shapes: no torch, no numpy, nothing outside the stdlib."""
    import ckptsurgeon.detect as detect

    tree = ast.parse(Path(detect.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "ckptsurgeon.errors":
            roots.add(node.module.split(".")[0])
    assert roots <= set(sys.stdlib_module_names), roots - set(sys.stdlib_module_names)
