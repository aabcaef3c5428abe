"""The peers' samplers (k-diffusion, diffusers) on diffscore's SDEs, for side-by-side benchmarks.

    pip install 'diffscore[peers]'     # k-diffusion 0.1.1.post1, diffusers 0.42.1 (optional, never tested)

Every score SDE's probability flow is one ODE in the sigma parameterization (Karras et al. 2022, eq. 4):
with ``xbar = x / alpha(t)`` and ``sigma = std(t) / alpha(t)``, ``d xbar / d sigma = (xbar - D(xbar, sigma))
/ sigma``, where ``D(xbar, sigma) = E[x_0 | x_t = alpha(t) xbar]`` is the data prediction at the time
``t(sigma)`` (Tweedie). k-diffusion's samplers take D and a decreasing sigma grid as they are. diffusers'
schedulers work on the variance-preserving state ``x_vp = xbar / sqrt(1 + sigma^2)`` of a discrete
schedule ``alphas_cumprod``: it is set to ``1 / (1 + sigma(t_k)^2)`` on 1000 times ``t_k`` uniform in
[eps, T], so its first and last sigma are the SDE's at T and eps (diffusers keeps them in float32 and
steps in float32). The score is evaluated at the true ``t(sigma)`` of the sigma each solver step uses, and
every call counts as one NFE. The output is taken at eps (``final_sigmas_type="sigma_min"``; no final
denoising), as for diffscore's samplers.

Grids are each library's own: k-diffusion's ``get_sigmas_karras`` (rho 7), ``get_sigmas_exponential``
(uniform in log sigma: the log-SNR grid) and ``get_sigmas_vp`` (uniform in time, VP only); diffusers'
"linspace" timesteps (uniform in time), ``use_karras_sigmas``, ``use_lu_lambdas`` (uniform in log-SNR) and
``use_exponential_sigmas`` (UniPC has no log-SNR grid). diffusers' sigma grids end with a repeated
sigma_min (a step of length zero, which would cost an NFE and move nothing): the adapter asks for one
step more and stops at the first sigma_min.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from diffscore.sde import SDE


def kdiffusion_sampling() -> types.ModuleType | None:
    """``k_diffusion.sampling``, or None if k-diffusion is not installed.

    The package's ``__init__`` imports its training stack (torchvision, scikit-image, wandb, CLIP, ...);
    the sampling module needs only ``utils.append_dims``. Without that stack, the sampling module is loaded
    on its own, with ``append_dims`` supplied here.
    """
    try:
        return importlib.import_module("k_diffusion.sampling")
    except ModuleNotFoundError:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or spec.submodule_search_locations is None:
            return None
    for name in [m for m in sys.modules if m == "k_diffusion" or m.startswith("k_diffusion.")]:
        del sys.modules[name]  # the half-imported package
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    package.utils = utils
    sys.modules["k_diffusion"], sys.modules["k_diffusion.utils"] = package, utils
    return importlib.import_module("k_diffusion.sampling")


def diffusers_schedulers() -> types.ModuleType | None:
    """The ``diffusers`` package (schedulers only are used), or None if not installed."""
    try:
        return importlib.import_module("diffusers")
    except ImportError:
        return None


def versions() -> dict[str, str]:
    """Installed peer versions (for the tables' captions)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("k-diffusion", "diffusers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


class Denoiser:
    """``D(xbar, sigma)``: the data prediction at ``t(sigma)``, from the score; counts calls in ``nfe``."""

    def __init__(self, sde: SDE, score: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.sde, self.score, self.nfe = sde, score, 0

    def __call__(self, xbar: Tensor, sigma: Tensor) -> Tensor:
        self.nfe += 1
        sigma = sigma.to(torch.float64).reshape(-1).expand(xbar.shape[0])
        t = self.sde.inverse_sigma(sigma)
        alpha, std = self.sde.alpha_std(t)
        shape = (-1,) + (1,) * (xbar.ndim - 1)
        x = alpha.reshape(shape).to(xbar.dtype) * xbar
        s = self.score(x, t.to(xbar.dtype))
        return (x + std.reshape(shape).to(xbar.dtype) ** 2 * s) / alpha.reshape(shape).to(xbar.dtype)


def _sigma(sde: SDE, t: float) -> float:
    alpha, std = sde.alpha_std(torch.tensor([t], dtype=torch.float64))
    return float(std[0] / alpha[0])


def _alpha(sde: SDE, t: float) -> float:
    return float(sde.alpha_std(torch.tensor([t], dtype=torch.float64))[0][0])


# ---- k-diffusion ------------------------------------------------------------------------------------------

#: k-diffusion samplers: name -> (function name, options, score calls per step).
K_SAMPLERS: dict[str, tuple[str, dict[str, Any], int]] = {
    "dpmpp_2m": ("sample_dpmpp_2m", {}, 1),
    "dpmpp_2m_sde eta=0 heun": ("sample_dpmpp_2m_sde", dict(eta=0.0, solver_type="heun"), 1),
    "dpmpp_3m_sde eta=0": ("sample_dpmpp_3m_sde", dict(eta=0.0), 1),
    "lms": ("sample_lms", {}, 1),
    "heun": ("sample_heun", {}, 2),
    "dpmpp_2m_sde midpoint": ("sample_dpmpp_2m_sde", dict(solver_type="midpoint"), 1),
    "dpmpp_2m_sde heun": ("sample_dpmpp_2m_sde", dict(solver_type="heun"), 1),
    "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", {}, 1),
}
K_GRIDS = ("karras", "exponential", "vp")


def k_sigmas(k: types.ModuleType, sde: SDE, eps: float, grid: str, num_steps: int) -> Tensor:
    """k-diffusion's grid of ``num_steps + 1`` sigmas from sigma(T) to sigma(eps) (its trailing 0 dropped)."""
    lo, hi = _sigma(sde, eps), _sigma(sde, sde.T)
    n = num_steps + 1
    if grid == "karras":
        sigmas = k.get_sigmas_karras(n, lo, hi, rho=7.0)
    elif grid == "exponential":
        sigmas = k.get_sigmas_exponential(n, lo, hi)
    else:  # uniform in time, VP: beta_d = beta_max - beta_min
        sigmas = k.get_sigmas_vp(n, beta_d=sde.beta_max - sde.beta_min, beta_min=sde.beta_min, eps_s=eps)
    return sigmas[:-1].to(torch.float64)


def k_sample(
    name: str,
    grid: str,
    sde: SDE,
    score: Callable,
    x_T: Tensor,
    eps: float,
    nfe: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """Run k-diffusion's sampler ``name`` on its ``grid`` with ``nfe`` score calls: (x at eps, NFE)."""
    k = kdiffusion_sampling()
    fn, opts, per_step = K_SAMPLERS[name]
    sigmas = k_sigmas(k, sde, eps, grid, nfe // per_step).to(x_T.dtype)
    model = Denoiser(sde, score)
    if fn.endswith("_sde") and opts.get("eta", 1.0):  # stochastic: fresh N(0, I) per step from `generator`

        def noise(sigma: Tensor, sigma_next: Tensor) -> Tensor:
            return torch.randn(x_T.shape, generator=generator, dtype=x_T.dtype)

        opts = dict(opts, noise_sampler=noise)
    xbar = getattr(k, fn)(model, x_T / _alpha(sde, sde.T), sigmas, disable=True, **opts)
    return xbar * _alpha(sde, eps), model.nfe


# ---- diffusers --------------------------------------------------------------------------------------------

#: diffusers schedulers: name -> (class name, options).
D_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "DPM++ 2M": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2)),
    "DPM++ 3M": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=3)),
    "UniPC-2 bh2": ("UniPCMultistepScheduler", dict(solver_order=2, solver_type="bh2")),
    "UniPC-3 bh2": ("UniPCMultistepScheduler", dict(solver_order=3, solver_type="bh2")),
    "UniPC-3 bh1": ("UniPCMultistepScheduler", dict(solver_order=3, solver_type="bh1")),
    "SDE-DPM++ 2M midpoint": (
        "DPMSolverMultistepScheduler",
        dict(algorithm_type="sde-dpmsolver++", solver_order=2, solver_type="midpoint"),
    ),
    "SDE-DPM++ 2M heun": (
        "DPMSolverMultistepScheduler",
        dict(algorithm_type="sde-dpmsolver++", solver_order=2, solver_type="heun"),
    ),
}
#: grid name -> scheduler flags.
D_GRIDS: dict[str, dict[str, bool]] = {
    "linspace": {},
    "karras": dict(use_karras_sigmas=True),
    "lu_lambdas": dict(use_lu_lambdas=True),  # DPMSolverMultistepScheduler only
    "exponential": dict(use_exponential_sigmas=True),
}


def d_scheduler(name: str, grid: str, sde: SDE, eps: float) -> Any:
    """The diffusers scheduler ``name`` with the SDE's schedule on 1000 times uniform in [eps, T]."""
    cls, opts = D_SAMPLERS[name]
    t = torch.linspace(eps, sde.T, 1000, dtype=torch.float64)
    alpha, std = sde.alpha_std(t)
    alphas_cumprod = 1 / (1 + (std / alpha) ** 2)
    betas = 1 - alphas_cumprod / torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    scheduler = getattr(diffusers_schedulers(), cls)(
        trained_betas=betas.numpy(), final_sigmas_type="sigma_min", **opts, **D_GRIDS[grid]
    )
    if not float(scheduler.alphas_cumprod[0]) < 1:
        raise ValueError(f"diffusers' float32 schedule rounds sigma(eps) = {_sigma(sde, eps):.1e} to 0")
    return scheduler


def d_sample(
    name: str,
    grid: str,
    sde: SDE,
    score: Callable,
    x_T: Tensor,
    eps: float,
    nfe: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """Run diffusers' scheduler ``name`` on ``grid`` with ``nfe`` score calls: (x at eps, NFE)."""
    scheduler = d_scheduler(name, grid, sde, eps)
    # a sigma grid ends sigma_min, sigma_min: ask for one more and stop before the zero-length step
    scheduler.set_timesteps(nfe if grid == "linspace" else nfe + 1)
    model = Denoiser(sde, score)
    sigmas = scheduler.sigmas.to(torch.float64)[: nfe + 1]
    noise = dict(generator=generator) if "sde" in D_SAMPLERS[name][1].get("algorithm_type", "") else {}
    x = x_T / _alpha(sde, sde.T) / (1 + sigmas[0] ** 2).sqrt()  # the VP state at sigma_0
    for i, timestep in enumerate(scheduler.timesteps[:nfe]):
        sigma = sigmas[i]
        scale = (1 + sigma**2).sqrt()
        eps_pred = (x * scale - model(x * scale, sigma)) / sigma  # x_vp = (x_0 + sigma z) / sqrt(1 + sigma^2)
        x = scheduler.step(eps_pred, timestep, x, **noise).prev_sample.to(x_T.dtype)
    return x * (1 + sigmas[-1] ** 2).sqrt() * _alpha(sde, eps), model.nfe
