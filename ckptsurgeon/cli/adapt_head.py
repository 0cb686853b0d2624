"""``adapt-head``: give a checkpoint's classifier head(s) a new class count before fine-tuning.

Examples:
    ckptsurgeon adapt-head resnet.safetensors resnet7.safetensors --num-classes 7
    ckptsurgeon adapt-head tf_1001.pth tf_1000.safetensors --num-classes 1000     # background row 0 removed
    ckptsurgeon adapt-head vit.pth vit7.pt --num-classes 7 --mode reinit --seed 1
    ckptsurgeon adapt-head vit.pth vit12.pt --num-classes 12 --mode extend
    ckptsurgeon adapt-head resnet.pth sub.safetensors --keep-classes 0,5,9
    ckptsurgeon adapt-head resnet.pth sub.safetensors --keep-classes @classes.txt
    ckptsurgeon adapt-head deit.pth deit7.pth --num-classes 7 --head head --head head_dist --dry-run
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from ckptsurgeon.cli import _options as o
from ckptsurgeon.cli._run import WriteOptions, run_pipeline, writing_command
from ckptsurgeon.errors import SurgeonError

NumClassesOpt = Annotated[
    Optional[int],
    typer.Option(
        "--num-classes",
        "-n",
        help="The new class count (default with --keep-classes: the number kept).",
        show_default=False,
    ),
]
ModeOpt = Annotated[
    str,
    typer.Option(
        "--mode",
        help="drop: remove heads whose class count differs, as timm does (load with strict=False); "
        "reinit: new head tensors of the right shape; extend: keep every row and append new ones up to N.",
    ),
]
HeadOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--head",
        metavar="NAME",
        help="Layer prefix of a head to adapt, e.g. fc or head_dist (repeatable; default: detected).",
        show_default=False,
    ),
]
LabelOffsetOpt = Annotated[
    Optional[int],
    typer.Option(
        "--label-offset",
        help="Keep rows K:K+N (drop), skip the first K rows (extend), or shift --keep-classes indices by K. "
        "Unset, a head with exactly N+1 rows loses row 0 (background class of old TF weights).",
        show_default=False,
    ),
]
KeepClassesOpt = Annotated[
    Optional[str],
    typer.Option(
        "--keep-classes",
        help="Pretrained rows to keep, in this order: '0,5,9', ranges '10-19', or @FILE with one index per line, "
        "optionally followed by a class name (stored as 'class_names' in .safetensors metadata).",
        show_default=False,
    ),
]
InitOpt = Annotated[
    Optional[str],
    typer.Option(
        "--init",
        help="How new rows are made (reinit, extend): torch-default (as nn.Linear/nn.Conv2d), zeros, normal, "
        "trunc-normal (cut at ±2 std). Default: torch-default.",
        show_default=False,
    ),
]
StdOpt = Annotated[
    Optional[float],
    typer.Option(
        "--std",
        help="Standard deviation for --init normal (default 0.01) and trunc-normal (default 0.02).",
        show_default=False,
    ),
]
SeedOpt = Annotated[
    Optional[int],
    typer.Option(
        "--seed", help="Seed for new rows (default 0): the same seed gives the same bits.", show_default=False
    ),
]


def adapt_head(
    src: o.SrcArg,
    dst: o.DstArg,
    num_classes: NumClassesOpt = None,
    mode: ModeOpt = "drop",
    head: HeadOpt = None,
    label_offset: LabelOffsetOpt = None,
    keep_classes: KeepClassesOpt = None,
    init: InitOpt = None,
    std: StdOpt = None,
    seed: SeedOpt = None,
    *,
    opts: WriteOptions,
) -> None:
    """Adapt classifier head(s) to --num-classes N: drop (timm's rule), reinit, extend, or keep chosen rows."""
    from ckptsurgeon.formats.writer import output_format
    from ckptsurgeon.transforms.head import AdaptHead

    if mode == "drop" and (init is not None or std is not None or seed is not None):
        given = next(f for f, v in (("--init", init), ("--std", std), ("--seed", seed)) if v is not None)
        raise SurgeonError(
            f"{given} sets how new rows are made; --mode drop makes none", hint="add --mode reinit or extend"
        )
    indices, names = _keep_classes(keep_classes)
    step = AdaptHead(
        num_classes,
        mode=mode,
        heads=head,
        label_offset=label_offset,
        keep_classes=indices,
        class_names=names,
        init=init or "torch-default",
        std=std,
        seed=0 if seed is None else seed,
    )
    report = run_pipeline([step], src, dst, opts)
    if names and not opts.quiet and output_format(str(dst)) != "safetensors":
        where = "would not be" if report.dry_run else "were not"
        sys.stderr.write(
            f"ckptsurgeon: note: the class names {where} stored: a .pt output holds tensors only "
            "(write .safetensors to keep them as 'class_names' metadata)\n"
        )


def _keep_classes(spec: str | None) -> tuple[list[int] | None, list[str] | None]:
    """Indices (and names, from an @FILE) of --keep-classes; the CLI reads the file, the transform never does."""
    from ckptsurgeon.transforms.head import parse_class_file, parse_class_spec

    if spec is None:
        return None, None
    if not spec.startswith("@"):
        return parse_class_spec(spec), None
    path = spec[1:]
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise SurgeonError("--keep-classes file not found", path=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SurgeonError(f"--keep-classes file cannot be read: {e}", path=path) from None
    return parse_class_file(text, source=path)


def register(app: typer.Typer) -> None:
    app.command("adapt-head", help=adapt_head.__doc__)(writing_command(adapt_head))
