"""Time-dependent classifiers ``p_t(y | x_t)`` for class-conditional sampling (Song et al. 2021, App. I.1)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..io import read_json, read_tensors, verify_directory, write_directory, write_json, write_tensors
from ..sde import SDE, sde_from_config, sde_to_config
from .layers import GaussianFourierProjection

__all__ = ["TimeDependentClassifier", "fit_classifier", "save_classifier", "load_classifier"]

#: The files of a classifier folder and the kind recorded in its manifest (:func:`save_classifier`).
CLASSIFIER_FILES = ("classifier.safetensors", "config.json")
CLASSIFIER_KIND = "time_dependent_classifier"


def fit_classifier(
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[Tensor, Tensor]],
    loss: Callable[[Tensor, Tensor], Tensor],
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> list[float]:
    """The classifier-training loop: one optimiser step on ``loss(x, y)`` per batch ``(x, y)``.

    ``batches`` is read lazily, one batch per step, so a batch source and a loss that draw from one
    generator draw in the same order as a hand-written loop; ``scheduler`` (if any) steps after each
    optimiser step. Every trainer of a classifier in diffscore runs this loop: the time-dependent
    classifiers of conditional sampling (loss: :func:`diffscore.controllable.noisy_classifier_loss`)
    and the digits feature extractor (loss: cross-entropy).

    Returns:
        The loss of every step (as ``loss`` returns it: nats for a cross-entropy), read from the device
        once, at the end.
    """
    losses = []
    for x, y in batches:
        value = loss(x, y)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(value.detach())
    return torch.stack(losses).tolist() if losses else []


class TimeDependentClassifier(nn.Module):
    """An MLP ``classifier(x, t) -> (B, num_classes)`` logits of p_t(y | x_t) (Song et al. 2021, App. I.1).

    The input ``x_t`` is divided by its marginal scale ``sqrt(alpha(t)^2 + std(t)^2)`` under ``sde``
    (unit-scale data stays of order one at every t, for VE and VP alike), flattened and concatenated
    with random Fourier features of ``t / T`` (Tancik et al. 2020); then ``depth`` SiLU layers of width
    ``hidden`` and a linear read-out.

    Args:
        sde: the forward SDE of the noisy data. image_shape: (C, H, W).
        num_classes: K. hidden, depth: MLP width and number of hidden layers. embedding_size: Fourier
            frequencies (2 * embedding_size features). seed: seed of the fixed Fourier frequencies.
    """

    def __init__(
        self,
        sde: SDE,
        image_shape: Sequence[int],
        num_classes: int = 10,
        hidden: int = 256,
        depth: int = 2,
        embedding_size: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, v in (("num_classes", num_classes), ("hidden", hidden), ("depth", depth)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.sde = sde
        self.image_shape = tuple(int(s) for s in image_shape)
        self.config = dict(
            image_shape=list(self.image_shape),
            num_classes=num_classes,
            hidden=hidden,
            depth=depth,
            embedding_size=embedding_size,
        )
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.embed = GaussianFourierProjection(embedding_size, scale=4.0)
        torch.random.set_rng_state(state)
        layers: list[nn.Module] = []
        width = math.prod(self.image_shape) + 2 * embedding_size
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Logits (B, num_classes) for x (B, C, H, W) at times t (B,)."""
        alpha, std = self.sde.alpha_std(t)
        scale = (alpha**2 + std**2).rsqrt()
        h = x.flatten(1) * scale[:, None]
        return self.mlp(torch.cat([h, self.embed(t / self.sde.T)], dim=1))


def save_classifier(classifier: TimeDependentClassifier, directory: str | Path, **metadata: Any) -> Path:
    """Write ``classifier.safetensors`` and ``config.json`` (config, SDE, ``metadata``) as one directory
    (:func:`diffscore.io.write_directory`: other files in ``directory`` are left alone).

    Raises:
        FileExistsError: ``directory`` holds a file of these names that diffscore did not write, or
            diffscore's files of another kind (a model, a training run).
    """
    names = CLASSIFIER_FILES
    config = {**classifier.config, "sde": sde_to_config(classifier.sde), "metadata": metadata}
    with write_directory(directory, names, kind=CLASSIFIER_KIND) as tmp:
        write_tensors(tmp / "classifier.safetensors", classifier.state_dict())
        write_json(tmp / "config.json", config)
    return Path(directory)


def load_classifier(
    directory: str | Path, device: torch.device | str | None = None
) -> TimeDependentClassifier:
    """Read a classifier written by :func:`save_classifier`.

    Raises:
        FileNotFoundError: a missing file (named).
        ValueError: ``directory`` holds something else than a classifier (e.g. a score model).
    """
    d = Path(directory)
    verify_directory(d, ("config.json",))
    cfg = read_json(d / "config.json")
    keys = ("num_classes", "hidden", "depth", "embedding_size", "sde", "image_shape")
    if any(k not in cfg for k in keys):
        raise ValueError(f"{str(d)!r} is not a classifier directory (see `diffscore classifier train`)")
    options = {k: cfg[k] for k in keys[:4]}
    clf = TimeDependentClassifier(sde_from_config(cfg["sde"]), cfg["image_shape"], **options)
    clf.load_state_dict(read_tensors(d / "classifier.safetensors"))
    return clf.to(device or "cpu").eval()
