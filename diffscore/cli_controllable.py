"""Deprecated: masks moved to :mod:`diffscore.data`, classifiers to :mod:`diffscore.nets.classifier` and
:mod:`diffscore.training.classifier`, the commands to :mod:`diffscore.cli.controllable`."""

from ._compat import moved

__getattr__ = moved(
    __name__,
    {
        "diffscore.data": ("MASK_PRESETS", "make_mask"),
        "diffscore.nets.classifier": ("TimeDependentClassifier", "save_classifier", "load_classifier"),
        "diffscore.training.classifier": ("train_classifier", "classifier_accuracy"),
        "diffscore.cli.controllable": ("add_commands",),
    },
)
