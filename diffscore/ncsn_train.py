"""Deprecated: moved to :mod:`diffscore.training.ncsn`."""

from ._compat import moved

__getattr__ = moved(
    __name__,
    {"diffscore.training.ncsn": ("ncsn_batch_loss", "ncsn_samples", "save_ncsn", "load_ncsn", "train_ncsn")},
)
