"""Argument validation and random draws shared by the math modules.

Everything here runs before or after a solve, never inside a solver step, except ``check_finite`` and
``check_state_and_score``, which the dynamics objects call on every evaluation (a host sync; see their
docstrings), and ``check_score_output`` / ``CheckedScore``, which read a score's shape and dtype on every
evaluation (metadata only: no device work, no sync).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

Generator = torch.Generator | Sequence[torch.Generator] | None

#: A state entry larger than this many prior standard deviations is no longer a plausible sample of
#: any score model: the solvers treat it as a numerical failure rather than return garbage. Data scaled
#: to a few units sit 1e3 to 1e4 times inside this bound.
PLAUSIBLE_FACTOR = 1e4


class StepSizeUnderflowError(FloatingPointError):
    """An adaptive solver's step size fell below what the floating-point time can resolve.

    Raised instead of torchdiffeq's bare ``AssertionError("underflow in dt ...")``; the message names
    the time and the step size. Usual causes: a score that is erratic or far too large, or tolerances
    below what the dtype can reach.
    """


def state_limit(prior_std: float) -> float:
    """The plausible bound on ``|x|`` for a state of a solve whose prior has std ``prior_std``:
    ``PLAUSIBLE_FACTOR * prior_std``."""
    return PLAUSIBLE_FACTOR * float(prior_std)


def check_int(name: str, value: int, low: int, *, value_error: bool = False) -> int:
    """Return ``value``, or raise TypeError (not an int; a bool is refused) or ValueError (below ``low``),
    naming ``name``. With ``value_error=True`` both cases raise the one ValueError "``name`` must be an
    int >= ``low``, got ``value``"."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if value_error and not (is_int and value >= low):
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not is_int:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def check_bins(name: str, x: Tensor, num_bins: int) -> None:
    """Raise unless ``x`` holds integers in [0, num_bins) (integer dtype or integer-valued floats)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must hold integers, got dtype {x.dtype}")
    if x.numel() == 0:
        return
    if x.is_floating_point() and not bool((torch.isfinite(x) & (x == torch.round(x))).all()):
        raise ValueError(f"{name} must hold integer values (bin indices), found non-integers, NaN or inf")
    low, high = int(x.min()), int(x.max())
    if low < 0 or high >= num_bins:
        raise ValueError(f"{name} must lie in [0, num_bins) = [0, {num_bins}), found [{low}, {high}]")


def check_discrete_batch(
    x_int: Tensor, num_bins: int, data_range: Sequence[float], dtype: torch.dtype | None, score: Any = None
) -> tuple[Tensor, float, float]:
    """The gate of the discrete-data likelihoods (bits/dim, the dequantized ODE bound, the ELBO): returns
    ``(x_int as dtype, lo, hi)``. ``score``: where it carries a model card (``ScoreModel.card``) whose
    metadata records ``num_bins`` or ``data_range``, those must be the ones asked for (the model's bins
    scored on another grid give bits/dim that are off by orders of magnitude, with no other sign).

    Raises:
        TypeError: ``x_int`` not a non-empty (B, *shape) tensor of integers; a bad ``data_range`` or
            ``dtype`` (as :func:`check_data_range`, :func:`check_float_dtype`), or a ``dtype`` other
            than float32 / float64 (half precision cannot carry a likelihood to 3 digits).
        ValueError: ``num_bins`` not an int >= 2; ``x_int`` with non-integers, NaN / inf or values
            outside [0, num_bins); ``num_bins`` or ``data_range`` not the ones the model's card records.
    """
    check_int("num_bins", num_bins, 2, value_error=True)
    lo, hi = check_data_range(data_range)
    dtype = check_float_dtype(dtype)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64 for a likelihood, got {dtype}")
    if not isinstance(x_int, Tensor) or x_int.ndim < 2 or x_int.shape[0] == 0:
        raise TypeError("x_int must be a non-empty (B, *shape) tensor of integers")
    check_bins("x_int", x_int, num_bins)
    recorded = getattr(getattr(score, "card", None), "metadata", None) or {}
    if "num_bins" in recorded and int(recorded["num_bins"]) != num_bins:
        raise ValueError(
            f"num_bins={num_bins}, but the model's card says it was trained on {recorded['num_bins']} "
            f"bins: pass num_bins={recorded['num_bins']}"
        )
    if "data_range" in recorded and tuple(float(v) for v in recorded["data_range"]) != (lo, hi):
        card_range = tuple(float(v) for v in recorded["data_range"])
        raise ValueError(
            f"data_range={(lo, hi)}, but the model's card says its data lie on {card_range}: "
            f"pass data_range={card_range}"
        )
    return x_int.to(dtype), lo, hi


def check_count(name: str, value: int, low: int) -> int:
    """Return ``value`` if it is an int (not a bool) >= ``low``; ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Any, where: str = "") -> Any:
    """Return ``value`` if it is one of ``choices``; ValueError naming ``name`` and the choices (as
    ``choices`` prints) otherwise. ``where``: an addition to the message, e.g. " for method='sde'"."""
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}{where}, got {value!r}")
    return value


def check_mask(mask: Tensor, like: Tensor, name: str = "mask") -> Tensor:
    """Validate a 0/1 mask broadcastable to ``like``; return it in ``like``'s dtype and device."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of 0/1 entries, got {type(mask).__name__}")
    try:
        shape = torch.broadcast_shapes(mask.shape, like.shape)
    except RuntimeError as err:
        raise ValueError(
            f"{name} of shape {tuple(mask.shape)} does not broadcast to {tuple(like.shape)}"
        ) from err
    if shape != like.shape:
        raise ValueError(f"{name} of shape {tuple(mask.shape)} does not broadcast to {tuple(like.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must contain only 0 (unknown) and 1 (known) entries")
    return mask.to(dtype=like.dtype, device=like.device)


def check_positive(name: str, value: float) -> float:
    """Return ``float(value)`` or raise TypeError (not a real number; a bool is refused) or ValueError
    (NaN, infinite or <= 0) naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (value > 0.0 and value < float("inf")):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def check_positive_entries(name: str, value: Tensor) -> Tensor:
    """Return ``value``, or raise ValueError naming ``name`` unless every entry is finite and > 0 (one
    host sync)."""
    if not bool(((value > 0) & torch.isfinite(value)).all()):
        raise ValueError(f"{name} must be finite and > 0")
    return value


def check_real(name: str, value: float) -> float:
    """Return ``float(value)``, or raise TypeError (not a real number; a bool is refused) or ValueError
    (NaN or infinite), naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_data_range(data_range: Any, name: str = "data_range") -> tuple[float, float]:
    """``(lo, hi)`` as floats: ``data_range`` must be a pair (tuple, list, ...) of real numbers (or
    one-element tensors) with finite ``lo < hi``.

    Raises:
        TypeError: not a pair of real numbers (e.g. three values, a string, a bool), naming ``name``.
        ValueError: a NaN or infinite end, or ``lo >= hi``, naming ``name``.
    """
    try:
        values = tuple(data_range) if not isinstance(data_range, (str, bytes, dict)) else None
    except TypeError:
        values = None
    if values is None or len(values) != 2 or not all(_is_real_scalar(v) for v in values):
        raise TypeError(f"{name} must be a pair of numbers (lo, hi), got {data_range!r}")
    lo, hi = (float(v) for v in values)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{name} must be finite with lo < hi, got {data_range!r}")
    return lo, hi


def _is_real_scalar(v: object) -> bool:
    if isinstance(v, Tensor):
        return v.numel() == 1 and v.dtype != torch.bool and not v.is_complex()
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_instance(name: str, value: Any, cls: type, what: str) -> Any:
    """Return ``value``, or raise TypeError "``name`` must be ``what``" unless it is a ``cls``."""
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    return value


def check_callable(name: str, value: Any, usage: str = "") -> Any:
    """Return ``value``, or raise TypeError "``name`` must be callable[: ``usage``]" unless it is."""
    if not callable(value):
        raise TypeError(f"{name} must be callable" + (f": {usage}" if usage else ""))
    return value


def check_float_dtype(dtype: torch.dtype | None, name: str = "dtype") -> torch.dtype:
    """``dtype``, or torch's default dtype when None; TypeError naming ``name`` unless it is a
    floating-point ``torch.dtype`` (an integer dtype cannot hold a Gaussian draw)."""
    if dtype is None:
        return torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name} must be a floating-point torch.dtype, got {type(dtype).__name__}")
    if not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point dtype (e.g. torch.float32), got {dtype}")
    return dtype


def check_shape(shape: Any, min_ndim: int = 1, name: str = "shape", event: bool = False) -> tuple[int, ...]:
    """``shape`` as a tuple: a tuple, list or torch.Size of at least ``min_ndim`` positive ints; the
    shape of a batch (B, *event_shape), or with ``event=True`` the event shape of one sample.

    Raises:
        TypeError: ``shape`` is not a tuple, list or torch.Size (e.g. a bare int), naming ``name``.
        ValueError: fewer than ``min_ndim`` entries, or an entry that is not a positive int.
    """
    kind = "(the event shape, without batch)" if event else "(B, *event_shape)"
    if not isinstance(shape, (tuple, list)):  # torch.Size is a tuple
        raise TypeError(f"{name} must be a tuple or list of ints {kind}, got {type(shape).__name__}")
    shape = tuple(shape)
    if len(shape) < min_ndim or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape
    ):
        if event:
            expected = f"a tuple of positive ints {kind}"
        else:
            expected = f"{'(B, *event_shape)' if min_ndim >= 2 else '(B, ...)'} of positive ints"
        raise ValueError(f"{name} must be {expected}, got {shape}")
    return shape


def check_stats(stats: Any, name: str = "stats") -> dict | None:
    """``stats`` if it is None or a dict (the solvers write ``stats["nfe"]`` into it); TypeError naming
    ``name`` otherwise. Call it at entry, before any work."""
    if stats is not None and not isinstance(stats, dict):
        raise TypeError(f"{name} must be a dict (it receives 'nfe') or None, got {type(stats).__name__}")
    return stats


def check_eps(eps: float, T: float, name: str = "eps") -> float:
    """Return ``float(eps)``, the smallest time of a solve, if it is a real number in [0, T).

    Raises:
        TypeError: ``eps`` is not an int or a float (a bool is refused), naming ``name``.
        ValueError: ``eps`` outside [0, T) or NaN, naming ``name``.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"{name} must be a real number in [0, {T}), got {type(eps).__name__}")
    eps = float(eps)
    if not (0.0 <= eps < T):
        raise ValueError(f"{name} must lie in [0, T) = [0, {T}), got {eps}")
    return eps


def check_solve_eps(sde, eps: float, name: str = "eps") -> float:
    """Validate the end time of a solve whose solver may evaluate the score at ``eps`` itself (the
    torchdiffeq and torchsde solves, the adaptive reverse SDE, encoding and the likelihood): a real
    number in [0, T) with ``std(eps) > 0``.

    Where ``std(t) = 0`` (t = 0 for VP, sub-VP and VE with the exact kernel) the score of any data
    distribution without a density is singular, and a network's score is ``out / std`` clamped at a tiny
    floor: the solve would fail near t = 0 with an obscure "implausibly large state", or return garbage.
    The fixed-grid samplers that never use the score at a zero std (``heun``'s last Euler step to
    sigma = 0, ``pc``'s corrector whose step is proportional to ``std(eps)^2``) keep eps = 0.

    Raises:
        TypeError: ``eps`` is not a real number.
        ValueError: ``eps`` outside [0, T), or ``std(eps) == 0``; the message names ``name``.
    """
    eps = check_eps(eps, sde.T, name)
    std = float(sde.var(torch.tensor([eps], dtype=torch.float64)).sqrt()[0])
    if not std > 0.0:
        raise ValueError(
            f"{name} = {eps:g} is a time where the SDE's std(t) is 0, so the score is singular there and "
            f"the solver evaluates it at {name}: use {name} > 0 (e.g. 1e-5 for a likelihood, 1e-3 for "
            "sampling)"
        )
    return eps


def check_latent(name: str, z: Tensor, prior_std: float) -> None:
    """Raise unless ``z`` is a plausible state at time T: :func:`check_data`, and every entry strictly
    inside the solvers' plausible bound ``|z| < state_limit(prior_std)`` (1e4 prior stds; a prior draw
    exceeds 10 prior stds with probability 1.5e-23 per entry).

    Raises:
        TypeError / ValueError: as :func:`check_data`; ValueError naming ``name`` and the bound when an
            entry of ``z`` is at or beyond it.
    """
    check_data(name, z)
    limit = state_limit(prior_std)
    big = float(z.detach().abs().amax())
    if not big < limit:
        raise ValueError(
            f"{name} has an entry of magnitude {big:.6g}: not a plausible state at T (entries must satisfy "
            f"|{name}| < {limit:.6g}, {PLAUSIBLE_FACTOR:g} x the prior std {float(prior_std):g})"
        )


def check_score_output(s: object, x: Tensor, name: str = "score") -> Tensor:
    """Return ``s`` if it is a floating tensor shaped exactly like the state ``x``, else raise naming
    ``name``. Reads metadata only (no reduction, no host sync), so it runs on every score evaluation:
    a score whose output shape depends on t or on the batch is caught at the first bad call.

    Raises:
        TypeError: ``s`` is not a tensor (e.g. None) or not floating-point.
        ValueError: ``s.shape != x.shape`` ("score returned shape (...) for a state of shape (...)"),
            which would otherwise broadcast silently into a wrong result.
    """
    if not isinstance(s, Tensor):
        raise TypeError(
            f"{name} returned {type(s).__name__}, not a tensor: {name}(x, t) must return a tensor "
            "shaped like x"
        )
    if not s.is_floating_point():
        raise TypeError(
            f"{name} returned a tensor of dtype {s.dtype}: {name}(x, t) must return a floating-point tensor"
        )
    if s.shape != x.shape:
        raise ValueError(f"{name} returned shape {tuple(s.shape)} for a state of shape {tuple(x.shape)}")
    return s


class CheckedScore:
    """``score(x, t)`` with its output checked by :func:`check_score_output` on every call, and a call
    counter ``nfe`` (on the host). The samplers wrap the user's score in it once, at entry.

    Raises:
        TypeError: at construction, if ``score`` is not callable.
    """

    def __init__(self, score: Callable[[Tensor, Tensor], Tensor], name: str = "score") -> None:
        self.score = check_callable(name, score, f"{name}(x, t) -> like x")
        self.name = name
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return check_score_output(self.score(x, t), x, self.name)


def check_data(name: str, x: Tensor, min_ndim: int = 2) -> None:
    """Raise unless ``x`` is a floating tensor of shape (B, *shape) with only finite entries."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(
            f"{name} must have shape (B, *shape) with at least {min_ndim} dims, got {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")


def _absmax(v: Tensor) -> Tensor:
    """max |v| as a 0-d tensor, NaN if v has a NaN (one ``aminmax`` pass, no |v| temporary)."""
    lo, hi = torch.aminmax(v.detach())
    return torch.maximum(hi, -lo)


def check_state_and_score(
    x: Tensor, s: Tensor, t: Tensor, std: Tensor, limit: float, what: str = "score"
) -> None:
    """Raise FloatingPointError naming t unless the state and the score are plausible.

    Plausible: every entry of ``x`` finite with ``|x| <= limit``, and every entry of the score ``s``
    finite with ``|s| std(t)^2 <= 2 limit`` (with the smallest std of the batch). The second bound is
    implied by the first: Tweedie's formula ``s = (alpha x0_hat - x) / std^2`` with a state and a
    denoised estimate both within ``limit``. Two reductions and one host sync per call (used by the
    torchsde / torchdiffeq adapters, whose solvers synchronise every step anyway).
    """
    v = torch.stack([_absmax(x), _absmax(s) * std.detach().min().square()])  # inf * 0 = NaN fails too
    ok = (v <= torch.tensor([limit, 2 * limit], dtype=v.dtype, device=v.device)).tolist()
    if not all(ok):
        tt = float(t.reshape(-1)[0]) if isinstance(t, Tensor) else float(t)
        name, val = ("state", x) if not ok[0] else (what, s)
        kind = "non-finite" if not bool(torch.isfinite(val).all()) else "implausibly large"
        raise FloatingPointError(
            f"{kind} {name} at t = {tt:.6g} (plausible: |x| <= {limit:.3g}, {PLAUSIBLE_FACTOR:g} x the "
            "prior std, and |score| std(t)^2 <= 2 x that)"
        )


def check_finite(name: str, value: Tensor, t: Tensor | float) -> None:
    """Raise FloatingPointError naming the time ``t`` if ``value`` has a NaN or inf entry.

    One reduction and one host sync per call; the solvers that call it (torchsde, torchdiffeq adaptive
    stepping) already synchronise every step.
    """
    if not bool(torch.isfinite(value).all()):
        tt = float(t.reshape(-1)[0]) if isinstance(t, Tensor) else float(t)
        raise FloatingPointError(f"non-finite {name} at t = {tt:.6g}")


def as_time(t: Tensor | float, batch: int, like: Tensor) -> Tensor:
    """Broadcast a time (float, 0-d or (B,) tensor) to a (B,) tensor with ``like``'s dtype and device.

    Reads metadata only (no host sync). Raises TypeError for a ``t`` that is neither a tensor nor a
    real number (e.g. a list), ValueError for a tensor of another shape.
    """
    if not isinstance(t, Tensor) and (isinstance(t, bool) or not isinstance(t, numbers.Real)):
        raise TypeError(f"t must be a float, a 0-d tensor or a (B,) tensor, got {type(t).__name__}")
    if isinstance(t, Tensor):
        t = t.to(dtype=like.dtype, device=like.device)
        if t.ndim == 0:
            return t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(
                f"t must be a float, a 0-d tensor or shaped (B,) = ({batch},); got {tuple(t.shape)}"
            )
        return t
    return torch.full((batch,), float(t), dtype=like.dtype, device=like.device)


def generators(generator: Generator, batch: int) -> list[torch.Generator] | torch.Generator | None:
    """Validate a ``generator`` argument: None, one torch.Generator, or a list of ``batch`` of them."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, Sequence) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != batch:
            raise ValueError(
                f"generator is a list of {len(generator)} generators but the batch has {batch} samples"
            )
        return list(generator)
    raise TypeError("generator must be a torch.Generator, a list of them (one per sample), or None")


def randn(
    shape: Sequence[int],
    generator: Generator = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Standard normal draw of ``shape``; with a list of generators, row k comes from generator k alone.

    Draws happen on the generator's device and move to ``device``, so a CPU generator gives the same
    numbers whatever device the result lives on.
    """
    return _draw(torch.randn, shape, generator, device, dtype)


def rand(
    shape: Sequence[int],
    generator: Generator = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Uniform [0, 1) draw of ``shape`` with the same per-sample generator rule as :func:`randn`."""
    return _draw(torch.rand, shape, generator, device, dtype)


def _draw(
    sampler: Callable[..., Tensor],
    shape: Sequence[int],
    generator: Generator,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> Tensor:
    """``sampler`` (torch.randn or torch.rand) of ``shape`` under the per-sample generator rule."""
    shape = tuple(int(s) for s in shape)
    gens = generators(generator, shape[0])
    dtype = dtype or torch.get_default_dtype()
    if isinstance(gens, list):
        rows = [sampler(shape[1:], generator=g, device=g.device, dtype=dtype) for g in gens]
        return torch.stack(rows).to(device)
    if gens is None:
        return sampler(shape, device=device, dtype=dtype)
    return sampler(shape, generator=gens, device=gens.device, dtype=dtype).to(device)


def seed_from(generator: torch.Generator | None) -> int:
    """Draw a 62-bit integer seed from ``generator`` (or from torch's global RNG when None)."""
    return int(
        torch.randint(
            0, 2**62, (1,), generator=generator, device="cpu" if generator is None else generator.device
        )
    )


def bcast(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a (B,) tensor to broadcast against ``x`` of shape (B, *shape)."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


class FiniteMonitor:
    """Tracks, without a host sync per step, the first step at which a state went non-finite or left
    the plausible range ``|x| <= limit``.

    For fixed-step sampler loops: call ``update(x, i)`` at step i and ``check(times)`` once after the
    loop, which syncs once and raises FloatingPointError naming ``times[i]`` of the first bad step.
    ``update`` costs one ``aminmax`` reduction (which propagates NaN) and nothing else on the device:
    the (min, max) pairs are kept and compared with the limit in batches of 256 steps. ``limit``
    defaults to infinity (finiteness only); the samplers pass :func:`state_limit`.
    """

    _BATCH = 256

    def __init__(self, name: str = "state", limit: float = math.inf) -> None:
        self.name = name
        self.limit = float(limit)
        self.first: Tensor | None = None  # first bad step among the folded batches (-1: none yet)
        self._pending: list[tuple[int, Tensor, Tensor, Tensor | float | None]] = []

    def update(self, x: Tensor, step: int, scale: Tensor | float | None = None) -> None:
        """Record step ``step``; it is bad if ``scale * x`` has an entry that is NaN, inf or beyond the
        limit (``scale``: a 0-d tensor or float, e.g. alpha(t) when the loop carries ``x / alpha``)."""
        lo, hi = torch.aminmax(x.detach())
        self._pending.append((step, lo, hi, scale))
        if len(self._pending) >= self._BATCH:
            self._fold()

    def _fold(self) -> None:
        """Compare the pending steps with the limit on the device and keep the first bad one."""
        if not self._pending:
            return
        steps, los, his, scales = zip(*self._pending, strict=True)
        self._pending = []
        lo = torch.stack(los).float() if los[0].element_size() < 4 else torch.stack(los)
        hi = torch.stack(his).to(lo.dtype)
        if any(sc is not None for sc in scales):
            sc = torch.stack([torch.as_tensor(1.0 if v is None else v).to(lo) for v in scales])
            lo, hi = lo * sc, hi * sc
        limit = self.limit if math.isfinite(self.limit) else torch.finfo(hi.dtype).max
        bad = ~((hi <= limit) & (lo >= -limit))  # NaN compares False: bad
        idx = torch.tensor(steps, dtype=torch.long, device=bad.device)
        none = torch.iinfo(torch.long).max
        first = torch.where(bad, idx, torch.full_like(idx, none)).min()  # the first bad step of the batch
        first = torch.where(first < none, first, torch.full_like(first, -1))
        if self.first is None:
            self.first = first
        else:
            self.first = torch.where(self.first >= 0, self.first, first)

    def first_bad(self) -> int:
        """The first bad step, or -1 (one host sync)."""
        self._fold()
        return -1 if self.first is None else int(self.first)

    def check(self, times: Sequence[float] | Tensor) -> None:
        i = self.first_bad()
        if i >= 0:
            bound = "" if not math.isfinite(self.limit) else f" (plausible: |x| <= {self.limit:.3g})"
            raise FloatingPointError(
                f"non-finite or implausibly large {self.name} at t = {float(times[i]):.6g} (step {i}){bound}"
            )
