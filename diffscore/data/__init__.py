"""Data: datasets as integer images, scalers and dequantization, inpainting masks, PNG grids, toy sets.

Every image loader returns *integers*: a uint8 tensor of bin indices in ``{0, ..., num_bins - 1}``
shaped ``(N, C, H, W)`` inside an :class:`ImageData`, together with ``num_bins`` (17 for the 8x8
digits, 256 for 8-bit images). Turning integers into model inputs is a separate, explicit step
(:mod:`diffscore.data.quantization`): scalers map the bins onto [0, 1] or [-1, 1]; dequantization maps
bin ``k`` to the cell ``[k / num_bins, (k + 1) / num_bins)`` of the data range. No loader dequantizes,
rescales, flips or augments (digits must not be mirrored).

Modules: :mod:`~diffscore.data.datasets` (digits, CIFAR-10, MNIST, splits),
:mod:`~diffscore.data.images` (:class:`ImageData`, image folders, PNG grids),
:mod:`~diffscore.data.quantization`, :mod:`~diffscore.data.masks`, :mod:`~diffscore.data.toy`.
"""

from .datasets import (
    CIFAR10_FILES,
    DATASETS,
    DIGITS_NUM_BINS,
    MNIST_FILES,
    load_cifar10,
    load_digits,
    load_mnist,
    load_splits,
)
from .images import IMAGE_EXTENSIONS, ImageData, load_image_folder, save_image_grid
from .masks import MASK_PRESETS, make_mask
from .quantization import (
    bin_centers,
    from_symmetric,
    from_unit,
    gaussian_moments,
    quantize,
    to_symmetric,
    to_unit,
    uniform_dequantize,
)
from .toy import checkerboard, eight_gaussians, two_moons

__all__ = [
    "CIFAR10_FILES",
    "DATASETS",
    "DIGITS_NUM_BINS",
    "IMAGE_EXTENSIONS",
    "MASK_PRESETS",
    "MNIST_FILES",
    "ImageData",
    "bin_centers",
    "checkerboard",
    "eight_gaussians",
    "from_symmetric",
    "from_unit",
    "gaussian_moments",
    "load_cifar10",
    "load_digits",
    "load_image_folder",
    "load_mnist",
    "load_splits",
    "make_mask",
    "quantize",
    "save_image_grid",
    "to_symmetric",
    "to_unit",
    "two_moons",
    "uniform_dequantize",
]
