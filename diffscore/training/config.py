"""Training presets, command-line overrides, and building an SDE / network / score model from JSON configs.

A preset is a :class:`TrainConfig`: a flat dataclass of plain values (strings, numbers, tuples and
small dicts; no devices or modules), so that it is written into every checkpoint as JSON and rebuilt
from it. ``PRESETS`` holds the named ones; :func:`apply_overrides` changes fields from
``key=value`` strings (``lr=1e-3``, ``net_options.hidden=512``).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .._checks import check_int
from ..data import DATASETS, ImageData
from ..data import load_splits as load_dataset_splits
from ..sde import SDES, sde_from_config, sde_to_config

__all__ = [
    "TrainConfig",
    "PRESETS",
    "DATASETS",
    "get_preset",
    "apply_overrides",
    "parse_value",
    "build_net",
    "load_splits",
    "RESUMABLE",
    "resumed_config",
]


@dataclass
class TrainConfig:
    """Everything that defines a training run (and nothing about where it runs).

    Data:
        dataset: one of ``DATASETS``. data_root: folder for cifar10 / mnist / image_folder.
        image_size, channels: image_folder only (squares of ``image_size``, 1 or 3 channels).
        data_range: (lo, hi) the integer images are dequantized onto (bits/dim uses the same range).
        split_seed: seed of the train / validation / test split (digits, image_folder) or of the
            validation hold-out taken from the training set (cifar10, mnist).
        val_size, test_size: hold-out sizes where the dataset has no such split of its own.
        random_flip: random horizontal flips (never for digits: a mirrored digit is another shape).
    Model:
        sde: one of ``SDES``; sde_options: its constructor arguments.
        net: a network name of ``diffscore.nets.NETS`` or a preset of ``diffscore.nets.PRESETS``;
            net_options: constructor arguments (``dim``, ``channels``, ``image_size`` are filled in
            from the data when the network takes them and they are not given).
        gaussian_residual: wrap the network in :class:`GaussianResidualNet` fitted to the train split.
        parameterization: of :class:`diffscore.ScoreModel` ("noise", "score", "scaled").
    Objective (:func:`diffscore.losses.dsm_loss`): weighting ("sigma2" or "likelihood"),
        importance_sampling, eps (smallest training time), loss_reduction ("sum" or "mean").
    Optimisation: steps, batch_size (the global batch: with W processes each takes batch_size / W),
        lr (Adam), warmup (linear, in steps), lr_schedule after the warmup ("constant", or "cosine"
        decay to 0 at ``steps``), grad_clip (global norm), weight_decay (AdamW, decoupled), ema_rate,
        seed.
    Evaluation: eval_every (validation bits/dim of the EMA weights; the best is kept),
        val_divergence / test_divergence ("exact" or "hutchinson"), likelihood_eps, rtol, atol,
        eval_batch_size (images per ODE solve; several processes split the batches),
        val_limit / test_limit (evaluate the first N images only; None = all).
    Likelihood model: bound_model (None, or the options of
        :class:`~diffscore.training.bound_model.BoundTrainingConfig`): also train a discrete-data model
        for likelihood (:class:`~diffscore.nets.BinPosteriorNet`, the variational bound as its loss) beside
        the sample model, and report its test bound and exact ODE bits/dim.
    Output: checkpoint_every, keep_checkpoints, log_every, num_samples (the grid), quality_samples
        (digits: samples scored by digits FID / KID against the test split; 0: none), sample_method,
        sample_options (passed to :func:`diffscore.sample`).
    """

    dataset: str = "digits"
    data_root: str | None = None
    image_size: int = 32
    channels: int = 3
    data_range: tuple[float, float] = (-1.0, 1.0)
    split_seed: int = 0
    val_size: int = 1000
    test_size: int = 1000
    random_flip: bool = False

    sde: str = "vp"
    sde_options: dict[str, Any] = field(default_factory=lambda: {"beta_min": 0.1, "beta_max": 20.0})
    net: str = "mlp"
    net_options: dict[str, Any] = field(default_factory=lambda: {"hidden": 128, "depth": 3, "dropout": 0.1})
    gaussian_residual: bool = True
    parameterization: str = "noise"

    weighting: str = "sigma2"
    importance_sampling: bool = False
    eps: float = 1e-5
    loss_reduction: str = "sum"
    #: "dsm" (score SDE, :func:`diffscore.losses.dsm_loss`) or "ncsn" (NCSN RefineNet net(x, sigma), its
    #: sigmas, :func:`diffscore.losses.ncsn_loss`, annealed Langevin samples; see diffscore.training.ncsn)
    objective: str = "dsm"

    steps: int = 10_000
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 200
    lr_schedule: str = "constant"
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    ema_rate: float = 0.999
    seed: int = 0

    eval_every: int = 1000
    val_divergence: str = "hutchinson"
    test_divergence: str = "exact"
    likelihood_eps: float = 1e-5
    rtol: float = 1e-4
    atol: float = 1e-4
    eval_batch_size: int = 512
    val_limit: int | None = None
    test_limit: int | None = None

    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 50
    num_samples: int = 64
    quality_samples: int = 1000
    sample_method: str = "pc"
    sample_options: dict[str, Any] = field(default_factory=lambda: {"num_steps": 500})
    bound_model: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.data_range = tuple(float(v) for v in self.data_range)  # JSON gives lists
        self.validate()

    def validate(self) -> None:
        """Check every field's value; raise ValueError/TypeError naming the field."""
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.sde not in SDES:
            raise ValueError(f"sde must be one of {tuple(SDES)}, got {self.sde!r}")
        lo, hi = self.data_range if len(self.data_range) == 2 else (math.nan, math.nan)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"data_range must be (lo, hi) with finite lo < hi, got {self.data_range}")
        for name in ("steps", "batch_size", "eval_every", "checkpoint_every", "log_every", "eval_batch_size"):
            check_int(name, getattr(self, name), 1)
        check_int("num_samples", self.num_samples, 1)  # the grid of samples.png
        for name in ("warmup", "keep_checkpoints", "quality_samples", "seed", "split_seed"):
            check_int(name, getattr(self, name), 0)
        for name in ("val_limit", "test_limit"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1)
        for name in ("lr", "grad_clip", "rtol", "atol"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a number > 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.ema_rate < 1.0:
            raise ValueError(f"ema_rate must lie in [0, 1), got {self.ema_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        choices = {
            "weighting": ("sigma2", "likelihood"),
            "lr_schedule": ("constant", "cosine"),
            "loss_reduction": ("sum", "mean"),
            "val_divergence": ("exact", "hutchinson"),
            "test_divergence": ("exact", "hutchinson"),
            "parameterization": ("noise", "score", "scaled"),
            "objective": ("dsm", "ncsn"),
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {valid}, got {getattr(self, name)!r}")
        if self.bound_model is not None:
            from .bound_model import BoundTrainingConfig

            BoundTrainingConfig.from_dict(self.bound_model)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``TrainConfig(**d)`` rebuilds the config)."""
        d = dataclasses.asdict(self)
        d["data_range"] = list(self.data_range)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict`. Raises ValueError naming unknown fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; valid: {sorted(names)}")
        return cls(**d)


_BIG_IMAGES = dict(
    net="ncsnpp_small",
    net_options={},
    sde="ve",
    sde_options={"sigma_min": 0.01, "sigma_max": 50.0},
    parameterization="scaled",
    gaussian_residual=False,
    data_range=(-1.0, 1.0),
    random_flip=True,
    steps=200_000,
    batch_size=128,
    lr=2e-4,
    warmup=5000,
    ema_rate=0.999,
    eval_every=10_000,
    val_limit=1000,
    test_divergence="hutchinson",
    rtol=1e-5,
    atol=1e-5,
    eval_batch_size=250,
    checkpoint_every=10_000,
    log_every=100,
    sample_method="pc",
    sample_options={"num_steps": 1000},
)

#: Named presets. "digits" is the default of ``diffscore train`` and fits the 2-core CPU budget.
PRESETS: dict[str, TrainConfig] = {
    # 20k steps with a cosine decay; samples by PC stopped at eps = 0.1 on the log-SNR grid, then
    # Tweedie's step (at eps = 1e-3 the model's score at small t leaves a grey speckle): the measured
    # bits/dim and digits FID of this choice are in docs/quality.md
    # beside it, the discrete-data likelihood model (BinPosteriorNet trained by the variational bound,
    # selected by the validation bound; docs/likelihood.md): its test ELBO is the run's headline bits/dim
    "digits": TrainConfig(
        steps=20_000,
        lr_schedule="cosine",
        sample_options={"num_steps": 500, "eps": 0.1, "grid": "logsnr"},
        bound_model={
            "net_options": {"hidden": 256, "depth": 2, "dropout": 0.6, "input_dropout": 0.4},
            "lr": 2e-3,
            "weight_decay": 0.05,
            "batch_size": 128,
            "ema_rate": 0.995,
            "max_steps": 1500,
            "max_seconds": 300.0,
            "eval_every": 50,
            "patience": 8,
            "val_samples": 4,
            "test_samples": 256,
        },
    ),
    # the small DDPM++ U-Net on the digits (exact evaluation is slow on a CPU: use --device cuda)
    "digits_unet": TrainConfig(net="ddpmpp_digits", net_options={}, gaussian_residual=False, lr=2e-4),
    # NCSN (Song & Ermon 2019) on the digits: RefineNet preset with sigmas 1 ... 0.01 (L = 10, geometric),
    # Adam 1e-3, annealed Langevin eps = 2e-5, T = 100 per level; no bits/dim (no exact likelihood)
    "ncsn_digits": TrainConfig(
        objective="ncsn",
        net="ncsn_digits",
        net_options={},
        gaussian_residual=False,
        steps=3000,
        batch_size=128,
        warmup=100,
        ema_rate=0.999,
        sample_options={"step_size": 2e-5, "n_steps_each": 100, "denoise": True},
    ),
    "cifar10": TrainConfig(dataset="cifar10", data_root="data", **_BIG_IMAGES),
    "image_folder": TrainConfig(dataset="image_folder", data_root=None, **_BIG_IMAGES),
}


def get_preset(name: str) -> TrainConfig:
    """A fresh copy of the preset ``name``. Raises ValueError listing the valid names."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return TrainConfig.from_dict(json.loads(json.dumps(PRESETS[name].to_dict())))


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (numbers, true/false, null, lists, dicts), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        lowered = text.strip().lower()
        if lowered in ("true", "false", "none", "null"):
            return {"true": True, "false": False}.get(lowered)
        return text


_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (float,),
    "bool": (bool,),
    "tuple[float, float]": (list, tuple),
    "dict[str, Any]": (dict,),
}


def _coerce(name: str, type_name: str, value: Any, text: str) -> Any:
    """Check a parsed override against the field's declared type (a string, from the annotations)."""
    base = type_name.removesuffix(" | None")
    if value is None and base != type_name:
        return None
    if base == "str":
        return text if not isinstance(value, str) else value
    if base == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (isinstance(value, bool) and base != "bool") or not isinstance(value, _TYPES[base]):
        raise TypeError(f"{name} must be of type {type_name}, got {text!r}")
    return value


def apply_overrides(config: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """Return a copy of ``config`` with ``key=value`` overrides applied and validated.

    ``key`` is a field name, or ``field.key`` for an entry of a dict field (``net_options.hidden=512``).
    Values are parsed as JSON where possible (``1e-3``, ``true``, ``[0, 1]``, ``{"a": 1}``), else kept as
    strings. An int is accepted for a float field.

    Setting ``net`` or ``sde`` to another value drops the config's ``net_options`` / ``sde_options`` (they
    belong to its network and SDE) but keeps those that the overrides set.

    Raises:
        ValueError: malformed override, unknown field (the message lists the valid ones), or an
            invalid value. TypeError: a value of the wrong type.
    """
    d = config.to_dict()
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    given: dict[str, dict[str, Any]] = {}  # the entries of dict fields that the overrides set
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override must look like key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        value = parse_value(text)
        head, _, sub = key.partition(".")
        if head not in fields:
            raise ValueError(f"unknown config field {head!r}; valid fields: {', '.join(sorted(fields))}")
        if sub:
            if not isinstance(d[head], dict):
                raise ValueError(f"{head} is not a dict field, so {key!r} is not valid")
            d[head] = {**d[head], sub: value}
            given.setdefault(head, {})[sub] = value
            continue
        d[head] = _coerce(head, fields[head].type, value, text)
        if isinstance(d[head], dict):
            given[head] = dict(d[head])
    for name in ("net", "sde"):  # another network or SDE: the preset's options go, the ones given stay
        if d[name] != getattr(config, name):
            d[f"{name}_options"] = given.get(f"{name}_options", {})
    return TrainConfig.from_dict(d)


# ---- networks ------------------------------------------------------------------------------------------
def build_net(config: TrainConfig, image_shape: Sequence[int]) -> nn.Module:
    """The network of a training config for images shaped ``image_shape`` = (C, H, W).

    ``config.net`` names a network of ``diffscore.nets.NETS`` or a preset of ``diffscore.nets.PRESETS``;
    ``dim``, ``channels`` and ``image_size`` are filled in from ``image_shape`` when the network takes
    them and ``net_options`` does not set them. With ``gaussian_residual`` the network is wrapped in a
    :class:`~diffscore.nets.GaussianResidualNet` (moments still to be set).

    Raises:
        ValueError: unknown network or preset (the message lists the valid names).
    """
    from .. import nets

    if config.net in nets.NETS:
        name, base = config.net, {}
    elif config.net in nets.PRESETS:
        name, base = nets.PRESETS[config.net]
    else:
        valid = sorted({*nets.NETS, *nets.PRESETS})
        raise ValueError(f"unknown net {config.net!r}; valid networks and presets: {', '.join(valid)}")
    kwargs = {**base, **config.net_options}
    params = inspect.signature(nets.NETS[name].__init__).parameters
    c, h, w = image_shape
    for key, value in (("dim", c * h * w), ("channels", c), ("image_size", h)):
        if key in params and key not in kwargs:
            kwargs[key] = value
    net = nets.from_config({**kwargs, "name": name})
    if not config.gaussian_residual:
        return net
    sde = sde_to_config(sde_from_config({"name": config.sde, **config.sde_options}))
    wrapper = dict(
        name="gaussian_residual", inner=net.config, sde=sde, parameterization=config.parameterization
    )
    return nets.from_config({**wrapper, "dim": c * h * w})


def load_splits(config: TrainConfig) -> dict[str, ImageData]:
    """The ``train``, ``validation`` and ``test`` splits of ``config.dataset`` as integer images, with the
    config's ``data_root``, ``split_seed``, hold-out sizes and image-folder options
    (:func:`diffscore.data.load_splits`).

    Raises:
        ValueError: unknown dataset (the message lists the valid ones), or a missing ``data_root``.
    """
    return load_dataset_splits(
        config.dataset,
        config.data_root,
        split_seed=config.split_seed,
        val_size=config.val_size,
        test_size=config.test_size,
        image_size=config.image_size,
        channels=config.channels,
    )


#: Fields a resumed run may change: how long it runs and what it logs, saves and reports. The others
#: define the optimisation itself and stay as the checkpoint has them.
RESUMABLE = (
    "steps",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "eval_batch_size",
    "test_limit",
    "test_divergence",
    "num_samples",
    "quality_samples",
    "sample_method",
    "sample_options",
    "bound_model",
)


def resumed_config(saved: TrainConfig, requested: TrainConfig | None, step: int) -> TrainConfig:
    """The config a run resumed at ``step`` continues with: ``saved`` (the checkpoint's), or
    ``requested`` when it differs from ``saved`` in :data:`RESUMABLE` fields only.

    Raises:
        ValueError: ``requested`` changes another field (the message names them), or sets ``steps``
            below ``step``.
    """
    if requested is None:
        return saved
    old, new = saved.to_dict(), requested.to_dict()
    changed = sorted(k for k in old if old[k] != new[k] and k not in RESUMABLE)
    if changed:
        raise ValueError(
            "a resumed run keeps its config; it may change only "
            f"{', '.join(RESUMABLE)}, not {', '.join(changed)}"
        )
    if requested.steps < step:
        raise ValueError(f"steps {requested.steps} is below the checkpoint's step {step}")
    return requested
