"""The ``diffscore`` commands ``inpaint``, ``colorize``, ``classifier train`` and ``conditional``.

The command-line side of :mod:`diffscore.controllable` (Song et al. 2021, Sec. 5 and App. I):
inpainting of masked images, colorization of gray images, and class-conditional sampling with a
time-dependent classifier (eq. 14, ``grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x)``).
:func:`add_commands` registers the subcommands on the ``diffscore`` parser. See docs/controllable.md.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .sde import SDE

__all__ = [
    "MASK_PRESETS",
    "TimeDependentClassifier",
    "add_commands",
    "classifier_accuracy",
    "load_classifier",
    "make_mask",
    "save_classifier",
    "train_classifier",
]

#: Mask presets; each names the region that is HIDDEN (to be inpainted). ``random[:p]`` hides each
#: pixel with probability p (default 0.5).
MASK_PRESETS = ("left_half", "right_half", "top_half", "center_box", "random")

#: PC settings of ``--method``: "pc" (reverse-diffusion predictor + Langevin corrector, Song et al.
#: 2021 Algorithm 1) and "sde" (the same predictor, no corrector).
_METHODS = {"pc": ("reverse_diffusion", "langevin"), "sde": ("reverse_diffusion", "none")}


# ---- masks ------------------------------------------------------------------------------------------
def _preset_mask(spec: str, shape: tuple[int, int, int], seed: int) -> Tensor | None:
    """The (1, 1, H, W) 0/1 mask (1 = known) of a preset, or None when ``spec`` is not a preset."""
    _, h, w = shape
    known = torch.ones(h, w)
    name, sep, arg = spec.partition(":")
    if name == "random":
        p = 0.5
        if sep:
            try:
                p = float(arg)
            except ValueError:
                raise ValueError(f"--mask random:p needs a number p in [0, 1], got {arg!r}") from None
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"--mask random:p needs p in [0, 1], got {p}")
        gen = torch.Generator().manual_seed(seed)
        known = (torch.rand(h, w, generator=gen) >= p).float()
    elif sep or name not in MASK_PRESETS:
        return None
    elif name == "left_half":
        known[:, : w // 2] = 0
    elif name == "right_half":
        known[:, w // 2 :] = 0
    elif name == "top_half":
        known[: h // 2] = 0
    else:  # center_box: the central (H/2, W/2) box is hidden
        top, left = (h - h // 2) // 2, (w - w // 2) // 2
        known[top : top + h // 2, left : left + w // 2] = 0
    return known[None, None]


def _read_mask_file(path: Path) -> Tensor:
    from PIL import Image

    from .cli import _read_tensor

    if path.suffix.lower() == ".png":
        with Image.open(path) as im:
            gray = torch.from_numpy(np.array(im.convert("L"))).float()
        if not bool(((gray == 0) | (gray == 255)).all()):
            raise ValueError(
                f"--mask {str(path)!r}: a PNG mask must be black (0, hidden) and white (255, known)"
            )
        return gray / 255
    if path.suffix in (".safetensors", ".pt"):
        return _read_tensor(str(path), ("mask",)).float()
    raise ValueError(f"--mask {str(path)!r}: mask files must end in .png, .safetensors or .pt")


def make_mask(spec: str, image_shape: Sequence[int], seed: int = 0) -> Tensor:
    """A 0/1 inpainting mask (1 = known pixel) for images of shape ``image_shape`` = (C, H, W).

    Args:
        spec: a preset of :data:`MASK_PRESETS` naming the hidden region ("left_half", "right_half",
            "top_half", "center_box": the central H/2 x W/2 box, "random" or "random:p": each pixel
            hidden with probability p, default 0.5), or a file: a ``.png`` of H x W pixels (white 255 =
            known, black 0 = hidden) or a ``.safetensors`` / ``.pt`` tensor of 0s and 1s shaped (H, W),
            (C, H, W), (1, C, H, W) or (B, C, H, W) (any of these dimensions may be 1).
        image_shape: (C, H, W) of one image.
        seed: seed of the "random" preset.

    Returns:
        A float32 0/1 tensor of 4 dimensions that broadcasts to (B, C, H, W) (presets: (1, 1, H, W),
        the same pixels hidden in every channel and image).

    Raises:
        ValueError: an unknown preset or file type, a PNG that is not pure black and white, a tensor
            whose shape does not broadcast to (C, H, W) images or whose entries are not all 0 or 1
            (every message names ``--mask``); FileNotFoundError: a missing file.
    """
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    c, h, w = (int(v) for v in image_shape)
    mask = _preset_mask(spec, (c, h, w), seed)
    if mask is not None:
        return mask
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"--mask must be one of {', '.join(MASK_PRESETS)} (random:p) or an existing .png / "
            f".safetensors / .pt file, got {spec!r}"
        )
    mask = _read_mask_file(path)
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[None]
    if mask.ndim != 4 or any(m not in (1, s) for m, s in zip(mask.shape[1:], (c, h, w), strict=True)):
        raise ValueError(
            f"--mask {spec!r} has shape {tuple(mask.shape)}; it must broadcast to images of shape "
            f"(B, {c}, {h}, {w})"
        )
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"--mask {spec!r} must contain only 0 (hidden) and 1 (known) entries")
    return mask


# ---- the time-dependent classifier ------------------------------------------------------------------
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
        from .nets.layers import GaussianFourierProjection

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
        alpha, std = self.sde._alpha_std(t)
        scale = (alpha**2 + std**2).rsqrt()
        h = x.flatten(1) * scale[:, None]
        return self.mlp(torch.cat([h, self.embed(t / self.sde.T)], dim=1))


def save_classifier(classifier: TimeDependentClassifier, directory: str | Path, **metadata: Any) -> Path:
    """Write ``classifier.safetensors`` and ``config.json`` (config, SDE, ``metadata``), each atomically."""
    from .checkpoint import write_json, write_tensors
    from .sde import sde_to_config

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    write_tensors(d / "classifier.safetensors", classifier.state_dict())
    write_json(
        d / "config.json", {**classifier.config, "sde": sde_to_config(classifier.sde), "metadata": metadata}
    )
    return d


def load_classifier(
    directory: str | Path, device: torch.device | str | None = None
) -> TimeDependentClassifier:
    """Read a classifier written by :func:`save_classifier`.

    Raises:
        FileNotFoundError: a missing file (named).
        ValueError: ``directory`` holds something else than a classifier (e.g. a score model).
    """
    from .checkpoint import read_json, read_tensors
    from .sde import sde_from_config

    d = Path(directory)
    cfg = read_json(d / "config.json")
    keys = ("num_classes", "hidden", "depth", "embedding_size", "sde", "image_shape")
    if any(k not in cfg for k in keys):
        raise ValueError(f"{str(d)!r} is not a classifier directory (see `diffscore classifier train`)")
    options = {k: cfg[k] for k in keys[:4]}
    clf = TimeDependentClassifier(sde_from_config(cfg["sde"]), cfg["image_shape"], **options)
    clf.load_state_dict(read_tensors(d / "classifier.safetensors"))
    return clf.to(device or "cpu").eval()


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
    """Train a :class:`TimeDependentClassifier` with :func:`~diffscore.controllable.noisy_classifier_loss`.

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
    from .controllable import noisy_classifier_loss
    from .data import uniform_dequantize

    for name, v in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    with torch.random.fork_rng(devices=[]):  # the weight initialisation leaves the global stream alone
        torch.manual_seed(seed)
        clf = TimeDependentClassifier(sde, images.shape[1:], seed=seed, **net_options)
    clf.train()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
        x0 = uniform_dequantize(images[idx], num_bins, data_range, gen)
        loss = noisy_classifier_loss(clf, sde, x0, labels[idx], eps, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return clf.eval(), losses


# ---- commands ---------------------------------------------------------------------------------------
def _pc_options(args: argparse.Namespace) -> dict[str, Any]:
    predictor, corrector = _METHODS[args.method]
    return dict(
        predictor=args.predictor or predictor,
        corrector=args.corrector or corrector,
        snr=args.snr,
        n_steps=args.corrector_steps,
        num_steps=args.steps,
    )


def _train_config(metadata: dict[str, Any]):
    from .config import TrainConfig

    return TrainConfig.from_dict(metadata["train_config"]) if "train_config" in metadata else TrainConfig()


def _image_shape(metadata: dict[str, Any]) -> tuple[int, ...]:
    shape = tuple(metadata.get("image_shape") or ())
    if len(shape) != 3:
        raise ValueError("the model's config.json has no (C, H, W) metadata.image_shape")
    return shape


def _tensors_path(args: argparse.Namespace) -> Path:
    p = Path(args.tensors) if args.tensors else Path(args.out).with_suffix(".safetensors")
    if p.suffix != ".safetensors":
        raise ValueError(f"--tensors must end in .safetensors, got {str(p)!r}")
    return p


def _cmd_inpaint(args: argparse.Namespace) -> int:
    from .checkpoint import write_tensors
    from .cli import _check_images, _data_info, _load_model, _read_tensor
    from .controllable import inpaint
    from .data import bin_centers, quantize, save_image_grid
    from .train import load_splits

    model, metadata = _load_model(args)
    num_bins, data_range = _data_info(metadata)
    p = next(iter(model.parameters()))
    if args.input:
        x = _read_tensor(args.input, ("x", "images", "samples", "data"))
        x = bin_centers(x, num_bins, data_range) if not x.is_floating_point() else x
    else:
        x = bin_centers(
            load_splits(_train_config(metadata))[args.split].images[: args.num], num_bins, data_range
        )
    x = _check_images(x, metadata).to(p.device, p.dtype)
    mask = make_mask(args.mask, x.shape[1:], args.seed).to(p.device, p.dtype)
    gen = torch.Generator(p.device).manual_seed(args.seed)
    stats: dict[str, Any] = {}
    start = time.perf_counter()
    with torch.no_grad():
        out = inpaint(model.sde, model, x, mask, generator=gen, stats=stats, **_pc_options(args))
    known = torch.broadcast_to(mask.bool(), x.shape)
    middle = 0.5 * (data_range[0] + data_range[1])  # hidden pixels shown mid-gray
    masked = torch.where(known, x, torch.full_like(x, middle))
    rows = torch.cat([x, masked, out]).cpu()
    grid = save_image_grid(quantize(rows, num_bins, data_range), args.out, nrow=x.shape[0], num_bins=num_bins)
    tensors = write_tensors(
        _tensors_path(args), {"original": x, "mask": torch.broadcast_to(mask, x.shape), "inpainted": out}
    )
    print(
        f"inpainted {x.shape[0]} images ({args.mask}, {stats['nfe']} NFE, "
        f"{time.perf_counter() - start:.1f} s): wrote {grid} (rows: original, masked, inpainted) "
        f"and {tensors}"
    )
    return 0


def _cmd_colorize(args: argparse.Namespace) -> int:
    from .checkpoint import write_tensors
    from .cli import _data_info, _load_model, _read_tensor
    from .controllable import colorize
    from .data import save_image_grid

    model, metadata = _load_model(args)
    shape = _image_shape(metadata)
    if shape[0] != 3:
        raise ValueError(
            f"colorize needs a model of 3-channel (RGB) images; this model's images are shaped {shape}"
        )
    _, data_range = _data_info(metadata)
    p = next(iter(model.parameters()))
    gray = _read_tensor(args.input, ("gray", "x", "images")).to(p.device, p.dtype)
    if gray.ndim != 4 or gray.shape[1] != 1 or tuple(gray.shape[2:]) != shape[1:]:
        raise ValueError(
            f"--input must hold gray images shaped (B, 1, {shape[1]}, {shape[2]}), got {tuple(gray.shape)}"
        )
    weights = [float(w) for w in args.weights.split(",")]
    gen = torch.Generator(p.device).manual_seed(args.seed)
    with torch.no_grad():
        rgb = colorize(model.sde, model, gray, weights, generator=gen, **_pc_options(args))
    rows = torch.cat([gray.expand(-1, 3, -1, -1), rgb]).cpu()
    grid = save_image_grid(rows, args.out, nrow=gray.shape[0], data_range=data_range)
    tensors = write_tensors(_tensors_path(args), {"gray": gray, "colorized": rgb})
    print(f"colorized {gray.shape[0]} images: wrote {grid} (rows: gray, colorized) and {tensors}")
    return 0


def _cmd_classifier_train(args: argparse.Namespace) -> int:
    from .cli import _data_info, _load_model
    from .data import bin_centers
    from .train import load_splits

    model, metadata = _load_model(args)
    num_bins, data_range = _data_info(metadata)
    splits = load_splits(_train_config(metadata))
    train, test = splits["train"], splits["test"]
    if train.labels is None:
        raise ValueError("the model's dataset has no labels; a classifier needs labelled data")
    start = time.perf_counter()
    clf, losses = train_classifier(
        model.sde,
        train.images,
        train.labels,
        num_bins,
        data_range,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        num_classes=len(train.classes) or int(train.labels.max()) + 1,
        hidden=args.hidden,
    )
    x_test = bin_centers(test.images, num_bins, data_range)
    accuracy = {
        f"{t:g}": classifier_accuracy(clf, x_test, test.labels, t * model.sde.T) for t in (0.0, 0.25, 0.5)
    }
    last = sum(losses[-50:]) / len(losses[-50:])
    save_classifier(clf, args.out, test_accuracy=accuracy, steps=args.steps, final_loss=last)
    print(
        f"classifier trained in {time.perf_counter() - start:.0f} s ({args.steps} steps, last-50 loss "
        f"{last:.3f} nats); test accuracy at t/T = "
        + ", ".join(f"{k}: {v:.3f}" for k, v in accuracy.items())
        + f"; wrote {args.out}"
    )
    return 0


def _parse_labels(text: str, num_classes: int) -> list[int]:
    try:
        labels = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--label must be an int or a comma-separated list of ints, got {text!r}") from None
    if not labels or any(not 0 <= v < num_classes for v in labels):
        raise ValueError(f"--label must lie in [0, {num_classes}), got {text!r}")
    return labels


def _cmd_conditional(args: argparse.Namespace) -> int:
    from .checkpoint import write_tensors
    from .cli import _data_info, _load_model
    from .controllable import classifier_log_prob, conditional_score
    from .data import quantize, save_image_grid
    from .sampling import sample

    model, metadata = _load_model(args)
    num_bins, data_range = _data_info(metadata)
    shape = _image_shape(metadata)
    p = next(iter(model.parameters()))
    clf = load_classifier(args.classifier, p.device).to(p.dtype)
    if clf.image_shape != shape:
        raise ValueError(f"--classifier was trained on images {clf.image_shape}, the model's are {shape}")
    labels = _parse_labels(args.label, clf.config["num_classes"])
    y = torch.tensor(labels, device=p.device).repeat_interleave(args.num)
    score = conditional_score(model, classifier_log_prob(clf, y), args.scale)
    gen = torch.Generator(p.device).manual_seed(args.seed)
    stats: dict[str, Any] = {}
    start = time.perf_counter()
    with torch.no_grad():
        x = sample(
            model.sde,
            score,
            (y.shape[0], *shape),
            "pc",
            gen,
            device=p.device,
            dtype=p.dtype,
            stats=stats,
            **_pc_options(args),
        )
    accuracy = classifier_accuracy(clf, x, y, 0.0)
    grid = save_image_grid(
        quantize(x.cpu(), num_bins, data_range), args.out, nrow=args.num, num_bins=num_bins
    )
    tensors = write_tensors(_tensors_path(args), {"samples": x, "labels": y})
    print(
        f"{y.shape[0]} samples of classes {labels} (scale {args.scale:g}, "
        f"{time.perf_counter() - start:.1f} s): "
        f"the classifier at t = 0 agrees on {accuracy:.3f}; wrote {grid} (one row per class) and {tensors}"
    )
    return 0


# ---- the parsers ------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="runs/digits", help="model directory, or a training run's directory")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default 1)")
    p.add_argument("--seed", type=int, default=0)


def _sampler_args(p: argparse.ArgumentParser, steps: int) -> None:
    p.add_argument(
        "--method", default="pc", choices=sorted(_METHODS), help="pc (with corrector) or sde (none)"
    )
    p.add_argument("--steps", type=int, default=steps, help=f"predictor steps N (default {steps})")
    p.add_argument("--predictor", default=None, help="reverse_diffusion, euler_maruyama, ancestral, none")
    p.add_argument("--corrector", default=None, help="langevin, annealed_langevin, none")
    p.add_argument("--snr", type=float, default=0.16, help="corrector signal-to-noise ratio (default 0.16)")
    p.add_argument("--corrector-steps", type=int, default=1, help="corrector steps M per step (default 1)")
    p.add_argument("--out", required=True, help="PNG grid")
    p.add_argument(
        "--tensors", default=None, help=".safetensors for the raw tensors (default: next to --out)"
    )


def add_commands(subparsers: Any) -> None:
    """Register ``inpaint``, ``colorize``, ``classifier`` (``classifier train``) and ``conditional`` on
    the ``diffscore`` parser's subparsers (the object ``ArgumentParser.add_subparsers`` returns)."""
    p = subparsers.add_parser("inpaint", help="fill in masked pixels (PNG rows: original, masked, inpainted)")
    p.add_argument(
        "--mask",
        required=True,
        help="hidden region: left_half, right_half, top_half, center_box, random[:p], or a .png "
        "(white = known) / .safetensors / .pt file of 0s and 1s (1 = known)",
    )
    p.add_argument("--input", default=None, help=".safetensors / .pt images (float data, or integer bins)")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--num", type=int, default=16, help="images of --split (without --input)")
    _sampler_args(p, 500)
    _common(p)
    p.set_defaults(func=_cmd_inpaint)

    p = subparsers.add_parser("colorize", help="color gray images (needs a 3-channel model)")
    p.add_argument("--input", required=True, help=".safetensors / .pt gray images (B, 1, H, W)")
    p.add_argument("--weights", default="0.3333333333,0.3333333333,0.3333333333", help="gray = weights . rgb")
    _sampler_args(p, 500)
    _common(p)
    p.set_defaults(func=_cmd_colorize)

    p = subparsers.add_parser("classifier", help="time-dependent classifiers for conditional sampling")
    csub = p.add_subparsers(dest="classifier_command", required=True, metavar="ACTION")
    q = csub.add_parser("train", help="train classifier(x, t) on the model's labelled data under its SDE")
    q.add_argument("--out", required=True, help="output directory (classifier.safetensors, config.json)")
    q.add_argument("--steps", type=int, default=2000)
    q.add_argument("--batch-size", type=int, default=128)
    q.add_argument("--lr", type=float, default=1e-3)
    q.add_argument("--hidden", type=int, default=256)
    _common(q)
    q.set_defaults(func=_cmd_classifier_train)

    p = subparsers.add_parser(
        "conditional", help="class-conditional samples with a time-dependent classifier"
    )
    p.add_argument("--classifier", required=True, help="directory written by `diffscore classifier train`")
    p.add_argument("--label", required=True, help="class, or comma-separated classes (one grid row each)")
    p.add_argument("--num", type=int, default=8, help="samples per class")
    p.add_argument("--scale", type=float, default=1.0, help="guidance scale (1: exact conditional score)")
    _sampler_args(p, 500)
    _common(p)
    p.set_defaults(func=_cmd_conditional)
