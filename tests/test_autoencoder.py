import json

import pytest
import torch
from safetensors.torch import load_file

from baselines.autoencoder import (
    AE_CONFIGS,
    AutoencoderKL,
    DiagonalGaussian,
    KLTokenizer,
    SDVAETokenizer,
    build_autoencoder,
    diffusers_to_ldm,
    load_diffusers_vae,
)


def _diffusers_vae(tmp_path, sample_size=32):
    diffusers = pytest.importorskip("diffusers")  # only the loader tests need it; the rest run without
    torch.manual_seed(0)
    m = diffusers.AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=32,
        layers_per_block=1,
        sample_size=sample_size,
    )
    with torch.no_grad():  # perturb so zero-initialised parts matter too
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.save_pretrained(tmp_path)
    return m.eval()


def test_golden_vavae_encode_decode(golden):
    case = golden("vavae_tiny")
    kw = json.loads((case / "config.json").read_text())["kwargs"]
    model = AutoencoderKL(kw["ddconfig"], kw["embed_dim"]).eval()
    sd = load_file(str(case / "weights.safetensors"))
    sd.pop("linear_proj.weight")  # VA-VAE's projection lives in baselines.vavae
    model.load_state_dict(sd, strict=True)
    io = load_file(str(case / "io.safetensors"))
    with torch.no_grad():
        post = model.encode(io["x"])
        torch.testing.assert_close(post.moments, io["moments"], atol=5e-5, rtol=1e-4)
        torch.testing.assert_close(post.logvar, io["logvar"], atol=5e-5, rtol=1e-4)
        torch.testing.assert_close(model.decode(io["z"]), io["x_rec"], atol=5e-5, rtol=1e-4)


def test_diffusers_folder_matches_diffusers(tmp_path):
    ref = _diffusers_vae(tmp_path)
    ours = load_diffusers_vae(tmp_path).eval()
    x, z = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        want = ref.encode(x).latent_dist
        got = ours.encode(x)
        torch.testing.assert_close(got.mean, want.mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.logvar, want.logvar, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.decode(z), ref.decode(z).sample, atol=1e-5, rtol=1e-4)
    tok = SDVAETokenizer(tmp_path)
    assert tok.latent_scale == pytest.approx(0.18215)
    assert tok.latent_shape(32) == (4, 16, 16)
    assert not any(p.requires_grad for p in tok.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(tok.encode(x), ours.encode(x).mean)
        s1 = tok.encode(x, generator=torch.Generator().manual_seed(1))
        s2 = tok.encode(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(s1, s2)
    assert not torch.allclose(s1, tok.encode(x))


def test_diffusers_bin_file(tmp_path):
    ref = _diffusers_vae(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(ref.state_dict(), tmp_path / "diffusion_pytorch_model.bin")
    ours = load_diffusers_vae(tmp_path)
    torch.testing.assert_close(ours.quant_conv.weight, ref.quant_conv.weight)


def test_missing_folder_or_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="sd-vae-ft-ema"):
        load_diffusers_vae(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model"):
        load_diffusers_vae(tmp_path)


def test_sd_vae_layout_matches_diffusers_on_meta():
    """The full SD-VAE: diffusers' key layout converts exactly to ours (names and shapes), no memory used."""
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        ref = diffusers.AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=256,
        )
        ours = build_autoencoder("sd-vae-f8")
    conv = diffusers_to_ldm(ref.state_dict(), 4)
    want = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in conv.items()} == want
    assert sum(v.numel() for v in ours.state_dict().values()) == 83_653_863  # SD-VAE's published size


def test_preset_shapes_on_meta():
    with torch.device("meta"):
        vavae = build_autoencoder("vavae-f16d32")
        post = vavae.encode(torch.empty(1, 3, 256, 256))
        assert tuple(post.mean.shape) == (1, 32, 16, 16)
        assert tuple(vavae.decode(post.mean).shape) == (1, 3, 256, 256)
    assert "encoder.down.4.attn.1.q.weight" in vavae.state_dict()  # attention at 16x16 = level 4
    assert "decoder.up.4.attn.2.q.weight" in vavae.state_dict()
    assert "encoder.down.3.attn.0.q.weight" not in vavae.state_dict()
    with pytest.raises(ValueError, match="multiple of 32"):
        AutoencoderKL({**AE_CONFIGS["tiny-f4"][0], "ch": 48}, 4)
    with pytest.raises(ValueError, match="unknown ddconfig"):
        AutoencoderKL({**AE_CONFIGS["tiny-f4"][0], "chh": 48}, 4)


def test_posterior():
    moments = torch.randn(3, 8, 4, 4)
    moments[0, 4] = 100.0  # clamped log-variance
    post = DiagonalGaussian(moments)
    assert float(post.logvar.max()) == 20.0
    m, lv = moments[:, :4], moments[:, 4:].clamp(-30, 20)
    want = torch.distributions.kl_divergence(
        torch.distributions.Normal(m, (0.5 * lv).exp()), torch.distributions.Normal(0.0, 1.0)
    )
    torch.testing.assert_close(post.kl(), want.flatten(1).sum(1), rtol=1e-4, atol=1e-3)
    s = post.sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(s, post.sample(torch.Generator().manual_seed(0)))


@pytest.fixture
def one_thread():
    """Small convnets train faster on one thread, and do not stall when other jobs share the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_kl_tokenizer_trains(one_thread):
    torch.manual_seed(0)
    tok = KLTokenizer("tiny-f4", perceptual_weight=0.5, perceptual="random-features")
    assert tok.trainable and tok.latent_shape(32) == (4, 8, 8)
    x = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8) * 2 - 1, size=32, mode="bilinear")  # smooth
    opt = torch.optim.Adam([p for p in tok.parameters() if p.requires_grad], 1e-3, betas=(0.5, 0.9))
    first = None
    for step in range(30):
        out = tok.loss(x, step=step, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else float(out["rec_l1"])
    assert {"loss", "rec_l1", "kl", "perceptual"} <= set(out)
    assert float(out["rec_l1"]) < 0.6 * first
    assert tok.encode(x).shape == (4, 4, 8, 8)


def test_perceptual_kinds(tmp_path, monkeypatch):
    """LPIPS (the `lpips` package) on VGG16 weights read from a local file: our loader puts every conv where
    lpips expects it. Random VGG weights stand in for torchvision's file, which cannot be downloaded here."""
    lpips = pytest.importorskip("lpips")
    from baselines.losses import VGG16_FILE, PerceptualLoss

    torch.manual_seed(0)
    ref = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    feats = {}
    for slice_ in (ref.net.slice1, ref.net.slice2, ref.net.slice3, ref.net.slice4, ref.net.slice5):
        for name, m in slice_.named_children():
            if isinstance(m, torch.nn.Conv2d):
                feats[f"features.{name}.weight"], feats[f"features.{name}.bias"] = m.weight, m.bias
    torch.save(feats, tmp_path / VGG16_FILE)
    ours = PerceptualLoss("lpips-vgg", tmp_path / VGG16_FILE)
    assert ours.kind == "lpips-vgg"
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours(x, y), ref(x, y), atol=1e-5, rtol=1e-4)
    monkeypatch.setenv("GENBENCH_VGG16", str(tmp_path / "absent.pth"))
    assert PerceptualLoss("auto").kind == "random-features"  # documented stand-in when no VGG file exists
    with pytest.raises(FileNotFoundError, match=VGG16_FILE):
        PerceptualLoss("lpips-vgg")
    fallback = PerceptualLoss("random-features")
    d_same, d_diff = fallback(x, x), fallback(x, y)
    assert d_same.shape == (2, 1, 1, 1) and float(d_same.abs().max()) == 0.0 and bool((d_diff > 0).all())
    assert len(fallback.state_dict()) == 0  # fixed random weights are not saved in checkpoints
