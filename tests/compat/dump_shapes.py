"""Dump tensor name -> shape maps of every timm and torchvision classification model.

Models are built on the ``meta`` device (no memory, no weights, no network), so the whole
of timm takes a few minutes on one core.  The dumps feed ``test_detect_all.py``, which
checks ``ckptsurgeon.detect`` against what timm's ``pretrained_cfg`` (``classifier``,
``first_conv``) and torchvision's module structure say the heads and stems are.

Usage (needs torch, torchvision and timm; the project's ``.venv-compat``)::

    python tests/compat/dump_shapes.py /tmp/timm_shapes.json            # timm
    python tests/compat/dump_shapes.py --torchvision /tmp/tv_shapes.json
    python tests/compat/dump_shapes.py --transformers /tmp/hf_shapes.json
    python tests/compat/dump_shapes.py --jobs 2 --num-classes 10 /tmp/timm_shapes_10.json
    python tests/compat/dump_shapes.py /tmp/timm_shapes.json resnet50 vit_base_patch16_224

Output (timm)::

    {"__meta__": {"timm": "1.0.x", "torch": "...", "failed": {name: "Error: why"}},
     "resnet50": {"shapes": {"conv1.weight": [64, 3, 7, 7], ...},   # state_dict order
                  "classifier": "fc", "first_conv": "conv1",
                  "num_classes": 1000, "label_offset": null}, ...}

Output (torchvision): the same, where ``classifier`` is the list of true head prefixes
(every ``nn.Linear`` / 1x1 ``nn.Conv2d`` whose output size is the model's class count,
auxiliary heads included) and ``first_conv`` the first ``nn.Conv2d`` in module order that
reads 3 channels, both read off the built module.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any

FORMAT_VERSION = 1


def _versions() -> dict[str, str]:
    import torch

    out = {"torch": torch.__version__, "format": str(FORMAT_VERSION)}
    try:
        import timm

        out["timm"] = timm.__version__
    except ImportError:  # pragma: no cover - compat venv always has timm
        pass
    try:
        import torchvision

        out["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


class _EmptyParams:
    """Build with real CPU compute but parameters/buffers moved to meta as registered.

    A fallback for models whose ``__init__`` computes with tensors (``.tolist()``,
    ``.item()``) and so cannot run under ``torch.device("meta")`` (torchvision RegNet):
    each layer's tensors are allocated on CPU, then swapped for meta ones at once, so the
    whole model never sits in memory and initialisation runs on meta (no work).
    """

    def __enter__(self):
        from torch import nn

        self._reg_p = nn.Module.register_parameter
        self._reg_b = nn.Module.register_buffer
        reg_p, reg_b = self._reg_p, self._reg_b

        def register_parameter(module, name, param):
            reg_p(module, name, param)
            if param is not None:
                p = module._parameters[name]
                kwargs = dict(p.__dict__)
                kwargs["requires_grad"] = p.requires_grad
                module._parameters[name] = type(p)(p.to("meta"), **kwargs)

        def register_buffer(module, name, tensor, persistent=True):
            reg_b(module, name, tensor, persistent=persistent)
            if tensor is not None:
                module._buffers[name] = module._buffers[name].to("meta")

        nn.Module.register_parameter = register_parameter
        nn.Module.register_buffer = register_buffer
        return self

    def __exit__(self, *exc):
        from torch import nn

        nn.Module.register_parameter = self._reg_p
        nn.Module.register_buffer = self._reg_b
        return False


# In-place value ops that weight initialisation uses. On meta tensors they do nothing, but
# each still runs torch's Python meta kernels (timm's trunc_normal_ alone is about half of a
# meta build), so _SkipMetaInit answers them directly. None of them changes a shape.
_VALUE_INPLACE = frozenset(
    [
        "normal_",
        "uniform_",
        "trunc_normal_",
        "fill_",
        "zero_",
        "zeros_",
        "ones_",
        "constant_",
        "clamp_",
        "clamp_min_",
        "clamp_max_",
        "erfinv_",
        "mul_",
        "add_",
        "sub_",
        "div_",
        "copy_",
        "exponential_",
        "bernoulli_",
        "random_",
        "cauchy_",
        "log_normal_",
        "geometric_",
        "masked_fill_",
        "fmod_",
        "sqrt_",
        "neg_",
        "abs_",
        "exp_",
        "log_",
        "pow_",
        "addcmul_",
        "addcdiv_",
        "xavier_uniform_",
        "xavier_normal_",
        "kaiming_uniform_",
        "kaiming_normal_",
        "orthogonal_",
        "eye_",
        "dirac_",
        "sparse_",
        "lerp_",
        "reciprocal_",
        "tanh_",
        "sign_",
    ]
)


def _skip_meta_init_mode():
    from torch.overrides import TorchFunctionMode

    class _SkipMetaInit(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if getattr(func, "__name__", "") in _VALUE_INPLACE:
                # Tensor methods pass the tensor first; torch.nn.init passes tensor=...
                first = args[0] if args else kwargs.get("tensor")
                if getattr(first, "is_meta", False):
                    return first
            return func(*args, **kwargs)

    return _SkipMetaInit()


def _build(factory, name: str, **kwargs):
    """``factory(name, **kwargs)`` on meta; on failure retry with :class:`_EmptyParams`.

    Returns ``(model, note)``, note saying when the fallback was needed.
    """
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"), _skip_meta_init_mode():
                return factory(name, **kwargs), None
        except Exception as e:  # noqa: BLE001
            note = f"meta build failed ({type(e).__name__}: {str(e)[:120]}); built with CPU compute, meta params"
        with _EmptyParams(), _skip_meta_init_mode():
            return factory(name, **kwargs), note


def _shapes(model) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _plain(value: Any) -> Any:
    """JSON-friendly copy of a pretrained_cfg field (tuples -> lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dump_timm_one(name: str, num_classes: int | None = None) -> dict[str, Any]:
    """One timm architecture; ``num_classes`` overrides the pretrained_cfg class count."""
    import timm

    kwargs: dict[str, Any] = {"pretrained": False}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model, note = _build(timm.create_model, name, **kwargs)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    return {
        "shapes": _shapes(model),
        "classifier": _plain(cfg.get("classifier")),
        "first_conv": _plain(cfg.get("first_conv")),
        "num_classes": cfg.get("num_classes", getattr(model, "num_classes", None)),
        "model_num_classes": getattr(model, "num_classes", None),
        "label_offset": cfg.get("label_offset"),
        "in_chans": getattr(model, "in_chans", None) or (cfg.get("input_size") or [None])[0],
        "note": note,
    }


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def _timm_chunk(args: tuple[list[str], int | None]) -> tuple[dict[str, Any], dict[str, str]]:
    names, num_classes = args
    out: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name in names:
        try:
            out[name] = dump_timm_one(name, num_classes)
        except Exception as e:  # noqa: BLE001 - recorded, reported by the test
            failed[name] = _why(e)
    return out, failed


def dump_timm(
    names: list[str] | None = None,
    progress: bool = False,
    num_classes: int | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Build every timm architecture (or ``names``) on meta; failures go to ``__meta__``.

    ``jobs > 1`` builds in that many forked worker processes (chunks of 25 models); the
    result keeps ``names`` order either way.
    """
    import timm

    names = list(names) if names else timm.list_models()
    out: dict[str, Any] = {}
    failed: dict[str, str] = {}
    t0 = time.monotonic()
    chunks = [(names[i : i + 25], num_classes) for i in range(0, len(names), 25)]
    if jobs > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(jobs) as pool:
            results = pool.imap(_timm_chunk, chunks)
            parts = []
            for i, part in enumerate(results):
                parts.append(part)
                if progress and (i + 1) % 4 == 0:
                    print(
                        f"  timm {min((i + 1) * 25, len(names))}/{len(names)} ({time.monotonic() - t0:.0f}s)",
                        file=sys.stderr,
                    )
    else:
        parts = []
        for i, chunk in enumerate(chunks):
            parts.append(_timm_chunk(chunk))
            if progress and (i + 1) % 4 == 0:
                print(
                    f"  timm {min((i + 1) * 25, len(names))}/{len(names)} ({time.monotonic() - t0:.0f}s)",
                    file=sys.stderr,
                )
    for built, bad in parts:
        out.update(built)
        failed.update(bad)
    ordered = {name: out[name] for name in names if name in out}
    ordered["__meta__"] = {**_versions(), "failed": failed, "seconds": round(time.monotonic() - t0, 1)}
    return ordered


def _tv_truth(model, num_classes: int) -> tuple[list[str], str | None]:
    """True head prefixes and first image conv of a built torchvision model."""
    from torch import nn

    heads: list[str] = []
    first_conv = None
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and mod.out_features == num_classes:
            heads.append(mod_name)
        elif isinstance(mod, nn.Conv2d):
            if mod.out_channels == num_classes and tuple(mod.kernel_size) == (1, 1):
                heads.append(mod_name)
            if first_conv is None and mod.in_channels == 3:
                first_conv = mod_name
    return heads, first_conv


def dump_torchvision_one(name: str, num_classes: int = 1000) -> dict[str, Any]:
    import torchvision.models as tvm

    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=True, init_weights=False)
    model, note = _build(tvm.get_model, name, **kwargs)
    heads, first_conv = _tv_truth(model, num_classes)
    return {
        "shapes": _shapes(model),
        "classifier": heads,
        "first_conv": first_conv,
        "num_classes": num_classes,
        "label_offset": None,
        "in_chans": 3,
        "note": note,
    }


def dump_torchvision(names: list[str] | None = None, num_classes: int = 1000) -> dict[str, Any]:
    import torchvision.models as tvm

    names = list(names) if names else tvm.list_models(module=tvm)
    out: dict[str, Any] = {}
    failed: dict[str, str] = {}
    t0 = time.monotonic()
    for name in names:
        try:
            out[name] = dump_torchvision_one(name, num_classes)
        except Exception as e:  # noqa: BLE001
            failed[name] = _why(e)
    out["__meta__"] = {**_versions(), "failed": failed, "seconds": round(time.monotonic() - t0, 1)}
    return out


def transformers_classes() -> list[tuple[str, str]]:
    """(model type, class name) of every transformers image-classification model."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    pairs = []
    for model_type, classes in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.items():
        for cls in [classes] if isinstance(classes, str) else classes:
            pairs.append((model_type, cls))
    return pairs


def dump_transformers_one(model_type: str, cls_name: str, num_labels: int = 1000) -> dict[str, Any]:
    """A transformers image classifier from its default config (``num_labels`` classes) on meta;
    truth read off the module as for torchvision."""
    import transformers

    def factory(_name: str):
        config = transformers.AutoConfig.for_model(model_type)
        config.num_labels = num_labels
        return getattr(transformers, cls_name)(config)

    model, note = _build(factory, cls_name)
    heads, first_conv = _tv_truth(model, num_labels)
    return {
        "shapes": _shapes(model),
        "classifier": heads,
        "first_conv": first_conv,
        "num_classes": num_labels,
        "label_offset": None,
        "in_chans": 3,
        "note": note,
        "model_type": model_type,
    }


def dump_transformers(num_labels: int = 1000) -> dict[str, Any]:
    """Every transformers image-classification class, keyed by class name."""
    import logging

    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    out: dict[str, Any] = {}
    failed: dict[str, str] = {}
    t0 = time.monotonic()
    for model_type, cls_name in transformers_classes():
        try:
            out[cls_name] = dump_transformers_one(model_type, cls_name, num_labels)
        except Exception as e:  # noqa: BLE001
            failed[cls_name] = _why(e)
    out["__meta__"] = {
        **_versions(),
        "transformers": transformers.__version__,
        "failed": failed,
        "seconds": round(time.monotonic() - t0, 1),
    }
    return out


def write_json(data: dict[str, Any], path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output", help="JSON file to write")
    p.add_argument("names", nargs="*", help="only these architectures (default: all)")
    p.add_argument("--torchvision", action="store_true", help="dump torchvision instead of timm")
    p.add_argument("--transformers", action="store_true", help="dump transformers image classifiers instead")
    p.add_argument("--jobs", type=int, default=1, help="worker processes for timm (default 1)")
    p.add_argument("--num-classes", type=int, default=None, help="build with this class count instead of the default")
    args = p.parse_args(argv)
    if args.torchvision:
        data = dump_torchvision(args.names or None, num_classes=args.num_classes or 1000)
    elif args.transformers:
        data = dump_transformers(num_labels=args.num_classes or 1000)
    else:
        data = dump_timm(args.names or None, progress=True, num_classes=args.num_classes, jobs=args.jobs)
    write_json(data, args.output)
    meta = data["__meta__"]
    print(f"{len(data) - 1} models in {meta['seconds']}s -> {args.output}; {len(meta['failed'])} failed")
    for name, why in meta["failed"].items():
        print(f"  FAILED {name}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
