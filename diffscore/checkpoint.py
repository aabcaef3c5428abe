"""Deprecated: moved to :mod:`diffscore.io` (files) and :mod:`diffscore.training.checkpoints`."""

from ._compat import moved

__getattr__ = moved(
    __name__,
    {
        "diffscore.io": (
            "atomic_write",
            "atomic_directory",
            "write_json",
            "read_json",
            "write_tensors",
            "read_tensors",
            "remove_temporaries",
        ),
        "diffscore.training.checkpoints": (
            "CHECKPOINT_PREFIX",
            "save_checkpoint",
            "load_checkpoint",
            "list_checkpoints",
            "latest_checkpoint",
            "optimizer_state_to_tensors",
            "optimizer_state_from_tensors",
            "generator_state",
            "set_generator_state",
        ),
    },
)
