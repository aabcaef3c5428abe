"""ScoreModel: a network plus a parameterization, giving ``score(x, t) ~ grad_x log p_t(x)``."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import as_time, bcast, check_callable, check_choice, check_instance, check_positive
from .io import (
    read_json,
    read_tensors,
    tensor_shapes,
    verify_directory,
    write_directory,
    write_json,
    write_tensors,
)
from .sde import SDE, sde_from_config, sde_to_config

__all__ = ["ScoreModel", "ScoreFn", "PARAMETERIZATIONS", "ModelCard", "TrainingData"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]

#: How a network output ``out`` at noise std ``std`` becomes a score.
PARAMETERIZATIONS = {
    # the output is the score itself
    "score": "score = out",
    # epsilon prediction (Ho et al. 2020): x_t = alpha x_0 + std eps, score = -eps / std
    "noise": "score = -out / std",
    # the output is std * score (NCSN++ on VE, Song et al. 2021 App. H "output scaled by 1/sigma")
    "scaled": "score = out / std",
}


@dataclass(frozen=True)
class TrainingData:
    """Where a model's train / validation / test splits come from: the arguments of
    :func:`diffscore.data.load_splits` (the defaults are its own: the bundled digits)."""

    dataset: str = "digits"
    data_root: str | None = None
    split_seed: int = 0
    val_size: int = 1000
    test_size: int = 1000
    image_size: int = 32
    channels: int = 3


@dataclass(frozen=True)
class ModelCard:
    """What a model directory's ``config.json`` says about the model's data and use, read once.

    Attributes:
        image_shape: the shape of one sample, e.g. (C, H, W), or None when the model does not say.
        num_bins: gray levels of the integer data (default 256: 8-bit images).
        data_range: (lo, hi) the integer data were dequantized onto (default (-1, 1)).
        dataset: the data set's name as the model records it, or None.
        training_data: how to load its train / validation / test splits (a training run's data; the
            bundled digits when the model was not trained by diffscore).
        likelihood_eps: the smallest time of its likelihood integral (default 1e-5).
        sample_method, sample_options: the sampler its training run used for samples (None and {}
            when it has none), as :func:`diffscore.sample` takes them.
        decoder: "categorical" for a model with a per-bin decoder at eps (its variational bound scores
            the integer data: :func:`~diffscore.likelihood_bound`), else None.
        metadata: the whole ``metadata`` mapping, for what the card does not name (step, val_bpd,
            source, ...).
    """

    image_shape: tuple[int, ...] | None = None
    num_bins: int = 256
    data_range: tuple[float, float] = (-1.0, 1.0)
    dataset: str | None = None
    training_data: TrainingData = field(default_factory=TrainingData)
    likelihood_eps: float = 1e-5
    sample_method: str | None = None
    sample_options: Mapping[str, Any] = field(default_factory=dict)
    decoder: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> ModelCard:
        """The card of a ``config.json``'s ``metadata`` (written by :meth:`ScoreModel.save_pretrained`:
        a training run's ``Trainer.metadata()`` or a converter's)."""
        run = metadata.get("train_config") or {}
        lo, hi = metadata.get("data_range", (-1.0, 1.0))
        shape = metadata.get("image_shape")
        names = {f.name for f in fields(TrainingData)}
        return cls(
            image_shape=tuple(int(n) for n in shape) if shape else None,
            num_bins=int(metadata.get("num_bins", 256)),
            data_range=(float(lo), float(hi)),
            dataset=metadata.get("dataset"),
            training_data=TrainingData(**{k: v for k, v in run.items() if k in names}),
            likelihood_eps=float(metadata.get("likelihood_eps", 1e-5)),
            sample_method=run.get("sample_method"),
            sample_options=dict(run.get("sample_options") or {}),
            decoder=metadata.get("decoder"),
            metadata=dict(metadata),
        )


class ScoreModel(nn.Module):
    """Turns a network ``net(x, t) -> like x`` into a score function under ``sde``.

    Args:
        net: module mapping x (B, *shape) and t (B,) to a tensor shaped like x.
        sde: the forward SDE whose marginal std the parameterization uses.
        parameterization: one of ``"score"``, ``"noise"``, ``"scaled"`` (see ``PARAMETERIZATIONS``).
        min_std: floor on std(t) in the divisions of "noise" and "scaled", so t = 0 (std = 0) gives a
            large finite score instead of inf; a finite number > 0 (0 would divide by zero at t = 0,
            NaN would turn every output into NaN).
        event_shape: the shape of one sample, e.g. (C, H, W), when known (from_pretrained takes it from
            the model's card): then ``model(x, t)`` checks ``x.shape[1:]``, so an unbatched image is
            refused instead of being read as a batch.
        card: what the model's directory says about its data and use (:class:`ModelCard`; set by
            :meth:`from_pretrained`, None for a model built in code).

    ``model(x, t)`` returns the score, shaped like x. ``t`` is a float, 0-d or (B,) tensor of times.

    Raises:
        ValueError: for an unknown parameterization, a ``min_std`` that is not finite and > 0; when
            called, ``x`` not shaped (B, *event_shape).
        TypeError: if ``net`` is not callable, ``sde`` is not an :class:`~diffscore.sde.SDE` or
            ``min_std`` is not a real number; when called, ``x`` of another floating dtype than the
            weights, or ``t`` neither a number nor a tensor (metadata checks only: no host sync).
    """

    def __init__(
        self,
        net: nn.Module,
        sde: SDE,
        parameterization: str = "noise",
        min_std: float = 1e-12,
        event_shape: Sequence[int] | None = None,
        card: ModelCard | None = None,
    ) -> None:
        super().__init__()
        check_callable("net", net, "net(x, t) -> like x")
        check_instance("sde", sde, SDE, "a diffscore SDE")
        check_choice("parameterization", parameterization, sorted(PARAMETERIZATIONS))
        self.net = net
        self.sde = sde
        self.parameterization = parameterization
        self.min_std = check_positive("min_std", min_std)
        self.event_shape = None if event_shape is None else tuple(int(s) for s in event_shape)
        self.card = card

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The score ``grad_x log p_t(x)``: x (B, *shape), t a float, 0-d or (B,) tensor -> like x.

        Raises ValueError for x not shaped (B, *event_shape) and TypeError for x of another dtype than
        the weights (see the class docstring).
        """
        t = self._check_call(x, t)
        out = self.net(x, t)
        if self.parameterization == "score":
            return out
        std = bcast(self.sde.alpha_std(t)[1].clamp_min(self.min_std), out)
        return -out / std if self.parameterization == "noise" else out / std

    @property
    def score_and_divergence(self) -> Callable[[Tensor, Tensor | float], tuple[Tensor, Tensor]] | None:
        """``(x, t) -> (score, div_x score)``, the divergence (B,) in closed form, when the network gives
        its own (``net.noise_and_divergence(x, t)``, e.g. :class:`~diffscore.nets.BinPosteriorNet`) under
        the "noise" parameterization in eval mode; else None. :class:`~diffscore.dynamics.LikelihoodODE`
        uses it for the exact divergence instead of D vector-Jacobian products."""
        noise_and_divergence = getattr(self.net, "noise_and_divergence", None)
        if noise_and_divergence is None or self.parameterization != "noise" or self.net.training:
            return None

        def score_and_divergence(x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
            t = self._check_call(x, t)
            out, div = noise_and_divergence(x, t)
            std = self.sde.alpha_std(t)[1].clamp_min(self.min_std)
            return -out / bcast(std, out), -div / std

        return score_and_divergence

    def _check_call(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The checks of a call (see :meth:`forward`); returns t as a (B,) tensor."""
        if self.event_shape is not None and tuple(x.shape[1:]) != self.event_shape:
            want = ", ".join(map(str, self.event_shape))
            raise ValueError(f"x must be a batch shaped (B, {want}) for this model, got {tuple(x.shape)}")
        p = next(self.parameters(), None)
        if p is not None and x.dtype != p.dtype and x.is_floating_point():
            raise TypeError(
                f"x is {x.dtype} but the model's weights are {p.dtype}: convert one of them "
                "(model.to(x.dtype) or x.to(model's dtype))"
            )
        return as_time(t, x.shape[0], x)

    def save_pretrained(
        self, directory: str | os.PathLike, metadata: Mapping[str, Any] | None = None
    ) -> Path:
        """Write this model to ``directory``: ``config.json`` and ``model.safetensors``.

        ``config.json`` holds the network config (``net.config``), the SDE (name and constructor
        arguments), the parameterization, ``min_std`` and the optional JSON-serialisable ``metadata``
        (e.g. the data set, ``num_bins``, ``data_range``); ``model.safetensors`` holds this module's
        state dict (save the EMA copy to publish EMA weights). The directory is assembled under a
        temporary name and renamed into place, so it is complete or absent, never half written.

        Returns:
            The directory.

        Raises:
            TypeError: the network has no ``config`` dict, or the SDE is not a diffscore VP/sub-VP/VE SDE.
        """
        net_config = getattr(self.net, "config", None)
        if not isinstance(net_config, Mapping):
            raise TypeError(
                "save_pretrained needs a network with a `config` dict (every diffscore.nets network)"
            )
        config = {
            "format": "diffscore.ScoreModel",
            "version": 1,
            "net": dict(net_config),
            "sde": sde_to_config(self.sde),
            "parameterization": self.parameterization,
            "min_std": self.min_std,
            "metadata": dict(metadata or {}),
        }
        directory = Path(directory)
        with write_directory(directory, ("model.safetensors", "config.json"), kind="score_model") as tmp:
            write_tensors(tmp / "model.safetensors", self.state_dict())
            write_json(tmp / "config.json", config)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, map_location: torch.device | str | None = None
    ) -> ScoreModel:
        """Load a model written by :meth:`save_pretrained`, in eval mode, on ``map_location`` (default CPU),
        with its :class:`ModelCard` as ``model.card`` (``config.json`` is read once).

        Raises:
            FileNotFoundError: ``directory``, its ``config.json`` or its ``model.safetensors`` is missing.
            ValueError: a corrupt or unreadable file, a config that is not a ScoreModel's (metadata the
                card cannot read included), or weights that do not fit the network the config describes
                (missing, unexpected or mis-shaped tensors); every message names the path.
        """
        from . import nets

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"no such model directory: {str(directory)!r}")
        verify_directory(directory, ("config.json", "model.safetensors"))
        config_path, weights_path = directory / "config.json", directory / "model.safetensors"
        config = read_json(config_path)
        if config.get("format") != "diffscore.ScoreModel":
            raise ValueError(f"{str(config_path)!r} is not a diffscore ScoreModel config")
        try:
            card = ModelCard.from_metadata(config.get("metadata") or {})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{str(config_path)!r} does not describe a valid model: {err}") from err

        def build() -> ScoreModel:
            try:
                net = nets.from_config(config["net"])
                sde = sde_from_config(config["sde"])
                min_std = config.get("min_std", 1e-12)
                return cls(net, sde, config["parameterization"], min_std, card.image_shape, card)
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{str(config_path)!r} does not describe a valid model: {err}") from err

        # the architecture is checked against the weights file's header on the meta device first, so a
        # config describing a network larger than its weights is refused before anything is allocated
        with torch.device("meta"):
            _check_fit(build().state_dict(), tensor_shapes(weights_path), weights_path)
        model = build()
        state = read_tensors(weights_path)
        _check_fit(model.state_dict(), {k: tuple(v.shape) for k, v in state.items()}, weights_path)
        floats = [v.dtype for v in state.values() if v.is_floating_point()]
        if floats:
            model = model.to(floats[0])
        model.load_state_dict(state)
        return model.to(map_location or "cpu").eval()

    def extra_repr(self) -> str:
        return f"parameterization={self.parameterization!r}, sde={self.sde!r}"


def _check_fit(own: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]], path: Path) -> None:
    """Raise ValueError naming ``path`` unless its tensors (name -> shape) are exactly ``own``'s."""
    missing = sorted(set(own) - set(shapes))
    unexpected = sorted(set(shapes) - set(own))
    wrong = [k for k in own if k in shapes and tuple(own[k].shape) != tuple(shapes[k])]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{str(path)!r} does not match the architecture in config.json: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {[(k, tuple(shapes[k]), tuple(own[k].shape)) for k in wrong[:5]]}"
        )
