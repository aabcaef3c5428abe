"""Sample-quality metrics on features: Frechet distance (FID), kernel distance (KID), Inception Score.

Every metric here works on *features*, (N, F) tensors that some feature extractor (an ``nn.Module``
mapping images to features: Inception-v3's pool features for the standard FID, the digits classifier of
:mod:`diffscore.evaluation.digits` for the digits FID) produced; :func:`extract_features` runs any such
module over images in batches. All arithmetic is in float64 on the CPU: the metrics reduce a few
thousand feature vectors, and float32 loses the FID of close distributions to cancellation
(``tr S1 + tr S2 - 2 tr (S1 S2)^{1/2}`` subtracts numbers of similar size).

Sources:

* FID: Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local Nash
  equilibrium", eq. (6): the Frechet (2-Wasserstein) distance between the Gaussians fitted to the two
  feature sets, ``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})`` (Dowson & Landau 1982).
* KID: Binkowski et al. 2018, "Demystifying MMD GANs", sec. 3 and App. D: the unbiased estimator of the
  squared maximum mean discrepancy (Gretton et al. 2012, Lemma 6) with the cubic polynomial kernel
  ``k(x, y) = (x . y / F + 1)^3``, averaged over random subsets.
* Inception Score: Salimans et al. 2016, "Improved techniques for training GANs", sec. 4:
  ``exp(E_x KL(p(y | x) || p(y)))``, mean and standard deviation over ``num_splits`` splits.

Reference feature statistics (mean and covariance of a reference set) are computed once and saved to
a safetensors file (:meth:`FeatureStats.save`), as the reference implementations keep ``.npz`` files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..io import check_output, read_tensors, write_tensors

__all__ = [
    "FeatureStats",
    "KIDResult",
    "ISResult",
    "extract_features",
    "feature_stats",
    "frechet_distance",
    "fid",
    "polynomial_kernel",
    "mmd2_unbiased",
    "mmd2_jackknife_variance",
    "kid",
    "inception_score",
]

F64 = torch.float64


# ---- checks -------------------------------------------------------------------------------------------
def _features(name: str, x: Tensor, min_rows: int = 2) -> Tensor:
    """Validate an (N, F) feature tensor and return it as float64 on the CPU."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, F), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, F), got {tuple(x.shape)}")
    if x.shape[0] < min_rows or x.shape[1] < 1:
        raise ValueError(f"{name} needs at least {min_rows} rows and 1 column, got {tuple(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be a real tensor, got {x.dtype}")
    x = x.detach().to("cpu", F64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


# ---- Gaussian statistics of features ------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Mean and covariance of a feature set: the Gaussian that FID compares.

    Attributes:
        mean: (F,) float64. cov: (F, F) float64, the unbiased sample covariance (divisor N - 1, as
            ``numpy.cov`` in the reference implementations). num: N, the number of feature vectors.
        features: the (N, F) features themselves, kept when KID against this set is wanted (KID
            needs the features, not only their moments), else None.
    """

    mean: Tensor
    cov: Tensor
    num: int
    features: Tensor | None = None

    def __post_init__(self) -> None:
        mean, cov = self.mean, self.cov
        if not isinstance(mean, Tensor) or not isinstance(cov, Tensor):
            raise TypeError("mean and cov must be tensors")
        if mean.ndim != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
            raise ValueError(
                f"mean must be (F,) and cov (F, F), got {tuple(mean.shape)} and {tuple(cov.shape)}"
            )
        if isinstance(self.num, bool) or not isinstance(self.num, int) or self.num < 2:
            raise ValueError(f"num must be an int >= 2, got {self.num!r}")

    @property
    def dim(self) -> int:
        """F, the feature dimension."""
        return self.mean.shape[0]

    @classmethod
    def from_features(cls, features: Tensor, keep_features: bool = False) -> FeatureStats:
        """Statistics of (N, F) features, N >= 2 (see :func:`feature_stats`)."""
        return feature_stats(features, keep_features)

    def save(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
        """Write ``mean``, ``cov``, ``num`` (and ``features`` when kept) to a safetensors file, atomically.

        ``metadata``: optional string pairs stored in the file's header (e.g. which extractor and which
        reference set), returned by :meth:`load_metadata`.
        """
        path = check_output(path, (".safetensors",), "path")
        tensors = {"mean": self.mean, "cov": self.cov, "num": torch.tensor(self.num, dtype=torch.int64)}
        if self.features is not None:
            tensors["features"] = self.features
        return write_tensors(
            path, tensors, metadata={"format": "diffscore.FeatureStats/1", **(metadata or {})}
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        """Read statistics written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file. ValueError: not a safetensors file, or one without the
                ``mean`` / ``cov`` / ``num`` tensors (the message names the path).
        """
        tensors = read_tensors(path)
        missing = sorted({"mean", "cov", "num"} - set(tensors))
        if missing:
            raise ValueError(f"{str(path)!r} holds no feature statistics (missing {missing})")
        feats = tensors.get("features")
        return cls(
            tensors["mean"].to(F64),
            tensors["cov"].to(F64),
            int(tensors["num"]),
            None if feats is None else feats.to(F64),
        )

    @staticmethod
    def load_metadata(path: str | os.PathLike) -> dict[str, str]:
        """The string metadata stored by :meth:`save` (includes ``format``)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})


def feature_stats(features: Tensor, keep_features: bool = False) -> FeatureStats:
    """Mean and unbiased covariance (divisor N - 1) of (N, F) features, in float64.

    ``keep_features``: store the (float64, CPU) features in the result too (for KID).

    Raises:
        ValueError: not shaped (N, F) with N >= 2, or NaN/inf. TypeError: not a real tensor.
    """
    x = _features("features", features)
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / (x.shape[0] - 1)
    return FeatureStats(mean, (cov + cov.T) / 2, x.shape[0], x if keep_features else None)


# ---- Frechet distance ---------------------------------------------------------------------------------
def _psd_sqrt(s: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix by eigen-decomposition.

    Eigenvalues below ``F eps max|lambda|`` (float64 eps) are set to zero: that is the size of the
    rounding error of a symmetric eigensolver (backward stable: the computed eigenvalues are exact for
    a matrix within ``O(F eps ||S||)`` of S), so such eigenvalues, and the negative ones that rounding
    produces for a rank-deficient covariance, are indistinguishable from 0. Taking their square root
    instead would turn an error of 1e-16 into one of 1e-8.
    """
    lam, vec = torch.linalg.eigh(s)
    cutoff = s.shape[0] * torch.finfo(F64).eps * lam.abs().max().clamp_min(torch.finfo(F64).tiny)
    root = torch.where(lam > cutoff, lam, torch.zeros_like(lam)).sqrt()
    return (vec * root) @ vec.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2): the squared 2-Wasserstein distance.

        d^2 = ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})

    (Dowson & Landau 1982; Heusel et al. 2017, eq. 6.) The trace of the square root is computed without
    a non-symmetric matrix square root: with ``A = sigma1^{1/2}`` and ``B = sigma2^{1/2}`` (symmetric,
    by eigen-decomposition), ``sigma1 sigma2`` is similar to ``A sigma2 A = (A B)(A B)^T``, so
    ``tr((sigma1 sigma2)^{1/2})`` is the sum of the singular values of ``A B`` (its nuclear norm).
    Singular values are computed to an absolute error of ``eps ||A|| ||B||``, with no square root of
    a rounding error, so covariances of any rank, including singular ones (fewer samples than
    features, dead features), need no regularising ``eps I`` offset. (``scipy.linalg.sqrtm`` of the
    non-symmetric product, the route of the reference implementations, warns and loses accuracy when
    the product is singular; they then add ``1e-6 I``, a bias of that order.)

    Args:
        mu1, mu2: (F,) means. sigma1, sigma2: (F, F) symmetric positive semi-definite covariances.
            Any real dtype and device; computed in float64 on the CPU.

    Returns:
        The distance as a Python float (>= 0; tiny negative rounding is clipped to 0).

    Raises:
        ValueError: mismatched shapes, NaN/inf, or a covariance that is not symmetric (relative
            asymmetry above 1e-6) or has an eigenvalue below ``-1e-6 ||sigma||`` (not PSD).
        TypeError: arguments that are not tensors.
    """
    args = {"mu1": mu1, "sigma1": sigma1, "mu2": mu2, "sigma2": sigma2}
    for name, value in args.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    m1, s1, m2, s2 = (v.detach().to("cpu", F64) for v in (mu1, sigma1, mu2, sigma2))
    f = m1.shape[0] if m1.ndim == 1 else -1
    if m1.ndim != 1 or m2.shape != (f,) or s1.shape != (f, f) or s2.shape != (f, f):
        raise ValueError(
            "need mu1, mu2 shaped (F,) and sigma1, sigma2 shaped (F, F), got "
            f"{tuple(m1.shape)}, {tuple(s1.shape)}, {tuple(m2.shape)}, {tuple(s2.shape)}"
        )
    for name, v in zip(args, (m1, s1, m2, s2), strict=True):
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} contains NaN or inf")
    for name, s in (("sigma1", s1), ("sigma2", s2)):
        scale = s.abs().max()
        if float((s - s.T).abs().max()) > 1e-6 * float(scale):
            raise ValueError(f"{name} must be symmetric")
        if float(torch.linalg.eigvalsh((s + s.T) / 2).min()) < -1e-6 * float(scale):
            raise ValueError(f"{name} must be positive semi-definite")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    cross = torch.linalg.svdvals(_psd_sqrt(s1) @ _psd_sqrt(s2)).sum()
    d2 = (m1 - m2).square().sum() + s1.trace() + s2.trace() - 2 * cross
    return max(float(d2), 0.0)


def fid(a: Tensor | FeatureStats, b: Tensor | FeatureStats) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets (Heusel et al. 2017).

    Args:
        a, b: (N, F) features (N >= 2) or their :class:`FeatureStats` (e.g. loaded reference statistics).

    Returns:
        FID as a float: in the units of the squared features. It is biased upwards at finite N (about
        ``tr`` of the covariances times ``1/N_a + 1/N_b`` for equal distributions): compare values
        computed with the same numbers of samples only.

    Raises:
        ValueError: different feature dimensions; bad features (see :func:`feature_stats`).
    """
    sa = a if isinstance(a, FeatureStats) else feature_stats(a)
    sb = b if isinstance(b, FeatureStats) else feature_stats(b)
    if sa.dim != sb.dim:
        raise ValueError(f"feature dimensions differ: {sa.dim} and {sb.dim}")
    return frechet_distance(sa.mean, sa.cov, sb.mean, sb.cov)


# ---- kernel inception distance ------------------------------------------------------------------------
def _stored_features(name: str, a: Tensor | FeatureStats, min_rows: int = 2) -> Tensor:
    if isinstance(a, FeatureStats):
        if a.features is None:
            raise ValueError(
                f"{name}: these statistics hold no features, which KID needs (keep_features=True)"
            )
        a = a.features
    return _features(name, a, min_rows)


def polynomial_kernel(
    x: Tensor, y: Tensor, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> Tensor:
    """Polynomial kernel matrix ``(gamma x y^T + coef0)^degree``; ``gamma`` defaults to 1 / F.

    With the defaults this is KID's kernel ``(x . y / F + 1)^3`` (Binkowski et al. 2018, sec. 3).
    x: (N, F), y: (M, F); returns (N, M) in their dtype.
    """
    g = 1.0 / x.shape[1] if gamma is None else gamma
    return (g * (x @ y.T) + coef0).pow(degree)


def mmd2_unbiased(k_xx: Tensor, k_yy: Tensor, k_xy: Tensor) -> Tensor:
    """Unbiased estimate of MMD^2 from kernel matrices (Gretton et al. 2012, Lemma 6, eq. 3):

        1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(n(n-1)) sum_{i != j} k(y_i, y_j)
            - 2/(mn) sum_{i,j} k(x_i, y_j)

    k_xx: (m, m), k_yy: (n, n), k_xy: (m, n), m, n >= 2. Returns a 0-d tensor (can be negative).
    """
    m, n = k_xx.shape[0], k_yy.shape[0]
    if m < 2 or n < 2 or k_xx.shape != (m, m) or k_yy.shape != (n, n) or k_xy.shape != (m, n):
        raise ValueError(
            "need k_xx (m, m), k_yy (n, n), k_xy (m, n) with m, n >= 2, got "
            f"{tuple(k_xx.shape)}, {tuple(k_yy.shape)}, {tuple(k_xy.shape)}"
        )
    xx = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    yy = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return xx + yy - 2 * k_xy.mean()


def _row_sums(x: Tensor, y: Tensor, degree: int, chunk: int = 2048) -> Tensor:
    """``sum_j k(x_i, y_j)`` for every i, computed in row blocks (no N x M matrix is kept)."""
    return torch.cat([polynomial_kernel(block, y, degree).sum(1) for block in x.split(chunk)])


def mmd2_jackknife_variance(x: Tensor, y: Tensor, degree: int = 3) -> tuple[float, float]:
    """The complete unbiased MMD^2 of two samples and the jackknife estimate of its variance.

    Two-sample delete-one jackknife (Arvesen 1969): with ``U_{-i}`` the estimate without ``x_i`` and
    ``U_{-j}`` without ``y_j`` (each O(1) from the kernel matrices' row sums),

        V = (m - 1)/m sum_i (U_{-i} - mean U_{-i})^2 + (n - 1)/n sum_j (U_{-j} - mean U_{-j})^2.

    For U-statistics the jackknife variance is biased upwards in expectation (Efron & Stein 1981), so
    ``sqrt(V)`` is a conservative standard error, also when the two distributions are equal (where the
    estimator's first-order variance vanishes). Cost O((m + n)^2 F), memory O((m + n) * 2048).

    Args:
        x: (m, F), y: (n, F) features, m, n >= 3. degree: of the kernel ``(x . y / F + 1)^degree``.

    Returns:
        ``(mmd2, variance)`` as floats.
    """
    m, n = x.shape[0], y.shape[0]
    if m < 3 or n < 3:
        raise ValueError(f"the jackknife needs at least 3 rows in each set, got {m} and {n}")
    kx_diag = ((x * x).sum(1) / x.shape[1] + 1).pow(degree)
    ky_diag = ((y * y).sum(1) / y.shape[1] + 1).pow(degree)
    rx = _row_sums(x, x, degree) - kx_diag  # sum_{j != i} k(x_i, x_j)
    ry = _row_sums(y, y, degree) - ky_diag
    cx = _row_sums(x, y, degree)  # sum_j k(x_i, y_j)
    cy = _row_sums(y, x, degree)  # sum_i k(x_i, y_j)
    sxx, syy, sxy = rx.sum(), ry.sum(), cx.sum()
    a, b, c = sxx / (m * (m - 1)), syy / (n * (n - 1)), sxy / (m * n)
    u_x = (sxx - 2 * rx) / ((m - 1) * (m - 2)) + b - 2 * (sxy - cx) / ((m - 1) * n)
    u_y = a + (syy - 2 * ry) / ((n - 1) * (n - 2)) - 2 * (sxy - cy) / (m * (n - 1))
    var = (m - 1) / m * (u_x - u_x.mean()).square().sum() + (n - 1) / n * (u_y - u_y.mean()).square().sum()
    return float(a + b - 2 * c), float(var)


@dataclass(frozen=True)
class KIDResult:
    """Kernel distance over subsets.

    Attributes:
        mean: mean over the subsets of the unbiased MMD^2 (the KID).
        std: standard deviation over the subsets (divisor S - 1; torch-fidelity's "KID std" uses S,
            which is smaller by a factor sqrt((S - 1) / S)). It measures how much one subset's
            estimate varies, not the uncertainty of ``mean``.
        std_err: standard error of ``mean`` as an estimate of the population MMD^2:
            ``sqrt(V_jack + std^2 / S)``. The subsets average to the complete U-statistic of the two
            full sets (conditionally on them), so the variance of ``mean`` is that of the complete
            statistic, estimated by :func:`mmd2_jackknife_variance` (conservative), plus the Monte
            Carlo variance of averaging S subsets, ``std^2 / S``. Without the jackknife
            (``jackknife=False``) only the second term: right only when the pools are much larger
            than ``S * subset_size``.
        num_subsets, subset_size: as used (``subset_size`` capped at the smaller pool).
        values: (num_subsets,) the per-subset estimates.
    """

    mean: float
    std: float
    std_err: float
    num_subsets: int
    subset_size: int
    values: Tensor


def kid(
    a: Tensor | FeatureStats,
    b: Tensor | FeatureStats,
    num_subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
    degree: int = 3,
    jackknife: bool | None = None,
) -> KIDResult:
    """Kernel Inception Distance: the unbiased MMD^2 with ``(x . y / F + 1)^degree``, over random subsets.

    Each of ``num_subsets`` subsets draws ``subset_size`` rows of ``a`` and ``subset_size`` rows of ``b``
    without replacement (independently for every subset), as torch-fidelity and Binkowski et al. 2018
    (App. D) do, and computes :func:`mmd2_unbiased`; the result is their mean and spread. Unbiased:
    for every subset size, the expected value is the population MMD^2 (which is 0 iff the two
    distributions have equal moments up to ``degree``, for this kernel). The standard error accounts
    for the finite sets as well as for the subsets (see :class:`KIDResult`).

    Args:
        a, b: (N_a, F) and (N_b, F) features, N >= 3, or :class:`FeatureStats` that kept them.
        num_subsets: S >= 1 (reference: 100).
        subset_size: m >= 2 (reference: 1000), capped at min(N_a, N_b).
        generator: CPU torch.Generator for the subsets (default: torch's global one).
        degree: polynomial degree (reference: 3).
        jackknife: include the jackknife variance of the complete statistic in ``std_err``; default
            (None): when both sets have at most 20 000 rows (its cost is O((N_a + N_b)^2 F)).

    Returns:
        :class:`KIDResult`.

    Raises:
        ValueError / TypeError: bad features (see :func:`feature_stats`), different feature
            dimensions, bad counts.
    """
    x, y = _stored_features("a", a, 3), _stored_features("b", b, 3)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} and {y.shape[1]}")
    check_int("num_subsets", num_subsets, 1)
    m = min(check_int("subset_size", subset_size, 2), x.shape[0], y.shape[0])
    check_int("degree", degree, 1)
    values = torch.empty(num_subsets, dtype=F64)
    for s in range(num_subsets):
        xs = x[torch.randperm(x.shape[0], generator=generator)[:m]]
        ys = y[torch.randperm(y.shape[0], generator=generator)[:m]]
        values[s] = mmd2_unbiased(
            polynomial_kernel(xs, xs, degree),
            polynomial_kernel(ys, ys, degree),
            polynomial_kernel(xs, ys, degree),
        )
    std = float(values.std()) if num_subsets > 1 else 0.0
    if jackknife is None:
        jackknife = max(x.shape[0], y.shape[0]) <= 20_000
    var = std**2 / num_subsets
    if jackknife:
        var += mmd2_jackknife_variance(x, y, degree)[1]
    return KIDResult(float(values.mean()), std, math.sqrt(var), num_subsets, m, values)


# ---- Inception Score ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ISResult:
    """Inception Score over splits: ``mean`` and ``std`` of ``exp(E KL)`` over ``num_splits`` splits,
    ``values`` the per-split scores."""

    mean: float
    std: float
    num_splits: int
    values: Tensor


def inception_score(
    logits: Tensor | None = None, *, probs: Tensor | None = None, num_splits: int = 10
) -> ISResult:
    """Inception Score ``exp(E_x KL(p(y | x) || p(y)))`` (Salimans et al. 2016, sec. 4).

    The N samples are cut, in order, into ``num_splits`` consecutive splits, split i holding rows
    ``[i N // num_splits, (i + 1) N // num_splits)`` (the reference code's boundaries); in each,
    ``p(y)`` is the mean of the split's ``p(y | x)`` and the score is
    ``exp(mean_x sum_y p(y|x) (log p(y|x) - log p(y)))``. Returns the mean and the standard deviation
    (divisor ``num_splits``, as the reference implementation's ``np.std``) of the split scores.
    Between 1 (every sample gets the same class distribution) and K (each sample
    is certain of its class and the classes are used equally).

    Args:
        logits: (N, K) class logits (log-probabilities up to a per-row constant). Or
        probs: (N, K) class probabilities (rows summing to 1, entries >= 0).
        num_splits: number of splits (reference: 10), 1 <= num_splits <= N.

    Returns:
        :class:`ISResult`.

    Raises:
        ValueError: neither or both of logits / probs; bad shapes, NaN/inf, probabilities that are
            negative or whose rows do not sum to 1 (within 1e-6); ``num_splits`` outside [1, N].
    """
    if (logits is None) == (probs is None):
        raise ValueError("give exactly one of logits and probs")
    if logits is not None:
        logp = torch.log_softmax(_features("logits", logits, 1), dim=1)
    else:
        p = _features("probs", probs, 1)
        if bool((p < 0).any()) or float((p.sum(1) - 1).abs().max()) > 1e-6:
            raise ValueError("probs must be non-negative with rows summing to 1")
        logp = torch.log(p)  # log 0 = -inf: handled by the xlogy-style product below
    n = logp.shape[0]
    check_int("num_splits", num_splits, 1)
    if num_splits > n:
        raise ValueError(f"num_splits must be <= the number of samples {n}, got {num_splits}")
    p = logp.exp()
    scores = []
    for i in range(num_splits):
        rows = slice(i * n // num_splits, (i + 1) * n // num_splits)
        part_p, part_logp = p[rows], logp[rows]
        log_marginal = part_p.mean(0).log()
        kl = torch.where(part_p > 0, part_p * (part_logp - log_marginal), torch.zeros_like(part_p)).sum(1)
        scores.append(kl.mean().exp())
    values = torch.stack(scores)
    return ISResult(float(values.mean()), float(values.std(unbiased=False)), num_splits, values)


# ---- running an extractor -----------------------------------------------------------------------------
@torch.no_grad()
def extract_features(
    extractor: nn.Module | None,
    images: Tensor | Iterable[Tensor],
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> Tensor:
    """Run ``extractor`` over ``images`` in batches; (N, F) float64 features on the CPU.

    Args:
        extractor: any module (or callable) mapping a batch of images (B, *shape) to (B, F) features;
            None means the images themselves, flattened, are the features.
        images: a tensor (N, *shape), or an iterable of such batches (e.g. a DataLoader of tensors).
        batch_size: images per call when ``images`` is a tensor.
        device: where to run (default: the extractor's parameters' device, else the CPU); each batch is
            moved there and the features back to the CPU.

    Raises:
        ValueError: an extractor output that is not (B, F) with B the batch size, or NaN/inf features.
    """
    check_int("batch_size", batch_size, 1)
    if device is None:
        params = list(extractor.parameters()) if isinstance(extractor, nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
    batches = images.split(batch_size) if isinstance(images, Tensor) else images
    was_training = isinstance(extractor, nn.Module) and extractor.training
    if was_training:
        extractor.eval()
    out = []
    try:
        for batch in batches:
            x = batch.to(device)
            f = x.reshape(x.shape[0], -1) if extractor is None else extractor(x)
            if not isinstance(f, Tensor) or f.ndim != 2 or f.shape[0] != x.shape[0]:
                shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
                raise ValueError(
                    f"the extractor must return (B, F) features for a batch of {x.shape[0]}, got {shape}"
                )
            out.append(f.detach().to("cpu", F64))
    finally:
        if was_training:
            extractor.train()
    if not out:
        raise ValueError("images is empty")
    feats = torch.cat(out)
    if not bool(torch.isfinite(feats).all()):
        raise ValueError("the extractor returned NaN or inf features")
    return feats
