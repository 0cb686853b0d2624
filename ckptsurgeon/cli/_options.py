"""Option types shared by every command (Annotated aliases, as huggingface_hub's CLI does)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

SrcArg = Annotated[
    Path,
    typer.Argument(help="Source checkpoint: .safetensors, .pt/.pth/.bin, or a sharded folder.", show_default=False),
]
# str, not Path: Path("out/") drops the trailing '/' that asks for a sharded folder.
DstArg = Annotated[
    str,
    typer.Argument(
        help="Output file; its extension picks the format (.safetensors, .pt, .pth, .bin). "
        "A folder (or a path ending in '/') gets safetensors shards and model.safetensors.index.json.",
        show_default=False,
    ),
]
KeyOpt = Annotated[
    Optional[str],
    typer.Option(
        "--key",
        metavar="PATH",
        help="Dotted path of the state dict in a training checkpoint (default: as timm picks).",
        show_default=False,
    ),
]
StripPrefixOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--strip-prefix",
        metavar="PREFIX",
        help="Remove this leading prefix from every name that has it (repeatable), e.g. 'module.'.",
        show_default=False,
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace DST if it exists.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Report what would happen; write nothing.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of the table.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="List kept tensors too.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No report and no progress bar; errors only.")]
VerifyOpt = Annotated[bool, typer.Option("--verify", help="Reopen DST after writing and check every tensor.")]
FilterOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--filter",
        metavar="GLOB",
        help="Only names matching this glob (repeatable; any may match).",
        show_default=False,
    ),
]
AddPrefixOpt = Annotated[
    Optional[str],
    typer.Option("--add-prefix", metavar="PREFIX", help="Put this prefix before every name.", show_default=False),
]
RenameOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--rename",
        metavar="'REGEX=>REPL'",
        help="'REGEX=>REPLACEMENT' applied to every name (repeatable, in order; Python re syntax).",
        show_default=False,
    ),
]
SelectOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--select", metavar="GLOB", help="Keep only names matching this glob (repeatable).", show_default=False
    ),
]
DropOpt = Annotated[
    Optional[list[str]],
    typer.Option("--drop", metavar="GLOB", help="Drop names matching this glob (repeatable).", show_default=False),
]
DtypeOpt = Annotated[
    Optional[str],
    typer.Option(
        "--dtype",
        metavar="DTYPE",
        help="Cast floating tensors to float16, bfloat16 or float32 (integer and bool buffers keep theirs).",
        show_default=False,
    ),
]
MaxShardSizeOpt = Annotated[
    Optional[str],
    typer.Option(
        "--max-shard-size",
        metavar="SIZE",
        help="Split the output into shards of at most this size (5GB, 500MB, 2GiB), named and indexed as "
        "transformers does; one file if everything fits.",
        show_default=False,
    ),
]
