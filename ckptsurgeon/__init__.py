"""ckptsurgeon: checkpoint surgery for PyTorch weights, on the CPU.

Library first; the ``ckptsurgeon`` command is a thin layer over these names.

Example:
    >>> from ckptsurgeon import Pipeline, StripPrefix
    >>> report = Pipeline([StripPrefix("module.")]).run("ddp.pth", "plain.safetensors")
"""

from __future__ import annotations

__version__ = "0.1.0"

from ckptsurgeon.checkpoint import Checkpoint, TensorRef
from ckptsurgeon.errors import SurgeonError
from ckptsurgeon.formats import open_checkpoint
from ckptsurgeon.pipeline import Pipeline
from ckptsurgeon.report import Report
from ckptsurgeon.transforms import State, Transform
from ckptsurgeon.transforms.keys import StripPrefix

__all__ = [
    "Checkpoint",
    "Pipeline",
    "Report",
    "State",
    "StripPrefix",
    "SurgeonError",
    "TensorRef",
    "Transform",
    "open_checkpoint",
    "__version__",
]
