"""Released checkpoints: tiny files written in each OFFICIAL format (key layout and nesting as released) load
strictly through the same code as the real ones; wrong architectures and missing files fail clearly."""

import argparse
import collections

import numpy as np
import pytest
import torch

from bench.errors import CorruptInputError, MissingInputError
from bench.release import RELEASES, check_release_files, load_checkpoint_file, load_release, release_paths
from bench.sample import generate


def _rand_state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.02 if v.is_floating_point() else v.clone()
            for k, v in module.state_dict().items()}  # fmt: skip


def _tiny_sit(**over):
    from baselines.sit import SiT, SiT_configs

    cfg = {**SiT_configs["tiny"], "projector_dim": 256, **over}
    return SiT(input_size=8, in_channels=4, num_classes=4, z_dims=(64,), **cfg)


def _sd_vae_folder(path):
    diffusers = pytest.importorskip("diffusers")  # the official diffusers folder format
    torch.manual_seed(0)
    m = diffusers.AutoencoderKL(block_out_channels=(32, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
                                up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=32,
                                layers_per_block=1, sample_size=32)  # fmt: skip
    m.save_pretrained(path)


@pytest.fixture
def weights(tmp_path):
    return tmp_path / "weights"


def _field(settings, name):
    """A sampler setting from a dict or typed settings."""
    return settings.get(name) if isinstance(settings, dict) else getattr(settings, name, None)


def _assert_loaded(module, sd):
    got = module.state_dict()
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


@pytest.mark.parametrize("layout", ["train.py", "flat", "legacy"])
def test_repa_checkpoint_formats_load_strictly_and_sample(weights, layout):
    _sd_vae_folder(weights / "sd-vae-ft-ema")
    (weights / "repa").mkdir()
    net = _tiny_sit()
    ema, model = _rand_state(net, 1), _rand_state(net, 2)
    if layout == "train.py":  # sihyun-yu/REPA train.py:330: model, ema, opt, args (a Namespace), steps
        ckpt = {"model": model, "ema": ema, "opt": {"state": {}, "param_groups": []},
                "args": argparse.Namespace(model="SiT-XL/2", encoder_depth=8), "steps": 4_000_000}  # fmt: skip
    elif layout == "flat":  # the downloaded last.pt: the EMA state_dict itself (generate.py:79)
        ckpt = ema
    else:  # old layout: decoder_blocks.i = blocks.(i + encoder_depth) (REPA utils.load_legacy_checkpoints)
        ckpt = {(f"decoder_blocks.{int(k.split('.')[1]) - 2}." + k.split(".", 2)[2]
                 if k.startswith("blocks.") and int(k.split(".")[1]) >= 2 else k): v for k, v in ema.items()}  # fmt: skip
        assert any(k.startswith("decoder_blocks.") for k in ckpt)
    torch.save(ckpt, weights / "repa" / "last.pt")
    bb = load_release("repa", weights, preset="tiny", num_classes=4, image_size=32)
    _assert_loaded(bb.generator.net, ema)
    assert bb.tokenizer.latent_scale == pytest.approx(0.18215) and bb.encoder is None
    assert _field(bb.recipe.sampler, "steps") == 250 and bb.notes["release"] == "sit-xl2-4m"
    out = generate(bb, 2, 4, 0, 32, mode="ode", steps=2)
    assert out["images"].shape == (2, 32, 32, 3) and out["n_nonfinite"] == 0


def test_wrong_architecture_names_the_first_mismatched_keys(weights):
    _sd_vae_folder(weights / "sd-vae-ft-ema")
    (weights / "repa").mkdir()
    torch.save(
        {"ema": _rand_state(_tiny_sit(depth=5), 0)}, weights / "repa" / "last.pt"
    )  # one block too many
    with pytest.raises(CorruptInputError, match=r"last\.pt: does not fit SiT-tiny \(REPA\) \(strict load\): "
                       r"\d+ unexpected keys \(blocks\.4\."):  # fmt: skip
        load_release("repa", weights, preset="tiny", num_classes=4, image_size=32)
    torch.save(
        {"ema": _rand_state(_tiny_sit(hidden_size=64, decoder_hidden_size=64), 0)},
        weights / "repa" / "last.pt",
    )
    with pytest.raises(CorruptInputError, match=r"shape mismatches \(\w"):
        load_release("repa", weights, preset="tiny", num_classes=4, image_size=32)
    (weights / "repa" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptInputError, match="not a loadable weights-only checkpoint"):
        load_release("repa", weights, preset="tiny", num_classes=4, image_size=32)


class _Foreign:  # a pickled object of an arbitrary class: refused by weights_only loading
    pass


def test_plain_pickle_is_refused(tmp_path):
    torch.save({"ema": {"w": torch.zeros(1)}, "x": _Foreign()}, tmp_path / "evil.pt")
    with pytest.raises(CorruptInputError, match="weights-only"):
        load_checkpoint_file(tmp_path / "evil.pt")


@pytest.mark.parametrize("ep", ["800ep", "64ep"])
def test_lightningdit_and_vavae_release_files(weights, ep):
    from baselines.lightningdit import LightningDiT_models
    from baselines.vavae import VAVAE, VAVAE_CONFIGS

    for d in ("lightningdit", "vavae"):
        (weights / d).mkdir(parents=True, exist_ok=True)
    dd, e = VAVAE_CONFIGS["tiny"]
    vae_sd = _rand_state(VAVAE(dd, e, vf_feature_dim=32), 3)
    # LDM/Lightning training checkpoint: state_dict with the loss (LPIPS, discriminator) and the frozen DINOv2
    lightning = {"epoch": 49, "global_step": 1000, "state_dict": collections.OrderedDict(
        {**vae_sd, "loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.zeros(2, 3, 4, 4),
         "foundation_model.model.cls_token": torch.zeros(1, 1, 32)})}  # fmt: skip
    torch.save(lightning, weights / "vavae" / "vavae-imagenet256-f16d32-dinov2.pt")
    stats = {"mean": torch.randn(1, 8, 1, 1), "std": torch.rand(1, 8, 1, 1) + 0.5}
    torch.save(stats, weights / "vavae" / "latents_stats.pt")
    from baselines.backbones.vavae_lightningdit import PRESETS

    net = LightningDiT_models[PRESETS["tiny"]["dit"]](input_size=8, in_channels=8, num_classes=4)  # the tiny preset's
    ema = _rand_state(net, 4)
    # LightningDiT train.py:242: model, ema, opt, config
    torch.save({"model": _rand_state(net, 5), "ema": ema, "opt": {"state": {}, "param_groups": []},
                "config": {"model": {"model_type": "LightningDiT-XL/1"}, "train": {"max_steps": 80000}}},
               weights / "lightningdit" / f"lightningdit-xl-imagenet256-{ep}.pt")  # fmt: skip
    bb = load_release("vavae_lightningdit", weights, release=ep, preset="tiny", num_classes=4, image_size=32)
    _assert_loaded(bb.generator.net, ema)
    _assert_loaded(bb.tokenizer.ae, vae_sd)
    torch.testing.assert_close(bb.tokenizer.latent_mean, stats["mean"].flatten())
    torch.testing.assert_close(bb.tokenizer.latent_std, stats["std"].flatten())
    want = {"800ep": 6.7, "64ep": 10.0}[ep]
    s = bb.recipe.sampler
    assert _field(s, "guidance") == want and _field(s, "guidance_channels") == 3  # the paper protocol's quirk
    if hasattr(bb, "protocols"):
        assert _field(bb.protocols["common"], "guidance_channels") is None
        assert _field(bb.protocols["paper"], "guidance_channels") == 3
    out = generate(bb, 2, 4, 0, 32, steps=2)
    assert out["images"].shape == (2, 32, 32, 3)


def test_tarflow_afhq_flat_state_dict(weights):
    from baselines.api import build_backbone

    (weights / "tarflow").mkdir(parents=True)
    model = build_backbone("tarflow", "tiny", num_classes=4).generator.model  # the official Model's layout
    sd = _rand_state(model, 6)
    torch.save(sd, weights / "tarflow" / "afhq_model_8_768_8_8_0.07.pth")  # ml-tarflow train.py:144
    bb = load_release("tarflow", weights, preset="tiny", num_classes=4)
    _assert_loaded(bb.generator.model, sd)
    assert not bb.generator.training
    np.testing.assert_array_equal(bb.generator.model.var.numpy(), sd["var"].numpy())


def test_missing_files_are_listed_in_one_error(weights):
    weights.mkdir()
    with pytest.raises(MissingInputError) as e:
        check_release_files(["repa", "vavae_lightningdit", "tarflow"], weights)
    msg = str(e.value)
    for f in ("repa/last.pt", "sd-vae-ft-ema", "lightningdit-xl-imagenet256-800ep.pt", "vavae-imagenet256-f16d32-dinov2.pt",
              "latents_stats.pt", "afhq_model_8_768_8_8_0.07.pth"):  # fmt: skip
        assert f in msg
    assert "huggingface.co/hustvl/vavae-imagenet256-f16d32-dinov2" in msg and msg.count("\n- ") == 6
    paths, missing = release_paths(["repa", "tarflow"], weights)
    assert (
        len(missing) == 3
        and paths["tarflow"]["generator"] == weights / "tarflow" / "afhq_model_8_768_8_8_0.07.pth"
    )
    with pytest.raises(MissingInputError, match="GENBENCH_WEIGHTS"):
        check_release_files("repa", None)
    assert set(RELEASES["vavae_lightningdit"]) == {"64ep", "800ep"}


def test_released_tokenizers_alone(weights):
    from baselines.vavae import VAVAE, VAVAE_CONFIGS
    from bench.release import load_tokenizer

    (weights / "vavae").mkdir(parents=True)
    dd, e = VAVAE_CONFIGS["tiny"]
    sd = _rand_state(VAVAE(dd, e, vf_feature_dim=16), 7)
    torch.save({"state_dict": sd}, weights / "vavae" / "vavae-imagenet256-f16d32-dinov2.pt")
    with pytest.raises(MissingInputError, match="latents_stats.pt"):
        load_tokenizer("vavae-f16d32", weights, config="tiny")
    torch.save(
        {"mean": torch.zeros(1, 8, 1, 1), "std": torch.ones(1, 8, 1, 1)},
        weights / "vavae" / "latents_stats.pt",
    )
    tok = load_tokenizer("vavae-f16d32", weights, config="tiny")
    _assert_loaded(tok.ae, sd)
    assert not tok.trainable and not any(p.requires_grad for p in tok.parameters())
    _sd_vae_folder(weights / "sd-vae-ft-mse")
    assert load_tokenizer("sd-vae-ft-mse", weights).latent_shape(32) == (4, 8, 8)
