"""FAE (arXiv 2512.07829): paper-size shapes and parameter counts on the meta device, the staged stage-1 loss,
and the backbone wiring (generator, recipe, sampler) at tiny size."""

import dataclasses

import pytest
import torch

from baselines import fae
from baselines.api import build_backbone, randn_per_sample, sample_generators
from baselines.backbones import fae as fae_backbone
from bench.data import embedded_images, to_model_range


def _n(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _meta_tokenizer(**overrides) -> fae.FAETokenizer:
    with torch.device("meta"):
        return fae.FAETokenizer(dataclasses.replace(fae.FAE_configs["paper"], disc_weight=0.0, **overrides))


# --- paper size (meta device: shapes and counts only, no memory) ------------------------------------------


def test_paper_parameter_counts_within_2_percent():
    counts = fae.param_counts()
    for part, paper in fae.PAPER_PARAMS.items():
        assert abs(counts[part] / paper - 1) < 0.02, (part, counts[part], paper)
    # the feature decoder's reading (pos table + RoPE/RMSNorm/SwiGLU blocks + final norm) is exact
    assert round(counts["feature_decoder"] / 1e4) == round(170.43e6 / 1e4)


def test_paper_part_shapes():
    tok = _meta_tokenizer()
    enc = tok.encoder
    assert enc.attn.qkv.weight.shape == (3 * 6144, 1536)  # 24 heads x 256 from the 1536-d features
    assert enc.attn.proj.weight.shape == (1536, 6144)
    assert enc.proj.weight.shape == (64, 1536)  # mean and log-variance of 32 channels
    fd = tok.feature_decoder
    assert len(fd.blocks) == 6 and fd.embed.weight.shape == (1536, 32)
    assert fd.blocks[0].mlp.w12.weight.shape == (2 * 4096, 1536)  # SwiGLU hidden int(2/3 * 4 * 1536)
    assert isinstance(fd.blocks[0].norm1, torch.nn.RMSNorm) and fd.rope_cos.shape == (256, 64)
    pd = tok.pixel_decoder
    assert len(pd.blocks) == 24 and pd.embed.weight.shape == (1024, 1536)
    assert pd.blocks[0].attn.num_heads == 16 and pd.head.weight.shape == (16 * 16 * 3, 1024)

    feats = torch.empty(2, 256, 1536, device="meta")
    z = tok.encode(None, feats)
    assert z.shape == (2, 32, 16, 16) and tok.latent_shape(256) == (32, 16, 16)
    assert tok.decode_features(z).shape == (2, 256, 1536)
    assert tok.decode(z).shape == (2, 3, 256, 256)


@pytest.mark.parametrize("latent_dim", [48, 64])
def test_latent_dim_ablation_changes_only_the_latent_layers(latent_dim):
    base, other = (
        fae.param_counts(),
        fae.param_counts(dataclasses.replace(fae.FAE_configs["paper"], latent_dim=latent_dim)),
    )
    extra = latent_dim - 32
    assert other["encoder"] - base["encoder"] == extra * 2 * (1536 + 1)  # projection to 2C
    assert other["feature_decoder"] - base["feature_decoder"] == extra * 1536  # decoder input projection
    assert other["pixel_decoder"] == base["pixel_decoder"]
    tok = _meta_tokenizer(latent_dim=latent_dim)
    assert tok.encode(None, torch.empty(1, 256, 1536, device="meta")).shape == (1, latent_dim, 16, 16)


def test_paper_backbone_on_meta():
    bb = build_backbone("fae", "paper", device="meta")
    assert abs(_n(bb.generator.net) / 675.26e6 - 1) < 0.001  # LightningDiT-XL/1 on 16x16x32
    assert bb.generator.latent_shape == (32, 16, 16) and bb.generator.net_time == "data_at_1"
    assert bb.generator.loss_weight == "none" and bb.encoder is None
    r = bb.recipe
    assert (r.batch_size, r.lr, r.epochs, r.lr_schedule) == (512, 1e-4, 800, "constant")
    assert r.sampler.mode == "ode" and r.sampler.steps == 250
    assert r.sampler.time_shift == pytest.approx(2.5)  # paper's 0.4 in LightningDiT's t=0-noise form
    assert r.sampler.guidance_schedule == ((0.9, 1.0, 0.9), (0.0, 0.7, 2.5))
    assert fae_backbone.SDE_SAMPLER.mode == "sde" and fae_backbone.SDE_SAMPLER.guidance == 1.0
    # ODE 250 steps: every step in [0, 0.7] or [0.9, 1] runs a CFG pair
    nfe = bb.generator.nfe(r.sampler)
    assert 250 < nfe < 500 and bb.generator.nfe(fae_backbone.SDE_SAMPLER) == 250
    assert "generator" in bb.notes and "open_choices" in bb.notes


def test_paper_image_size_scales_the_pixel_patch():
    bb = build_backbone("fae", "paper", device="meta", image_size=512)
    assert bb.tokenizer.config.patch_size == 32 and bb.tokenizer.latent_shape(512) == (32, 16, 16)
    with pytest.raises(ValueError, match="multiple"):
        build_backbone("fae", "paper", device="meta", image_size=250)


def test_rope_matches_lightningdit_tables():
    from baselines.lightningdit import VisionRotaryEmbeddingFast

    cos, sin = fae.rope_2d(64, 16)
    ref = VisionRotaryEmbeddingFast(32, 16)
    torch.testing.assert_close(cos, ref.freqs_cos, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, ref.freqs_sin, atol=1e-6, rtol=0)


# --- tiny: the staged stage 1 ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    bb = build_backbone("fae", "tiny", num_classes=8, image_size=32)
    x, y = embedded_images(32, 16)
    images = to_model_range(x)
    return bb, images, bb.features(images), torch.from_numpy(y)


def test_tiny_encode_decode_shapes_and_errors(tiny):
    bb, images, feats, _ = tiny
    tok = bb.tokenizer.eval()
    assert feats.shape == (len(images), 16, 64) and tok.latent_shape(32) == (16, 4, 4)
    with torch.no_grad():
        z = tok.encode(images, feats)
        assert z.shape == (len(images), 16, 4, 4)
        torch.testing.assert_close(tok.encode(images, feats), z)  # posterior mean: deterministic
        assert tok.decode(z[:4]).shape == (4, 3, 32, 32)
    with pytest.raises(ValueError, match="features"):
        tok.encode(images, None)
    with pytest.raises(ValueError, match="expects features"):
        tok.encode(images, feats[:, :8])
    with pytest.raises(ValueError, match="px"):
        tok.latent_shape(48)
    with pytest.raises(ValueError, match="unknown fae build option.*known: num_classes"):
        build_backbone("fae", "tiny", not_a_field=1)


def test_loss_needs_total_steps():
    tok = fae.FAETokenizer(fae.FAE_configs["tiny"])
    with pytest.raises(ValueError, match="total_steps"):
        tok.loss(torch.zeros(2, 3, 32, 32), torch.zeros(2, 16, 64), step=0)


def _grads(module):
    return [p.grad for p in module.parameters() if p.requires_grad]


def test_stages_train_the_right_parts_on_the_right_inputs(tiny):
    bb, images, feats, _ = tiny
    tok = fae.FAETokenizer(fae.FAE_configs["tiny"]).train()
    tok.total_steps = 20  # stage 2 of the pixel decoder from step 12, GAN from step 15
    seen = {}
    tok.pixel_decoder.register_forward_pre_hook(lambda m, a: seen.__setitem__("pix_in", a[0].detach()))
    tok.feature_decoder.register_forward_hook(lambda m, a, out: seen.__setitem__("x_hat", out.detach()))
    x, f = images[:8], feats[:8]

    out = tok.loss(x, f, step=0)
    assert out["stage"] == 1 and "gan_g" not in out
    out["loss"].backward()
    assert all(
        g is not None for g in _grads(tok.encoder) + _grads(tok.feature_decoder) + _grads(tok.pixel_decoder)
    )
    assert all(g is None for g in _grads(tok.discriminator))
    noise = seen["pix_in"] - f  # stage 1: noisy frozen features, sigma 0.07 in the tiny preset
    assert abs(noise.std().item() - tok.config.pixel_noise_sigma) < 0.01

    tok.zero_grad(set_to_none=True)
    out = tok.loss(x, f, step=15)
    assert out["stage"] == 2 and {"gan_g", "gan_d", "perceptual", "feat_l2", "kl", "pix_rec"} <= set(out)
    out["loss"].backward()
    assert all(g is None for g in _grads(tok.encoder) + _grads(tok.feature_decoder))  # frozen in stage 2
    assert all(g is not None for g in _grads(tok.pixel_decoder) + _grads(tok.discriminator))
    torch.testing.assert_close(seen["pix_in"], seen["x_hat"])  # stage 2: the feature decoder's outputs


def test_tiny_stage1_learns(tiny):
    bb, images, feats, _ = tiny
    torch.manual_seed(0)
    tok = fae.FAETokenizer(fae.FAE_configs["tiny"]).train()
    tok.total_steps = 30
    images, feats = images[:64], feats[:64]
    params = [p for p in tok.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    hist = []
    for step in range(tok.total_steps):
        out = tok.loss(images, feats, step=step)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        hist.append({k: float(v.detach()) for k, v in out.items()})
    assert hist[-1]["feat_l2"] < 0.1 * hist[0]["feat_l2"]
    assert hist[-1]["pix_rec"] < 0.6 * hist[0]["pix_rec"]
    tok.eval()
    with torch.no_grad():
        rec = tok.decode(tok.encode(images, feats))
    mean_image = (images - images.mean(0, keepdim=True)).abs().mean()
    assert (rec - images).abs().mean() < mean_image  # better than predicting the mean image


def test_tiny_backbone_generator_and_sampling(tiny):
    bb, images, feats, labels = tiny
    gen = bb.generator
    assert bb.family == "fae" and bb.tokenizer.trainable and bb.tokenizer.needs_features
    assert gen.net_time == "data_at_1" and gen.loss_weight == "none" and gen.latent_shape == (16, 4, 4)
    tok = bb.tokenizer.eval()
    with torch.no_grad():
        raw = tok.encode(images, feats)
    tok.set_latent_stats(raw)
    out = gen.loss(tok.normalize(raw), labels, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"]) and out["loss"] > 0
    gens = sample_generators(0, range(4))
    noise = randn_per_sample(gens, tok.latent_shape(32))
    imgs = bb.sample_images(labels[:4], noise, gens, steps=4)
    assert imgs.shape == (4, 3, 32, 32) and torch.isfinite(imgs).all()
    again = bb.sample_images(labels[:4], noise, gens, steps=4)
    torch.testing.assert_close(imgs, again)


def test_tiny_image_size_follows_the_stand_in_grid():
    bb = build_backbone("fae", "tiny", image_size=64)
    assert bb.tokenizer.latent_shape(64) == (16, 8, 8) and bb.encoder.grid == 8
    assert bb.generator.latent_shape == (16, 8, 8)


def test_sit_generator_option():
    from baselines.sit import SiT

    bb = build_backbone("fae", "tiny", generator="sit")
    assert isinstance(bb.generator.net, SiT) and bb.generator.net_time == "noise_at_1"
    z = torch.randn(4, *bb.generator.latent_shape)
    out = bb.generator.loss(z, torch.arange(4), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="generator"):
        build_backbone("fae", "tiny", generator="dit")
