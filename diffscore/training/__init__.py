"""Training: configs and presets, the :class:`Trainer`, the ``diffscore train`` pipeline, the NCSN trainer,
time-dependent classifiers, and checkpoints.

Modules: :mod:`~diffscore.training.config` (:class:`TrainConfig`, ``PRESETS``, overrides, networks of a
config), :mod:`~diffscore.training.trainer` (:class:`Trainer`), :mod:`~diffscore.training.run`
(:func:`train`), :mod:`~diffscore.training.ncsn` (NCSN, Song & Ermon 2019),
:mod:`~diffscore.training.classifier` and :mod:`~diffscore.training.checkpoints`.
"""

from .checkpoints import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .classifier import classifier_accuracy, train_classifier
from .config import (
    PRESETS,
    RESUMABLE,
    TrainConfig,
    apply_overrides,
    build_net,
    get_preset,
    load_splits,
    parse_value,
)
from .ncsn import load_ncsn, ncsn_batch_loss, ncsn_samples, save_ncsn, train_ncsn
from .run import train
from .trainer import Trainer, TrainingInterrupted, check_bf16

__all__ = [
    "PRESETS",
    "RESUMABLE",
    "TrainConfig",
    "Trainer",
    "TrainingInterrupted",
    "apply_overrides",
    "build_net",
    "check_bf16",
    "classifier_accuracy",
    "get_preset",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_ncsn",
    "load_splits",
    "ncsn_batch_loss",
    "ncsn_samples",
    "parse_value",
    "save_checkpoint",
    "save_ncsn",
    "train",
    "train_classifier",
    "train_ncsn",
]
