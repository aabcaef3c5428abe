"""diffscore.convert: published score_sde_pytorch / diffusers checkpoints -> diffscore models.

The numbers compared against come from the reference implementations themselves (tests/data/published,
see its README.md): each converted model must give the reference's score to 5e-4 per-sample relative
norm, in memory and after save_pretrained / from_pretrained.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from published import DIFFUSERS, ROOT, SCORE_SDE, TOLERANCE, check_model_dir, relative_errors, score_sde_paths

import diffscore as ds
from diffscore.convert import (
    RELEASED,
    ConversionError,
    diffusers_spec,
    from_diffusers,
    from_score_sde,
    load_diffusers,
    load_score_sde,
    released_config,
    score_sde_spec,
)
from diffscore.io import read_json, read_tensors, write_tensors
from diffscore.nets import NCSNpp, from_config, num_parameters
from diffscore.sde import VESDE, VPSDE, SubVPSDE, sde_to_config


# ---- the reference's scores -----------------------------------------------------------------------
@pytest.mark.parametrize("name", SCORE_SDE)
def test_score_sde_checkpoint_reproduces_reference_score(name, tmp_path):
    checkpoint, config = score_sde_paths(name)
    model, _ = load_score_sde(checkpoint, config)
    errors = relative_errors(model, name)
    assert bool((errors < TOLERANCE).all()), errors
    # the same through the directory a user gets, loaded back
    out = from_score_sde(checkpoint, config, tmp_path / "model")
    assert check_model_dir(out, name) == pytest.approx(float(errors.max()), rel=1e-3)


def test_diffusers_model_reproduces_reference_score(tmp_path):
    model, _ = load_diffusers(ROOT / DIFFUSERS)
    errors = relative_errors(model, DIFFUSERS)
    assert bool((errors < TOLERANCE).all()), errors
    out = from_diffusers(ROOT / DIFFUSERS, tmp_path / "model")
    assert check_model_dir(out, DIFFUSERS) == pytest.approx(float(errors.max()), rel=1e-3)
    # the unet folder itself works too (its scheduler folder lies beside it)
    model_unet, _ = load_diffusers(ROOT / DIFFUSERS / "unet")
    assert float(relative_errors(model_unet, DIFFUSERS).max()) == float(errors.max())


@pytest.mark.parametrize("name", ["ve_ncsnpp_cifar10_continuous", "vp_ddpmpp_cifar10_continuous"])
def test_raw_weights_are_not_what_the_reference_evaluates(name):
    # The fixtures' EMA and raw weights were drawn independently: the raw ones are off by O(1) (README:
    # 1.4 and 1.3), so the 5e-4 agreement above shows that the EMA list was picked and aligned.
    model, metadata = load_score_sde(*score_sde_paths(name), weights="raw")
    assert float(relative_errors(model, name).min()) > 0.5
    assert metadata["source"]["weights"] == "raw"


@pytest.mark.parametrize("name", SCORE_SDE)
def test_converted_model_conventions(name):
    model, metadata = load_score_sde(*score_sde_paths(name))
    ve = name.startswith("ve")
    sde = model.sde
    if ve:
        # the released VE convention: std(t) = sigma(t), so std(0) = sigma_min, and the network embeds
        # log sigma(t); data in [0, 1] centred inside the network
        assert isinstance(sde, VESDE) and sde.kernel == "sigma" and model.parameterization == "scaled"
        t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
        sigma = sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
        torch.testing.assert_close(sde.marginal_coeffs(t)[1], sigma, rtol=1e-12, atol=0)
        net = model.net
        torch.testing.assert_close(net.time_shift + net.time_scale * t, sigma.log(), rtol=1e-12, atol=1e-12)
        assert net.center_input and metadata["data_range"] == [0.0, 1.0]
        assert metadata["sampling"]["eps"] == 1e-5 and metadata["sampling"]["corrector"] == "langevin"
    else:
        assert type(sde) is (VPSDE if name.startswith("vp") else SubVPSDE)
        assert (sde.beta_min, sde.beta_max) == (0.1, 20.0) and model.parameterization == "noise"
        assert model.net.time_scale == 999.0 and not model.net.center_input
        assert metadata["data_range"] == [-1.0, 1.0] and metadata["sampling"]["eps"] == 1e-3
    assert metadata["image_shape"] == [3, 16, 16] and metadata["num_bins"] == 256
    # the training step and EMA settings the fixtures' README lists
    steps = dict(zip(SCORE_SDE, (1300, 2600, 3900, 5200), strict=True))
    source = metadata["source"]
    assert (source["step"], source["weights"], source["ema_num_updates"]) == (steps[name], "ema", steps[name])
    assert source["ema_decay"] == metadata["ema_rate"] == (0.999 if ve else 0.9999)


# ---- presets: the released configs ------------------------------------------------------------------
# Trainable parameters of the reference networks. The frozen Fourier frequencies (nf values) are a
# buffer in diffscore and not counted; torch's parameters() counts them in the reference and in diffusers
# (the diffusers fixture: 55,985 = 55,977 + 8, test below).
REFERENCE_COUNTS = {
    # issue 12 / Song et al. 2021 Table 3 (62.76M, 107.59M, 61.80M, 106.63M), exact counts from the issue
    "ve/cifar10_ncsnpp_continuous": 62_758_787,
    "ve/cifar10_ncsnpp_deep_continuous": 107_586_947,
    "vp/cifar10_ddpmpp_continuous": 61_804_419,
    "vp/cifar10_ddpmpp_deep_continuous": 106_632_579,
    # configs/subvp/cifar10_ddpmpp*_continuous.py hold the same model section as their vp twins
    "subvp/cifar10_ddpmpp_continuous": 61_804_419,
    "subvp/cifar10_ddpmpp_deep_continuous": 106_632_579,
    # issue 12: diffusers' hosted 256-px NCSN++ layout, which maps one-to-one onto the reference's; the
    # four 256-px configs share one model section (they differ in sigma_max and data only)
    "ve/celebahq_256_ncsnpp_continuous": 65_574_421,
    "ve/ffhq_256_ncsnpp_continuous": 65_574_421,
    "ve/church_ncsnpp_continuous": 65_574_421,
    "ve/bedroom_ncsnpp_continuous": 65_574_421,
    # issue 12: diffusers' hosted 1024-px layout (google/ncsnpp-ffhq-1024);
    # configs/ve/ffhq_ncsnpp_continuous.py
    "ve/ffhq_1024_ncsnpp_continuous": 105_785_880,
}


def _meta_net(spec) -> NCSNpp:
    with torch.device("meta"):  # no memory, no init work
        return from_config(spec["net"])


def test_every_released_preset_has_the_reference_parameter_count():
    assert set(RELEASED) == set(REFERENCE_COUNTS)
    counts = {name: num_parameters(_meta_net(score_sde_spec(name))) for name in RELEASED}
    assert counts == REFERENCE_COUNTS


def test_fixture_networks_have_the_reference_parameter_counts():
    # "trainable params" as counted by the reference itself (tests/data/published/README.md)
    readme = {
        "ve_ncsnpp_cifar10_continuous": 66_859,
        "vp_ddpmpp_cifar10_continuous": 48_275,
        "subvp_ddpmpp_cifar10_continuous": 48_275,
        "ve_ncsnpp_celebahq256_continuous": 56_585,
    }
    for name, count in readme.items():
        assert num_parameters(_meta_net(score_sde_spec(score_sde_paths(name)[1]))) == count
    # diffusers counts the frozen frequencies (8 here) among its 55,985 parameters
    model, _ = load_diffusers(ROOT / DIFFUSERS)
    assert num_parameters(model.net) + model.net.embed.W.numel() == 55_985


def _hosted_layout(image_size: int, block_out_channels: list[int], layers: int) -> dict:
    """The UNet2DModel config diffusers' conversion script gives a released NCSN++ (attention at 16 px)."""
    n = len(block_out_channels)
    attn = [image_size // 2**i == 16 for i in range(n)]
    return dict(
        _class_name="UNet2DModel",
        sample_size=image_size,
        block_out_channels=block_out_channels,
        layers_per_block=layers,
        down_block_types=["AttnSkipDownBlock2D" if a else "SkipDownBlock2D" for a in attn],
        up_block_types=["AttnSkipUpBlock2D" if a else "SkipUpBlock2D" for a in attn[::-1]],
        time_embedding_type="fourier",
        act_fn="silu",
        norm_eps=1e-6,
        norm_num_groups=None,
        attention_head_dim=None,
        mid_block_type="UNetMidBlock2D",
        mid_block_scale_factor=math.sqrt(2.0),
        resnet_time_scale_shift="default",
        add_attention=True,
        center_input_sample=True,
        in_channels=3,
        out_channels=3,
    )


@pytest.mark.parametrize(
    "image_size, channels, layers, count",
    [
        # issue 12: the hosted 256-px layout (configs/ve/*_256_ncsnpp_continuous.py: nf 128,
        # ch_mult (1, 1, 2, 2, 2, 2, 2), 2 blocks) and the 1024-px one (ffhq_ncsnpp_continuous.py)
        (256, [128, 128, 256, 256, 256, 256, 256], 2, 65_574_421),
        (1024, [16, 32, 64, 128, 256, 512, 512, 512], 1, 105_785_880),
    ],
)
def test_hosted_diffusers_layouts_map_with_the_reference_parameter_count(image_size, channels, layers, count):
    scheduler = dict(_class_name="ScoreSdeVeScheduler", sigma_min=0.01, sigma_max=348.0)
    scheduler.update(num_train_timesteps=2000, snr=0.15, sampling_eps=1e-5, correct_steps=1)
    # the group counts diffusers gives these layouts all equal NCSN++'s (>= 128 channels at attention)
    spec = diffusers_spec(_hosted_layout(image_size, channels, layers), scheduler)
    assert num_parameters(_meta_net(spec)) == count
    assert spec["net"]["time_scale"] == math.log(348.0 / 0.01)


_FIXTURE_PRESET = {
    "ve_ncsnpp_cifar10_continuous": "ve/cifar10_ncsnpp_continuous",
    "vp_ddpmpp_cifar10_continuous": "vp/cifar10_ddpmpp_continuous",
    "subvp_ddpmpp_cifar10_continuous": "subvp/cifar10_ddpmpp_continuous",
    "ve_ncsnpp_celebahq256_continuous": "ve/celebahq_256_ncsnpp_continuous",
}


@pytest.mark.parametrize("name", SCORE_SDE)
def test_presets_agree_with_the_reference_configs(name):
    # Each fixture's config.json is the published config file exported by the reference, shrunk by
    # overriding image_size, nf, ch_mult, num_res_blocks and attn_resolutions only. The preset with the
    # same overrides must translate to the same network, SDE, parameterization, data and sampler settings.
    fixture = read_json(score_sde_paths(name)[1])
    preset = released_config(_FIXTURE_PRESET[name])
    preset["data"]["image_size"] = fixture["data"]["image_size"]
    for key in ("nf", "ch_mult", "num_res_blocks", "attn_resolutions"):
        preset["model"][key] = fixture["model"][key]
    ours, theirs = score_sde_spec(preset), score_sde_spec(fixture)
    assert ours["net"] == theirs["net"]
    assert sde_to_config(ours["sde"]) == sde_to_config(theirs["sde"])
    assert ours["parameterization"] == theirs["parameterization"]
    assert ours["metadata"] == theirs["metadata"]


def test_preset_settings_of_the_paper():
    # sigma_max per data set, 1000 / 2000 steps, snr, end times (score_sde_pytorch configs and run_lib.py)
    expect = {
        "ve/cifar10_ncsnpp_continuous": (50.0, 1000, 0.16, 1e-5),
        "ve/celebahq_256_ncsnpp_continuous": (348.0, 2000, 0.075, 1e-5),
        "ve/ffhq_256_ncsnpp_continuous": (348.0, 2000, 0.075, 1e-5),
        "ve/church_ncsnpp_continuous": (380.0, 2000, 0.075, 1e-5),
        "ve/bedroom_ncsnpp_continuous": (378.0, 2000, 0.075, 1e-5),
        "ve/ffhq_1024_ncsnpp_continuous": (1348.0, 2000, 0.15, 1e-5),
    }
    for name, (sigma_max, steps, snr, eps) in expect.items():
        spec = score_sde_spec(name)
        s = spec["metadata"]["sampling"]
        assert (spec["sde"].sigma_max, s["num_steps"], s["snr"], s["eps"]) == (sigma_max, steps, snr, eps)
        assert (s["predictor"], s["corrector"], s["n_steps"]) == ("reverse_diffusion", "langevin", 1)
    for name in ("vp/cifar10_ddpmpp_continuous", "subvp/cifar10_ddpmpp_deep_continuous"):
        s = score_sde_spec(name)["metadata"]["sampling"]
        assert (s["predictor"], s["corrector"], s["num_steps"], s["eps"]) == (
            "euler_maruyama",
            "none",
            1000,
            1e-3,
        )


# ---- a converted model is a plain ScoreModel: every entry point --------------------------------------
def _zero_output_checkpoint(name: str, path: Path) -> Path:
    """The fixture with the output conv's EMA weights set to zero: the network returns exactly 0, so the
    score is 0 and the probability-flow ODE has a closed form."""
    ckpt = torch.load(score_sde_paths(name)[0], weights_only=True)
    for p in ckpt["ema"]["shadow_params"][-2:]:  # conv_out weight and bias (the last module)
        p.zero_()
    torch.save(ckpt, path)
    return path


def test_converted_ve_model_likelihood_encode_decode_against_closed_form(tmp_path):
    name = "ve_ncsnpp_cifar10_continuous"
    out = from_score_sde(
        _zero_output_checkpoint(name, tmp_path / "zero.pth"), score_sde_paths(name)[1], tmp_path / "m"
    )
    model = ds.ScoreModel.from_pretrained(out)
    metadata = read_json(out / "config.json")["metadata"]
    sde = model.sde
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    # score 0 and VE drift 0: the flow is the identity and log p_0 is the prior's N(0, sigma_max^2)
    # (atol: dopri5's dense output re-forms y from polynomial coefficients with 16 y terms; measured
    # 1.9e-6, 16 float32 ulps at 1, although the vector field is exactly 0)
    z = ds.encode(sde, model, x, eps=metadata["likelihood_eps"])
    torch.testing.assert_close(z, x, rtol=0, atol=1e-5)
    torch.testing.assert_close(ds.decode(sde, model, z), x, rtol=0, atol=1e-5)
    res = ds.log_likelihood(
        sde, model, x, divergence="hutchinson", generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(res.logp, sde.prior_logp(x), rtol=1e-6, atol=0)
    # bits/dim of 8-bit data on the model's [0, 1]: -log2 N(x; 0, 50^2) per dim + log2(256) - log2(1),
    # with x^2 / (2 * 50^2) in [0, 1e-4] nats per dim
    x_int = torch.randint(0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(2))
    bpd = ds.bits_per_dim(
        sde, model, x_int, data_range=tuple(metadata["data_range"]), divergence="hutchinson"
    )
    low = 0.5 * math.log2(2 * math.pi * sde.sigma_max**2) + 8
    assert bool(((bpd.bpd >= low - 1e-5) & (bpd.bpd <= low + 1e-4 / math.log(2) + 1e-5)).all()), bpd.bpd


def test_converted_vp_model_encode_against_closed_form(tmp_path):
    name = "vp_ddpmpp_cifar10_continuous"
    out = from_score_sde(
        _zero_output_checkpoint(name, tmp_path / "zero.pth"), score_sde_paths(name)[1], tmp_path / "m"
    )
    model = ds.ScoreModel.from_pretrained(out)
    x = 2 * torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) - 1
    # score 0: dx/dt = -beta(t) x / 2, so z = x alpha(T) / alpha(eps)
    eps = 1e-3
    alpha = model.sde.marginal_coeffs(torch.tensor([eps, 1.0]))[0]
    z = ds.encode(model.sde, model, x, eps=eps, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(z, x * alpha[1] / alpha[0], rtol=1e-5, atol=1e-7)


def test_converted_model_samples_inpaints_and_colorizes(tmp_path):
    name = "ve_ncsnpp_celebahq256_continuous"
    checkpoint, config = score_sde_paths(name)
    model, metadata = load_score_sde(checkpoint, config)
    loaded = ds.ScoreModel.from_pretrained(from_score_sde(checkpoint, config, tmp_path / "m"))
    settings = {**metadata["sampling"], "num_steps": 4}  # the preset's PC sampler, shortened
    method = settings.pop("method")
    shape = (2, *metadata["image_shape"])
    with torch.no_grad():
        a = ds.sample(
            model.sde, model, shape, method=method, generator=torch.Generator().manual_seed(3), **settings
        )
        b = ds.sample(
            loaded.sde, loaded, shape, method=method, generator=torch.Generator().manual_seed(3), **settings
        )
    # same weights and conventions after the round trip: bitwise the same samples
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert bool(torch.isfinite(a).all())
    pc = {k: v for k, v in settings.items() if k != "eps"}
    x = torch.rand(shape, generator=torch.Generator().manual_seed(4))  # data in the model's [0, 1]
    mask = (torch.arange(16) < 8).float().expand(shape)
    filled = ds.inpaint(loaded.sde, loaded, x, mask, generator=torch.Generator().manual_seed(5), **pc)
    assert torch.equal(filled[mask == 1], x[mask == 1]) and bool(torch.isfinite(filled).all())
    gray = x.mean(1, keepdim=True)
    color = ds.colorize(loaded.sde, loaded, gray, generator=torch.Generator().manual_seed(6), **pc)
    # up to float32 rounding of the channel rotation at the samples' scale (~1e2 for this random network)
    atol = 1e-6 * float(color.abs().max())
    torch.testing.assert_close(color.mean(1, keepdim=True), gray, rtol=0, atol=atol)


# ---- refusals: one line naming the file and the tensor / field ----------------------------------------
def assert_refused(call, *needles: str) -> str:
    with pytest.raises(ConversionError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def test_truncated_and_corrupted_checkpoints_are_refused(tmp_path):
    checkpoint, config = score_sde_paths("vp_ddpmpp_cifar10_continuous")
    data = checkpoint.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    assert_refused(lambda: load_score_sde(truncated, config), "truncated.pth", "not a readable")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).byte().numpy().tobytes()
    )
    assert_refused(lambda: load_score_sde(garbage, config), "garbage.pth", "not a readable")
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(data[:20] + bytes(64) + data[84:])  # the zip's first local header destroyed
    assert_refused(lambda: load_score_sde(damaged, config), "damaged.pth")


def _make_marker(path: str) -> None:
    Path(path).touch()


class _Payload:
    """Unpickling this would call _make_marker: the test checks that it never happens."""

    marker = ""

    def __reduce__(self):
        return (_make_marker, (self.marker,))


def test_pickled_objects_are_refused_and_nothing_runs(tmp_path):
    checkpoint, config = score_sde_paths("vp_ddpmpp_cifar10_continuous")
    ckpt = torch.load(checkpoint, weights_only=True)
    payload = _Payload()
    payload.marker = str(tmp_path / "ran")
    ckpt["extra"] = payload
    evil = tmp_path / "evil.pth"
    torch.save(ckpt, evil)
    assert_refused(lambda: load_score_sde(evil, config), "evil.pth", "pickled Python object", "_make_marker")
    assert not (tmp_path / "ran").exists()
    # the same in a diffusers folder's .bin weights
    folder = tmp_path / "pipe"
    shutil.copytree(ROOT / DIFFUSERS, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    state = read_tensors(ROOT / DIFFUSERS / "unet" / "diffusion_pytorch_model.safetensors")
    torch.save({**state, "extra": payload}, folder / "unet" / "diffusion_pytorch_model.bin")
    assert_refused(lambda: load_diffusers(folder), "diffusion_pytorch_model.bin", "pickled Python object")
    assert not (tmp_path / "ran").exists()
    # a plain .bin state dict (tensors only) converts
    torch.save(state, folder / "unet" / "diffusion_pytorch_model.bin")
    model, _ = load_diffusers(folder)
    assert float(relative_errors(model, DIFFUSERS).max()) < TOLERANCE


def _edited(tmp_path: Path, edit) -> Path:
    checkpoint, _ = score_sde_paths("ve_ncsnpp_cifar10_continuous")
    ckpt = torch.load(checkpoint, weights_only=True)
    edit(ckpt)
    path = tmp_path / "edited.pth"
    torch.save(ckpt, path)
    return path


def test_mismatched_checkpoints_are_refused_naming_the_tensor(tmp_path):
    config = score_sde_paths("ve_ncsnpp_cifar10_continuous")[1]
    model_key = "module.all_modules.4.Conv_0.weight"

    def reshape(ckpt):
        ckpt["model"][model_key] = torch.zeros(8, 8, 1, 1)

    assert_refused(
        lambda: load_score_sde(_edited(tmp_path, reshape), config),
        "edited.pth",
        "ema.shadow_params[",
        model_key[7:],
    )

    def reshape_both(ckpt):
        index = [k for k in ckpt["model"] if k not in ("module.sigmas", "module.all_modules.0.W")].index(
            model_key
        )
        ckpt["model"][model_key] = torch.zeros(8, 8, 1, 1)
        ckpt["ema"]["shadow_params"][index] = torch.zeros(8, 8, 1, 1)

    assert_refused(
        lambda: load_score_sde(_edited(tmp_path, reshape_both), config),
        "all_modules.4.Conv_0.weight",
        "(8, 8, 1, 1)",
        "(8, 8, 3, 3)",
    )

    def drop(ckpt):
        del ckpt["model"]["module.all_modules.1.bias"]
        del ckpt["ema"]["shadow_params"][1]

    assert_refused(lambda: load_score_sde(_edited(tmp_path, drop), config), "'all_modules.1.bias'", "missing")

    def add(ckpt):
        ckpt["model"]["module.all_modules.999.weight"] = torch.zeros(3)
        ckpt["ema"]["shadow_params"].append(torch.zeros(3))

    assert_refused(
        lambda: load_score_sde(_edited(tmp_path, add), config), "'all_modules.999.weight'", "unexpected"
    )

    def short_ema(ckpt):
        ckpt["ema"]["shadow_params"].pop()

    assert_refused(lambda: load_score_sde(_edited(tmp_path, short_ema), config), "shadow_params holds")

    def nan(ckpt):
        ckpt["ema"]["shadow_params"][5][0] = float("nan")

    assert_refused(lambda: load_score_sde(_edited(tmp_path, nan), config), "NaN")

    def no_ema(ckpt):
        del ckpt["ema"]

    assert_refused(
        lambda: load_score_sde(_edited(tmp_path, no_ema), config), "no EMA weights", "weights='raw'"
    )


def test_wrong_config_for_a_checkpoint_is_refused(tmp_path):
    ve, _ = score_sde_paths("ve_ncsnpp_cifar10_continuous")
    # another architecture: the first tensor that does not fit is named
    assert_refused(lambda: load_score_sde(ve, score_sde_paths("ve_ncsnpp_celebahq256_continuous")[1]), "ve")
    assert_refused(lambda: load_score_sde(ve, "ve/cifar10_ncsnpp_continuous"), "all_modules.", "wrong config")
    # the same architecture with another sigma_max: only the sigmas buffer tells (as church vs bedroom)
    config = read_json(score_sde_paths("ve_ncsnpp_cifar10_continuous")[1])
    config["model"]["sigma_max"] = 90.0
    assert_refused(lambda: load_score_sde(ve, config), "module.sigmas", "sigma_max 90")


def test_configs_that_do_not_convert_are_refused(tmp_path):
    config = read_json(score_sde_paths("vp_ddpmpp_cifar10_continuous")[1])
    for section, key, value, needle in [
        ("training", "continuous", False, "training.continuous"),
        ("model", "name", "ddpm", "model.name"),
        ("model", "embedding_type", "fourier", "positional"),
        ("model", "nonlinearity", "elu", "model.nonlinearity"),
        ("training", "sde", "cld", "training.sde"),
    ]:
        bad = json.loads(json.dumps(config))
        bad[section][key] = value
        assert_refused(lambda bad=bad: score_sde_spec(bad), needle)
    del config["model"]["nf"]
    assert_refused(lambda: score_sde_spec(config), "field model.nf is missing")
    py = tmp_path / "cifar10_ddpmpp_continuous.py"
    py.write_text("raise SystemExit('must not run')\n")
    assert_refused(lambda: score_sde_spec(py), "not run", "JSON")
    assert_refused(lambda: score_sde_spec("ve/no_such_preset"), "neither a released preset")


def _pipeline(tmp_path: Path, edit_config=None, edit_state=None) -> Path:
    folder = tmp_path / "pipe"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(ROOT / DIFFUSERS, folder)
    if edit_config:
        path = folder / "unet" / "config.json"
        config = read_json(path)
        edit_config(config)
        path.write_text(json.dumps(config))
    if edit_state:
        path = folder / "unet" / "diffusion_pytorch_model.safetensors"
        state = read_tensors(path)
        edit_state(state)
        write_tensors(path, state)
    return folder


def test_diffusers_models_that_do_not_map_are_refused(tmp_path):
    weights = ROOT / DIFFUSERS / "unet" / "diffusion_pytorch_model.safetensors"
    folder = _pipeline(tmp_path)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(weights.read_bytes()[:100_000])
    assert_refused(
        lambda: load_diffusers(folder), "diffusion_pytorch_model.safetensors", "not a valid safetensors"
    )

    def block(c):
        c["down_block_types"][1] = "DownBlock2D"

    assert_refused(lambda: load_diffusers(_pipeline(tmp_path, block)), "config.json", "'DownBlock2D'")

    def positional(c):
        c["time_embedding_type"] = "positional"

    assert_refused(lambda: load_diffusers(_pipeline(tmp_path, positional)), "time_embedding_type")

    def attention_down_only(c):
        c["down_block_types"][2] = "AttnSkipDownBlock2D"

    assert_refused(
        lambda: load_diffusers(_pipeline(tmp_path, attention_down_only)), "attention at resolutions"
    )

    def attention_both(c):  # diffusers' attention GroupNorm has 32 groups; NCSN++ gives 16 channels 4
        c["down_block_types"][2] = "AttnSkipDownBlock2D"
        c["up_block_types"][0] = "AttnSkipUpBlock2D"

    assert_refused(lambda: load_diffusers(_pipeline(tmp_path, attention_both)), "group_norm", "32 groups")

    def reshape(s):
        s["conv_in.weight"] = torch.zeros(8, 3, 1, 1)

    assert_refused(
        lambda: load_diffusers(_pipeline(tmp_path, edit_state=reshape)), "'conv_in.weight'", "(8, 3, 3, 3)"
    )

    def extra(s):
        s["up_blocks.0.upsampler.Conv2d_0.weight"] = torch.zeros(1)

    assert_refused(
        lambda: load_diffusers(_pipeline(tmp_path, edit_state=extra)),
        "'up_blocks.0.upsampler.Conv2d_0.weight'",
    )


def test_legacy_diffusers_attention_names_convert(tmp_path):
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}

    def legacy(s):
        for key in list(s):
            new = key
            for a, b in renames.items():
                new = new.replace(a, b)
            s[new] = s.pop(key)
        s["time_proj.W"] = s.pop("time_proj.weight")

    model, _ = load_diffusers(_pipeline(tmp_path, edit_state=legacy))
    assert float(relative_errors(model, DIFFUSERS).max()) < TOLERANCE


def test_output_directory_is_not_overwritten_by_default(tmp_path):
    checkpoint, config = score_sde_paths("vp_ddpmpp_cifar10_continuous")
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    from_score_sde(checkpoint, config, out)  # a folder with other files: the model goes beside them
    assert_refused(lambda: from_score_sde(checkpoint, config, out), "already holds")
    from_score_sde(checkpoint, config, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"
    assert check_model_dir(out, "vp_ddpmpp_cifar10_continuous") < TOLERANCE
    # a config.json diffscore did not write is never replaced, overwrite or not
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="config.json"):
        from_score_sde(checkpoint, config, other, overwrite=True)
    assert (other / "config.json").read_text() == "{}"


# ---- the recipe script (examples/reproduce_sde_paper.py) ---------------------------------------------
def _recipe():
    import importlib.util

    path = Path(__file__).parents[1] / "examples" / "reproduce_sde_paper.py"
    spec = importlib.util.spec_from_file_location("reproduce_sde_paper", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_script_bits_per_dim_and_samples(tmp_path, capsys):
    recipe = _recipe()
    name = "ve_ncsnpp_cifar10_continuous"
    zero = from_score_sde(
        _zero_output_checkpoint(name, tmp_path / "z.pth"), score_sde_paths(name)[1], tmp_path / "z"
    )
    images = torch.randint(
        0, 256, (1, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    write_tensors(tmp_path / "images.safetensors", {"images": images})
    argv = ["bpd", "--model", str(zero), "--images", str(tmp_path / "images.safetensors"), "--repeats", "2"]
    argv += ["--batch-size", "1", "--device", "cpu", "--output", str(tmp_path / "bpd.safetensors")]
    assert recipe.main(argv) == 0
    values = read_tensors(tmp_path / "bpd.safetensors")["bpd"]
    # score 0 under the VE SDE: bits/dim of N(0, 50^2) on [0, 1] data, as in the closed-form test above
    low = 0.5 * math.log2(2 * math.pi * 50.0**2) + 8
    assert values.shape == (2, 1) and bool(((values >= low - 1e-5) & (values <= low + 1.5e-4)).all())
    assert f"bits/dim: {values.double().mean():.4f}" in capsys.readouterr().out
    # samples with the converted model's stored sampler (shortened to 3 steps), one PNG per sample
    checkpoint, config = score_sde_paths("ve_ncsnpp_celebahq256_continuous")
    model_dir = from_score_sde(checkpoint, config, tmp_path / "m")
    argv = [
        "samples",
        "--model",
        str(model_dir),
        "--out",
        str(tmp_path / "png"),
        "--num",
        "3",
        "--steps",
        "3",
    ]
    assert recipe.main([*argv, "--batch-size", "2", "--device", "cpu"]) == 0
    files = sorted((tmp_path / "png").iterdir())
    assert [f.name for f in files] == ["000000.png", "000001.png", "000002.png"]
    from PIL import Image

    assert all(Image.open(f).size == (16, 16) and Image.open(f).mode == "RGB" for f in files)


# ---- the command line ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [*SCORE_SDE, DIFFUSERS])
def test_cli_converts_every_fixture(tmp_path, capsys, name):
    from diffscore.cli import main

    out = tmp_path / "model"
    if name == DIFFUSERS:
        argv = ["convert", "diffusers", str(ROOT / DIFFUSERS), "--out", str(out)]
    else:
        checkpoint, config = score_sde_paths(name)
        argv = ["convert", "score_sde_pytorch", str(checkpoint), "--config", str(config), "--out", str(out)]
    assert main(argv) == 0
    assert check_model_dir(out, name) < TOLERANCE  # through the CLI, then from_pretrained
    capsys.readouterr()
    assert main(argv) == 2  # the model is there: refused without --overwrite, in one line
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "already holds" in err[0]
    assert main([*argv, "--overwrite"]) == 0


def test_cli_refuses_a_pickled_object_in_one_line(tmp_path, capsys):
    import pickle

    from diffscore.cli import main

    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps(Path("x"), protocol=2))  # a pickled object that is not a tensor
    _, config = score_sde_paths("vp_ddpmpp_cifar10_continuous")
    rc = main(
        ["convert", "score_sde_pytorch", str(bad), "--config", str(config), "--out", str(tmp_path / "m")]
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and "evil.pth" in err[0]
    assert not (tmp_path / "m").exists()
