"""Expression models as plain torch modules (no Spark here): fer's 7-class mini-Xception, Cowen et al.'s 16-expression
video model and Brooks et al.'s 288-output per-face model, behind one registry (:func:`load_expression_model`)."""
from cxatlas.models.checkpoint import Checkpoint, CheckpointError, InputSpec, load_checkpoint, save_checkpoint
from cxatlas.models.registry import (
    REGISTRY,
    ExpressionModel,
    ModelSpec,
    label_to_column,
    load_expression_model,
    pick_device,
)

__all__ = [
    "Checkpoint", "CheckpointError", "InputSpec", "load_checkpoint", "save_checkpoint",
    "REGISTRY", "ExpressionModel", "ModelSpec", "label_to_column", "load_expression_model", "pick_device",
]
