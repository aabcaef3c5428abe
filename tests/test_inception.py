"""Inception-v3 through torch-fidelity: one-line errors without the weights or the package, and (where
torch-fidelity is installed) agreement of diffscore's metric maths with torch-fidelity's own."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from diffscore.evaluation import (
    INCEPTION_WEIGHTS_FILE,
    MetricsUnavailableError,
    feature_stats,
    fid,
    inception_evaluator,
    inception_score,
    mmd2_unbiased,
    polynomial_kernel,
)
from diffscore.evaluation.inception import InceptionFeatures, load_inception


def test_missing_weights_give_one_line_error_naming_the_file(tmp_path):
    missing = tmp_path / "nowhere" / INCEPTION_WEIGHTS_FILE
    with pytest.raises(FileNotFoundError) as info:
        inception_evaluator(missing)
    message = str(info.value)
    assert "\n" not in message and INCEPTION_WEIGHTS_FILE in message and str(missing) in message


def test_missing_package_gives_one_line_import_error(tmp_path, monkeypatch):
    weights = tmp_path / INCEPTION_WEIGHTS_FILE
    weights.write_bytes(b"")
    # None in sys.modules makes `import torch_fidelity...` raise ImportError, as when it is not installed
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(MetricsUnavailableError) as info:
        load_inception(weights)
    assert isinstance(info.value, ImportError)  # the CLI prints ImportError as one line
    assert "\n" not in str(info.value) and "pip install 'diffscore[metrics]'" in str(info.value)


# ---- with torch-fidelity installed (the `metrics` extra); skipped otherwise -------------------------------
def test_not_a_weights_file_is_a_value_error(tmp_path):
    pytest.importorskip("torch_fidelity")
    bad = tmp_path / INCEPTION_WEIGHTS_FILE
    bad.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="is not the Inception-v3 weights file"):
        load_inception(bad)


def test_inception_features_with_random_weights(tmp_path, monkeypatch):
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    # random weights in torch-fidelity's layout, saved where a downloaded file would be
    monkeypatch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
    torch.manual_seed(0)
    net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    path = tmp_path / INCEPTION_WEIGHTS_FILE
    torch.save(net.state_dict(), path)
    monkeypatch.undo()
    ev = inception_evaluator(path, num_bins=256, batch_size=3)
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    feats = ev.features(images)
    direct = load_inception(path)(images.expand(-1, 3, -1, -1).contiguous())
    assert feats.shape == (4, 2048)
    # integer images -> bin centres -> quantize(256) gives back the very bytes: the network's own features
    assert torch.allclose(feats, direct[3].double(), rtol=0, atol=1e-5)
    assert torch.allclose(ev.logits(images), direct[4].double(), rtol=0, atol=1e-5)
    assert isinstance(ev.extractor, InceptionFeatures)


def test_metric_maths_agree_with_torch_fidelity():
    pytest.importorskip("torch_fidelity")
    from torch_fidelity.metric_fid import fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kernel_mmd

    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 20, generator=g, dtype=torch.float64)
    b = 0.8 * torch.randn(250, 20, generator=g, dtype=torch.float64) + 0.2
    sa, sb = feature_stats(a), feature_stats(b)
    theirs = fid_statistics_to_metric(
        {"mu": sa.mean.numpy(), "sigma": sa.cov.numpy()},
        {"mu": sb.mean.numpy(), "sigma": sb.cov.numpy()},
        False,
    )["frechet_inception_distance"]
    # agreement to 1e-9 relative: both float64, full-rank covariances (their eigvals route is accurate here)
    assert fid(a, b) == pytest.approx(theirs, rel=1e-9)
    ours = mmd2_unbiased(
        polynomial_kernel(a[:100], a[:100]),
        polynomial_kernel(b[:100], b[:100]),
        polynomial_kernel(a[:100], b[:100]),
    )
    assert float(ours) == pytest.approx(float(kernel_mmd(a[:100].numpy(), b[:100].numpy())), rel=1e-10)
    logits = torch.randn(105, 7, generator=g, dtype=torch.float64) * 3
    theirs = isc_features_to_metric(logits, splits=10, shuffle=False)
    res = inception_score(logits, num_splits=10)
    assert res.mean == pytest.approx(theirs["inception_score_mean"], rel=1e-12)
    assert res.std == pytest.approx(theirs["inception_score_std"], rel=1e-9)
    assert np.isfinite(res.mean)
