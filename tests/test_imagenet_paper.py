"""The full imagenet256 run builds the paper-size families from the local SD-VAE (diffusers folders) and DINOv2
(timm) files named by GENBENCH_SD_VAE / GENBENCH_WEIGHTS; missing files are one up-front error. The test writes
tiny files in the official formats (AutoencoderKL.save_pretrained; a timm folder whose config.json shrinks the
ViT with model_args, as timm's local-dir loader reads it); the paper-size generators are built on the meta device
(shapes only: a 0.7-1.4B-parameter network would take minutes on CI)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from bench.errors import UserError
from bench.paper_inputs import ENCODER, TIMM_ARCH, paper_build_options, paper_input_problems

TINY_VIT = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def _sd_vae(path, seed):
    import diffusers

    torch.manual_seed(seed)
    diffusers.AutoencoderKL(block_out_channels=(32, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
                            up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=32,
                            layers_per_block=1, sample_size=32).save_pretrained(path)  # fmt: skip


def _timm_folder(path, arch, seed):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    m = timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True, **TINY_VIT)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"architecture": f"{arch}.lvd142m", "model_args": TINY_VIT}))
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, path / "model.safetensors")
    return m.state_dict()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper")
    _sd_vae(tmp / "sdvae" / "sd-vae-ft-mse", 0)
    _sd_vae(tmp / "sdvae" / "sd-vae-ft-ema", 1)
    states = {enc: _timm_folder(tmp / "weights" / enc, TIMM_ARCH[enc], i) for i, enc in enumerate(TIMM_ARCH)}
    return {"GENBENCH_SD_VAE": str(tmp / "sdvae"), "GENBENCH_WEIGHTS": str(tmp / "weights")}, tmp, states


def test_build_options_point_each_family_at_its_files(inputs):
    env, tmp, _ = inputs
    mse, ema = str(tmp / "sdvae" / "sd-vae-ft-mse"), str(tmp / "sdvae" / "sd-vae-ft-ema")
    w = tmp / "weights"
    assert paper_build_options("repa", env) == {"sd_vae": mse, "sd_vae_decoder": ema,
                                                "encoder_weights": str(w / "dinov2-vit-b14")}  # fmt: skip
    assert paper_build_options("starflow", env) == {"vae_folder": ema}
    lpips = {"perceptual": "lpips-vgg"}  # stage 1's real LPIPS, never the stand-in
    assert paper_build_options("vavae_lightningdit", env) == {
        "encoder_weights": str(w / "dinov2-vit-l14"),
        **lpips,
    }
    assert paper_build_options("fae", env) == {"encoder_weights": str(w / "dinov2-vit-g14"), **lpips}
    one = {**env, "GENBENCH_SD_VAE": ema}  # a single diffusers folder: used for encoding and decoding
    assert paper_build_options("repa", one)["sd_vae"] == ema and "sd_vae_decoder" not in paper_build_options(
        "repa", one
    )
    vgg = tmp / "vgg16-397923af.pth"
    vgg.write_bytes(b"")  # only its presence is checked here
    assert (
        paper_input_problems(
            ["repa", "vavae_lightningdit", "fae", "starflow"], {**env, "GENBENCH_VGG16": str(vgg)}
        )
        == []
    )
    assert paper_build_options("vavae_lightningdit", {**env, "GENBENCH_VGG16": str(vgg)})["vgg_path"] == str(
        vgg
    )


def test_timm_folder_loads_its_weights_into_the_encoder(inputs):
    from baselines.encoders import build_encoder

    env, tmp, states = inputs
    enc = build_encoder(
        "dinov2-vit-l14", weights=paper_build_options("vavae_lightningdit", env)["encoder_weights"]
    )
    got = enc.model.state_dict()
    assert enc.dim == 32 and got.keys() == states["dinov2-vit-l14"].keys()
    assert all(torch.equal(got[k], v) for k, v in states["dinov2-vit-l14"].items())
    bad = tmp / "wrong-arch"
    _timm_folder(bad, "vit_small_patch14_dinov2", 0)
    with pytest.raises(ValueError, match="vit_small_patch14_dinov2"):
        build_encoder("dinov2-vit-l14", weights=bad)


def test_missing_weights_are_listed_in_one_error_before_any_work(tmp_path, monkeypatch):
    from bench.runner import BenchArgs, plan

    for k in (
        "GENBENCH_SD_VAE",
        "GENBENCH_WEIGHTS",
        "GENBENCH_IMAGENET",
        "GENBENCH_ADM_REF",
        "GENBENCH_INCEPTION",
    ):
        monkeypatch.delenv(k, raising=False)
    (tmp_path / "w").mkdir()
    monkeypatch.setenv("GENBENCH_WEIGHTS", str(tmp_path / "w"))
    with pytest.raises(UserError) as e:
        plan(BenchArgs(suite="imagenet256", out=str(tmp_path / "r")))
    msg = str(e.value)
    for enc in ENCODER.values():
        assert (
            f"{tmp_path / 'w'}/{enc}.safetensors not found" in msg
            and f"huggingface.co/timm/{TIMM_ARCH[enc]}" in msg
        )
    assert "GENBENCH_SD_VAE=PATH" in msg and "GENBENCH_IMAGENET" in msg and "GENBENCH_ADM_REF" in msg
    assert "LPIPS VGG16 weights (vavae_lightningdit, fae stage 1)" in msg
    assert msg.count("GENBENCH_SD_VAE") == 1  # one line per input, not the generic one too


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_full_run_builds_paper_size_families_from_the_files(inputs, monkeypatch):
    from baselines.autoencoder import SDVAETokenizer
    from bench.suites import IMAGENET256
    from bench.train import make_backbone

    env, tmp, _ = inputs
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # the VGG16 file LPIPS needs is 528 MB: here the stand-in perceptual loss (suite options win over the files')
    suite = dataclasses.replace(IMAGENET256, options={n: {"perceptual": "random-features"} for n in ("vavae_lightningdit", "fae")})  # fmt: skip
    params = {}
    with torch.device("meta"):  # shapes only; the tiny files' keys and shapes are still checked strictly
        for name in IMAGENET256.backbones:
            bb = make_backbone(suite, name, 0)
            params[name] = sum(p.numel() for p in bb.generator.parameters())
            if name == "repa":  # trains on ft-MSE latents, decodes its samples with ft-EMA (as released)
                assert bb.tokenizer.decoder_folder == str(tmp / "sdvae" / "sd-vae-ft-ema")
            if name in ("repa", "starflow"):
                assert isinstance(
                    bb.tokenizer, SDVAETokenizer
                ) and bb.tokenizer.latent_scale == pytest.approx(0.18215)
            if name in ENCODER:
                assert bb.encoder.dim == 32 and bb.encoder.model.embed_dim == 32
    assert params["repa"] > 600e6 and params["vavae_lightningdit"] > 600e6 and params["starflow"] > 1.2e9
