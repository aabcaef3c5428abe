"""Training time-dependent classifiers ``p_t(y | x_t)`` on noisy data (Song et al. 2021, App. I.1)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..controllable import noisy_classifier_loss
from ..data import uniform_dequantize
from ..nets.classifier import TimeDependentClassifier, fit_classifier
from ..sde import SDE

__all__ = ["train_classifier", "classifier_accuracy"]


def classifier_accuracy(classifier: nn.Module, x: Tensor, labels: Tensor, t: float) -> float:
    """Fraction of ``x`` (B, ...) whose argmax logit at time ``t`` equals ``labels`` (B,)."""
    with torch.no_grad():
        tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        return float((classifier(x, tt).argmax(1) == labels.to(x.device)).float().mean())


def train_classifier(
    sde: SDE,
    images: Tensor,
    labels: Tensor,
    num_bins: int,
    data_range: tuple[float, float] = (-1.0, 1.0),
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    eps: float = 1e-5,
    **net_options: Any,
) -> tuple[TimeDependentClassifier, list[float]]:
    """Train a :class:`TimeDependentClassifier` with :func:`~diffscore.controllable.noisy_classifier_loss`
    (the loop: :func:`~diffscore.nets.classifier.fit_classifier`).

    Every step draws a batch (with replacement), dequantizes it afresh (uniform noise in each cell,
    :func:`~diffscore.data.uniform_dequantize`, the data the score model saw) and takes one Adam step
    on the cross-entropy at ``t ~ U(eps, T)`` (Song et al. 2021, App. I.1).

    Args:
        images: (N, C, H, W) integer bins; labels: (N,) int64 classes. num_bins, data_range: as the
            score model's. steps, batch_size, lr, seed, eps: the optimisation. net_options: of the classifier.

    Returns:
        ``(classifier, losses)``: the trained classifier (eval mode, on the CPU, float32) and the loss
        of every step in nats.

    Raises:
        ValueError: ``steps`` or ``batch_size`` not an int >= 1, and the errors of the loss.
    """
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    with torch.random.fork_rng(devices=[]):  # the weight initialisation leaves the global stream alone
        torch.manual_seed(seed)
        clf = TimeDependentClassifier(sde, images.shape[1:], seed=seed, **net_options)
    clf.train()
    gen = torch.Generator().manual_seed(seed)

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        for _ in range(steps):
            idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
            yield uniform_dequantize(images[idx], num_bins, data_range, gen), labels[idx]

    def loss(x0: Tensor, y: Tensor) -> Tensor:
        return noisy_classifier_loss(clf, sde, x0, y, eps, gen)

    losses = fit_classifier(torch.optim.Adam(clf.parameters(), lr=lr), batches(), loss)
    return clf.eval(), losses
