"""``adapt-stem``: fit the input convolution(s) of an RGB checkpoint to another number of channels.

Examples:
    ckptsurgeon adapt-stem resnet.safetensors gray.safetensors --in-chans 1
    ckptsurgeon adapt-stem vit.pth rgbd.safetensors --in-chans 4 --strategy rgb-first --extra-init zero
    ckptsurgeon adapt-stem s2.safetensors s2x2.safetensors --in-chans 26 --base-chans 13
    ckptsurgeon adapt-stem model.pth out.pth --in-chans 2 --conv encoder.stem.conv --conv aux.stem
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ckptsurgeon.cli import _options as o
from ckptsurgeon.cli._run import WriteOptions, run_pipeline, writing_command

InChansOpt = Annotated[
    int,
    typer.Option(
        "--in-chans", help="New number of input channels C (1 = grayscale, 4 = RGB+depth, ...).", show_default=False
    ),
]
StrategyOpt = Annotated[
    str,
    typer.Option(
        "--strategy",
        help="timm: exactly as timm (C=1 sums the channels; else repeat and scale by B/C). "
        "mean: every channel is the channel mean scaled by B/C. "
        "rgb-first: keep the B channels, add C-B new ones (--extra-init).",
    ),
]
ExtraInitOpt = Annotated[
    Optional[str],
    typer.Option(
        "--extra-init",
        help="rgb-first only: the extra channels start as the channel mean (default) or zero.",
        show_default=False,
    ),
]
BaseChansOpt = Annotated[
    int, typer.Option("--base-chans", help="Input channels B the stem was trained on (13 for a Sentinel-2 stem).")
]
ConvOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--conv",
        metavar="NAME",
        help="Stem to adapt, by weight or module name (repeatable); overrides detection.",
        show_default=False,
    ),
]
AllowDropOpt = Annotated[
    bool, typer.Option("--allow-drop", help="Drop a stem timm cannot adapt (as timm does) instead of failing.")
]


def adapt_stem(
    src: o.SrcArg,
    dst: o.DstArg,
    in_chans: InChansOpt,
    strategy: StrategyOpt = "timm",
    extra_init: ExtraInitOpt = None,
    base_chans: BaseChansOpt = 3,
    conv: ConvOpt = None,
    allow_drop: AllowDropOpt = False,
    *,
    opts: WriteOptions,
) -> None:
    """Adapt the stem to --in-chans input channels (grayscale, RGB+depth, multispectral); default: as timm."""
    from ckptsurgeon.errors import SurgeonError
    from ckptsurgeon.transforms.stem import AdaptStem

    if extra_init is not None and strategy != "rgb-first":
        raise SurgeonError(f"--extra-init applies to --strategy rgb-first only, not {strategy!r}")
    # built before any tensor is read: bad option values fail here
    step = AdaptStem(
        in_chans,
        strategy=strategy,
        base_chans=base_chans,
        convs=conv,
        allow_drop=allow_drop,
        extra_init=extra_init or "mean",
    )
    run_pipeline([step], src, dst, opts)


def register(app: typer.Typer) -> None:
    app.command("adapt-stem", help=adapt_stem.__doc__)(writing_command(adapt_stem))
