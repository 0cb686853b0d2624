"""ckptsurgeon: checkpoint surgery for PyTorch weights, on the CPU.

Library first; the ``ckptsurgeon`` command is a thin layer over these names. A Pipeline runs
transforms in order over a lazily opened checkpoint and writes once, atomically; ``state_dict``
returns the result in memory instead.

Example:
    >>> from ckptsurgeon import AdaptHead, AdaptStem, Pipeline, StripPrefix
    >>> steps = [StripPrefix("module."), AdaptHead(num_classes=7), AdaptStem(in_chans=1)]
    >>> report = Pipeline(steps).run("ddp.pth", "gray7.safetensors")
    >>> sd = Pipeline(steps).state_dict("ddp.pth")  # {name: tensor}, nothing written
"""

from __future__ import annotations

__version__ = "0.1.0"

from ckptsurgeon.checkpoint import Checkpoint, TensorRef
from ckptsurgeon.errors import SurgeonError
from ckptsurgeon.formats import open_checkpoint
from ckptsurgeon.pipeline import Pipeline
from ckptsurgeon.recipe import Recipe, load_recipe
from ckptsurgeon.report import Report
from ckptsurgeon.transforms import State, Transform
from ckptsurgeon.transforms.cast import Cast
from ckptsurgeon.transforms.head import AdaptHead
from ckptsurgeon.transforms.keys import AddPrefix, Drop, Rename, Select, StripPrefix
from ckptsurgeon.transforms.stem import AdaptStem

__all__ = [
    "AdaptHead",
    "AdaptStem",
    "AddPrefix",
    "Cast",
    "Checkpoint",
    "Drop",
    "Pipeline",
    "Recipe",
    "Rename",
    "Report",
    "Select",
    "State",
    "StripPrefix",
    "SurgeonError",
    "TensorRef",
    "Transform",
    "__version__",
    "load_recipe",
    "open_checkpoint",
]
