"""The digits FID: a feature extractor trained on the digits train split, cached in a folder.

Inception-v3 is an ImageNet network for 299 x 299 RGB photographs; its features say little about 8x8
gray digits, and its weights cannot be downloaded everywhere. As MNIST papers do with a LeNet-style
classifier, the "digits FID" uses a small convolutional classifier
(:class:`~diffscore.nets.FeatureClassifier`) trained here on the digits *train* split: its 64
penultimate features replace Inception's pool features, and its class probabilities replace
Inception's for an Inception-Score analogue (at most 10, the number of classes). These numbers are
domain-specific: comparable between models evaluated with the same extractor (same seed, same
training recipe, same split), never with Inception FIDs.

The extractor is trained deterministically (seeded initialisation, data order and dequantization
noise, CPU, float32, 10 to 25 s on one CPU core) and cached as ``model.safetensors`` + ``config.json`` in a
folder (:func:`digits_classifier`); a cache written with other settings is retrained, not reused.

Images enter the evaluator (:class:`~diffscore.evaluation.QualityEvaluator`) either as integers
(bins ``{0, ..., num_bins - 1}``, mapped to the midpoints of their dequantization cells,
:func:`diffscore.data.bin_centers`) or as float images already on ``data_range``; the classifier is
trained on uniformly dequantized data, so both are in its domain.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import bin_centers, load_digits, uniform_dequantize
from ..io import (
    check_directory,
    read_json,
    read_tensors,
    verify_directory,
    write_directory,
    write_json,
    write_tensors,
)
from ..nets.classifier import fit_classifier
from ..nets.feature_classifier import FeatureClassifier
from .sample_quality import QualityEvaluator

__all__ = [
    "DIGITS_CLASSIFIER_FORMAT",
    "DIGITS_RECIPE",
    "ClassifierFeatures",
    "digits_classifier",
    "digits_evaluator",
    "train_feature_classifier",
]

#: Version of the cached extractor folder layout and training recipe; a cache of another version is retrained.
DIGITS_CLASSIFIER_FORMAT = 1
_CACHE_FILES = ("model.safetensors", "config.json")
_CACHE_KIND = "digits_feature_extractor"

#: The training recipe of the digits extractor (recorded in the cache's config.json).
DIGITS_RECIPE: dict[str, Any] = dict(
    epochs=30, batch_size=64, lr=2e-3, weight_decay=1e-4, width=32, feature_dim=64
)


# ---- the extractor ------------------------------------------------------------------------------------
class ClassifierFeatures(nn.Module):
    """The penultimate features of a classifier with a ``features(x)`` method, as an extractor module."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(classifier, "features", None)):
            raise TypeError("classifier must have a features(x) method")
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x)


def train_feature_classifier(
    images: Tensor,
    labels: Tensor,
    num_bins: int,
    data_range: tuple[float, float] = (-1.0, 1.0),
    *,
    seed: int = 0,
    epochs: int = DIGITS_RECIPE["epochs"],
    batch_size: int = DIGITS_RECIPE["batch_size"],
    lr: float = DIGITS_RECIPE["lr"],
    weight_decay: float = DIGITS_RECIPE["weight_decay"],
    width: int = DIGITS_RECIPE["width"],
    feature_dim: int = DIGITS_RECIPE["feature_dim"],
) -> FeatureClassifier:
    """Train a :class:`~diffscore.nets.FeatureClassifier` on integer images, deterministically.

    Adam (AdamW's decoupled weight decay) on the cross-entropy, with the learning rate decayed by a
    cosine over ``epochs`` epochs; every epoch sees every image once, freshly uniformly dequantized
    (:func:`diffscore.data.uniform_dequantize`) onto ``data_range``, in a seeded order. Finally the
    features are standardized on the training images (bin centres):
    :meth:`~diffscore.nets.FeatureClassifier.standardize_features`. Initialisation,
    order and noise come from generators seeded with ``seed``, and the training runs on the CPU in
    float32, so the same arguments give the same weights on the same machine and torch build.

    Args:
        images: uint8 (N, C, H, W) bins in {0, ..., num_bins - 1}, H = W divisible by 4.
        labels: int64 (N,) class indices; the number of classes is ``max(labels) + 1``.
        num_bins, data_range: how bins map to floats (as for the score model).

    Returns:
        The trained classifier in eval mode, on the CPU.
    """
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be (N, C, H, H), got {tuple(images.shape)}")
    if labels.shape != images.shape[:1] or labels.dtype != torch.int64:
        raise ValueError("labels must be int64 shaped (N,)")
    num_classes = int(labels.max()) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureClassifier(images.shape[1], images.shape[2], num_classes, width, feature_dim)
    g = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    n = images.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / (epochs * steps_per_epoch)))
    )

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        for _ in range(epochs):
            order = torch.randperm(n, generator=g)
            x_all = uniform_dequantize(images, num_bins, data_range, generator=g, dtype=torch.float32)
            for idx in order.split(batch_size):
                yield x_all[idx], labels[idx]

    net.train()
    fit_classifier(opt, batches(), lambda x, y: nn.functional.cross_entropy(net(x), y), sched)
    net.eval().requires_grad_(False)
    net.standardize_features(bin_centers(images, num_bins, data_range, dtype=torch.float32))
    return net


@torch.no_grad()
def _accuracy(net: nn.Module, images: Tensor, labels: Tensor, num_bins: int, data_range) -> float:
    x = bin_centers(images, num_bins, data_range, dtype=torch.float32)
    return float((net(x).argmax(1) == labels).double().mean())


def digits_classifier(
    cache_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    split_seed: int = 0,
    data_range: tuple[float, float] = (-1.0, 1.0),
    device: torch.device | str | None = None,
    echo: Callable[[str], None] | None = None,
) -> FeatureClassifier:
    """The digits feature extractor: trained on the digits train split, cached in ``cache_dir``.

    When ``cache_dir`` holds a ``config.json`` whose format, seed, split seed, data range and recipe
    (``DIGITS_RECIPE``) match, the weights are read from its ``model.safetensors``; otherwise the
    classifier is trained (:func:`train_feature_classifier` on ``load_digits("train", split_seed)``)
    and, when ``cache_dir`` is given, written there atomically (the folder is assembled under a
    temporary name and renamed into place). ``config.json`` also records the accuracy on the
    validation and test splits (bin centres) and the training time.

    Args:
        cache_dir: folder of the cache (e.g. ``<run>/digits_classifier``), or None for no cache.
        seed: training seed. split_seed: seed of the digits split (the score model's ``split_seed``,
            so that the extractor never sees the test images the metric compares against).
        data_range: where bins are mapped (the score model's ``data_range``).
        device: where to put the returned classifier (training is on the CPU).
        echo: called with one line when the classifier is trained rather than loaded.

    Returns:
        The classifier in eval mode with gradients off; ``ClassifierFeatures(net)`` gives its features.

    Raises:
        ValueError: a corrupt cache (its files name the path).
        FileExistsError: ``cache_dir`` is a file, or a folder holding diffscore's files of another kind
            (a score model, a training run) or files of the cache's names that diffscore did not write;
            checked before training.
    """
    lo, hi = (float(v) for v in data_range)
    wanted = dict(
        format=DIGITS_CLASSIFIER_FORMAT,
        seed=seed,
        split_seed=split_seed,
        data_range=[lo, hi],
        recipe=DIGITS_RECIPE,
    )
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None and (cache / "config.json").is_file():
        verify_directory(cache, ("config.json", "model.safetensors"))
        config = read_json(cache / "config.json")
        if {k: config.get(k) for k in wanted} == wanted:
            net = FeatureClassifier(**{k: v for k, v in config["net"].items() if k != "name"})
            net.load_state_dict(read_tensors(cache / "model.safetensors"))
            return net.eval().requires_grad_(False).to(device or "cpu")
    if cache is not None:
        check_directory(cache, _CACHE_FILES, kind=_CACHE_KIND)  # before the training, not after it
    start = time.perf_counter()
    train = load_digits("train", seed=split_seed)
    net = train_feature_classifier(
        train.images,
        train.labels,
        train.num_bins,
        (lo, hi),
        seed=seed,
        **{k: v for k, v in DIGITS_RECIPE.items()},
    )
    seconds = time.perf_counter() - start
    accuracy = {
        split: _accuracy(net, d.images, d.labels, d.num_bins, (lo, hi))
        for split, d in (
            ("train", train),
            *((s, load_digits(s, seed=split_seed)) for s in ("validation", "test")),
        )
    }
    if echo is not None:
        echo(
            f"trained the digits feature extractor in {seconds:.0f} s (accuracy: validation "
            f"{accuracy['validation']:.3f}, test {accuracy['test']:.3f})"
        )
    if cache is not None:
        with write_directory(cache, _CACHE_FILES, kind=_CACHE_KIND) as tmp:
            write_tensors(tmp / "model.safetensors", net.state_dict())
            write_json(
                tmp / "config.json", {**wanted, "net": net.config, "accuracy": accuracy, "seconds": seconds}
            )
    return net.to(device or "cpu")


def digits_evaluator(
    cache_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    split_seed: int = 0,
    data_range: tuple[float, float] = (-1.0, 1.0),
    device: torch.device | str | None = None,
    echo: Callable[[str], None] | None = None,
    **options: Any,
) -> QualityEvaluator:
    """A :class:`QualityEvaluator` with the digits extractor (:func:`digits_classifier`, cached in
    ``cache_dir``): digits FID from its features, the Inception-Score analogue from its logits,
    17 bins on ``data_range``. ``options`` go to :class:`QualityEvaluator` (e.g. ``kid_subsets``)."""
    net = digits_classifier(
        cache_dir, seed=seed, split_seed=split_seed, data_range=data_range, device=device, echo=echo
    )
    return QualityEvaluator(ClassifierFeatures(net), net, num_bins=17, data_range=data_range, **options)
