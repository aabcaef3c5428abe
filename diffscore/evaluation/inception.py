"""Inception-v3 features for the standard FID / KID / Inception Score, from torch-fidelity.

The network is torch-fidelity's ``FeatureExtractorInceptionV3``: the TensorFlow Inception graph of the
original FID code (Heusel et al. 2017, TTUR) and of Salimans et al.'s Inception Score, ported to
PyTorch with TensorFlow's bilinear resize, so that its features, and with this module's metrics its
FID, match the published numbers. torchmetrics' FID uses the same class; taking it from torch-fidelity
directly needs one package less, and diffscore computes the metrics itself
(:mod:`diffscore.evaluation.quality`), so torchmetrics' metric classes would add nothing.

torch-fidelity is an optional extra (``pip install 'diffscore[metrics]'``; it depends on torchvision,
so install the torchvision build that matches your torch first, or pip may replace torch). Its weights
(``weights-inception-2015-12-05-6726825d.pth``, about 92 MB) are normally downloaded on first use; here
they must be a local file, since many machines cannot download: fetch the file once where you can and
pass its path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import quantize
from .sample_quality import QualityEvaluator

__all__ = [
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "InceptionFeatures",
    "MetricsUnavailableError",
    "inception_evaluator",
    "load_inception",
]

#: The converted TF-Inception weights torch-fidelity publishes (its ``URL_INCEPTION_V3``).
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
)

#: Outputs of the network: pool features of width 64, 192, 768, 2048 (the FID's), and 1008 logits
#: ("logits_unbiased" without the bias term, the Inception Score's input in torch-fidelity).
INCEPTION_OUTPUTS = ("64", "192", "768", "2048", "logits_unbiased", "logits")


class MetricsUnavailableError(ImportError):
    """An optional package of the ``metrics`` extra is missing or broken; the message is one line."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def load_inception(weights_path: str | os.PathLike, device: torch.device | str | None = None) -> nn.Module:
    """torch-fidelity's Inception-v3 with the weights at ``weights_path``, in eval mode, on ``device``.

    The file is first read with ``torch.load(weights_only=True)``, which refuses pickled code, before
    torch-fidelity loads it (it uses ``weights_only=False``).

    Raises:
        FileNotFoundError: no file at ``weights_path``; the one-line message names the file to fetch
            and where it is published.
        MetricsUnavailableError: torch-fidelity (or the torchvision it imports) is missing or broken.
        ValueError: the file is not a PyTorch weights file of this network.
    """
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights not found at {str(path)!r}: this machine cannot download them; fetch "
            f"{INCEPTION_WEIGHTS_FILE} from {INCEPTION_WEIGHTS_URL} where you can and pass its path"
        )
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except (
        ImportError,
        RuntimeError,
        OSError,
    ) as err:  # a torchvision built for another torch raises RuntimeError
        raise MetricsUnavailableError(
            "Inception metrics need torch-fidelity, an optional extra: pip install 'diffscore[metrics]' "
            f"(with the torchvision build matching your torch installed first) [{_first_line(err)}]"
        ) from None
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        net = FeatureExtractorInceptionV3(
            "inception-v3-compat", list(INCEPTION_OUTPUTS), feature_extractor_weights_path=str(path)
        )
    except Exception as err:  # unpickling or state-dict errors: one line naming the file
        raise ValueError(
            f"{str(path)!r} is not the Inception-v3 weights file {INCEPTION_WEIGHTS_FILE} "
            f"[{_first_line(err)}]"
        ) from None
    return net.eval().to(device or "cpu")


class InceptionFeatures(nn.Module):
    """Inception-v3 output ``output`` of float images, as an extractor module for the metrics.

    Input: float images (B, C, H, W) on ``data_range``, C = 1 (repeated to RGB) or 3, any size (the
    network resizes to 299 x 299 as TensorFlow did); they are turned into 8-bit images by
    :func:`diffscore.data.quantize` with 256 bins (so a uint8 image k -> ``bin_centers`` -> k exactly),
    which is what the network's reference input is. Output: (B, F) float32.

    Args:
        net: from :func:`load_inception` (shared between outputs), or a weights path to load.
        output: one of ``INCEPTION_OUTPUTS``: "2048" for FID / KID, "logits_unbiased" for the IS.
        data_range: (lo, hi) of the float images.
    """

    def __init__(
        self,
        net: nn.Module | str | os.PathLike,
        output: str = "2048",
        data_range: tuple[float, float] = (-1.0, 1.0),
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if output not in INCEPTION_OUTPUTS:
            raise ValueError(f"output must be one of {INCEPTION_OUTPUTS}, got {output!r}")
        self.net = net if isinstance(net, nn.Module) else load_inception(net, device)
        self.index = INCEPTION_OUTPUTS.index(output)
        self.data_range = (float(data_range[0]), float(data_range[1]))

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError("x must be float images on data_range")
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"x must be shaped (B, 1 or 3, H, W), got {tuple(x.shape)}")
        images = quantize(x, 256, self.data_range)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.net(images.contiguous())[self.index].float()


def inception_evaluator(
    weights_path: str | os.PathLike,
    *,
    num_bins: int = 256,
    data_range: tuple[float, float] = (-1.0, 1.0),
    device: torch.device | str | None = None,
    **options: Any,
) -> QualityEvaluator:
    """A :class:`~diffscore.evaluation.QualityEvaluator` with Inception-v3: FID / KID on the 2048 pool
    features, the Inception Score on the 1008 unbiased logits (one network, shared).

    Args:
        weights_path: local file :data:`INCEPTION_WEIGHTS_FILE`. num_bins, data_range: how integer
            images map to floats. options: other :class:`QualityEvaluator` fields.

    Raises:
        FileNotFoundError, MetricsUnavailableError, ValueError: see :func:`load_inception`.
    """
    net = load_inception(weights_path, device)
    return QualityEvaluator(
        InceptionFeatures(net, "2048", data_range),
        InceptionFeatures(net, "logits_unbiased", data_range),
        num_bins=num_bins,
        data_range=data_range,
        **options,
    )
