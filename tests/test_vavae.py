import pytest
import torch

from baselines import ops
from baselines.api import build_backbone
from baselines.backbones.vavae_lightningdit import paper_recipe
from baselines.lightningdit import official_forward_with_cfg
from baselines.losses import adaptive_weight
from baselines.parity import run_case
from baselines.vavae import OFFICIAL_LOSS, VAVAETokenizer, tokens_to_map, vf_loss


def test_parity_golden_vavae(golden):
    lines: list[str] = []
    with ops.backend("torch"):
        ok = run_case(golden("vavae_tiny"), out=lines.append)
    assert ok, "\n".join(lines)
    assert [line.split()[1] for line in lines] == ["encode", "decode", "vf_loss"]


def test_vf_loss_margins():
    z = torch.randn(2, 16, 4, 4)
    out = vf_loss(z, 3.0 * z)  # same directions: both margins satisfied
    assert float(out["vf_loss"]) == 0.0
    out = vf_loss(z, -z)  # opposite: cos = -1 -> 1 - 0.5 + 1 = 1.5 per token; distmat unchanged (0)
    assert float(out["vf_cos"]) == pytest.approx(1.5, abs=1e-5)
    assert float(out["vf_distmat"]) == pytest.approx(0.0, abs=1e-6)
    a, b = torch.randn(2, 64, 4, 4), torch.randn(2, 64, 4, 4)
    no_margin = vf_loss(a, b, 0.0, 0.0)
    assert float(no_margin["vf_distmat"]) > float(vf_loss(a, b)["vf_distmat"]) >= 0


def test_tokens_to_map_row_major():
    f = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)  # [B, h*w, D]
    m = tokens_to_map(f, 2, 3)
    assert m.shape == (2, 3, 2, 3)
    torch.testing.assert_close(m[1, :, 1, 2], f[1, 5])
    with pytest.raises(ValueError, match="latent grid"):
        tokens_to_map(f, 3, 3)


def _tokenizer(**kw):
    torch.manual_seed(0)
    kw = {"disc_start": 0, **kw}
    return VAVAETokenizer("tiny", 32, perceptual="random-features", disc_ndf=16, **kw)


def test_loss_parts_and_gradient_routing():
    """One scalar: the discriminator gets only the hinge-loss gradient, the autoencoder only the generator loss."""
    tok = _tokenizer()
    x, f = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randn(4, 64, 32)
    out = tok.loss(x, f, step=10, generator=torch.Generator().manual_seed(0))
    assert {
        "loss",
        "rec_l1",
        "kl",
        "perceptual",
        "vf_loss",
        "vf_distmat",
        "vf_cos",
        "vf_weight",
        "g_loss",
        "d_loss",
    } <= set(out)
    out["loss"].backward()
    disc = tok.loss_fn.discriminator
    got = [p.grad.clone() for p in disc.parameters()]
    # the discriminator gradient must equal that of d_loss alone (BatchNorm running stats do not matter: train mode)
    disc.zero_grad()
    rec = tok.ae.decode(tok.ae.encode(x).sample(torch.Generator().manual_seed(0))).detach()
    from baselines.losses import hinge_d_loss

    hinge_d_loss(disc(x), disc(rec)).backward()
    for g, p in zip(got, disc.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-4)
    assert tok.ae.linear_proj.weight.grad is not None and tok.ae.linear_proj.weight.grad.abs().sum() > 0
    assert tok.loss_fn.logvar.grad is None  # frozen, as in the official optimiser
    with pytest.raises(ValueError, match="features"):
        tok.loss(x, None)
    with pytest.raises(ValueError, match="unknown VA-VAE loss"):
        VAVAETokenizer("tiny", 32, vf_wieght=1.0)


def test_adaptive_vf_weight_is_grad_norm_ratio():
    tok = _tokenizer(disc_weight=0.0)
    x, f = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 64, 32)
    out = tok.loss(x, f, generator=torch.Generator().manual_seed(1))
    # recompute with the same sample
    post = tok.ae.encode(x)
    z = post.sample(torch.Generator().manual_seed(1))
    rec = tok.ae.decode(z)
    nll = ((x - rec).abs() + tok.loss_fn.perceptual_loss(x, rec)).sum() / 2
    zp, aux = tok.ae.project(z, tokens_to_map(f, 8, 8))
    vf = vf_loss(zp, aux)["vf_loss"]
    w = tok.ae.encoder.conv_out.weight
    g1 = torch.autograd.grad(nll, w, retain_graph=True)[0].norm()
    g2 = torch.autograd.grad(vf, w, retain_graph=True)[0].norm()
    assert float(out["vf_weight"]) == pytest.approx(0.1 * float(g1 / (g2 + 1e-4)), rel=1e-3)
    with torch.no_grad():  # no autograd: the official fallback weight 0
        assert float(adaptive_weight(nll, vf, w, 1e8)) == 0.0


@pytest.fixture
def one_thread():
    """Small convnets train faster on one thread, and do not stall when other jobs share the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_vf_alignment_trains(one_thread):
    tok = _tokenizer(disc_weight=0.0)
    from baselines.encoders import build_encoder

    x = torch.nn.functional.interpolate(torch.rand(8, 3, 8, 8) * 2 - 1, size=32, mode="bilinear")
    f = build_encoder("standin", dim=32, grid=8)(x)  # features that depend on the images, as DINOv2's do
    opt = torch.optim.Adam([p for p in tok.parameters() if p.requires_grad], 2e-3, betas=(0.5, 0.9))
    hist = []
    for step in range(25):
        out = tok.loss(x, f, step, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        hist.append((float(out["vf_loss"]), float(out["rec_l1"])))
    assert hist[-1][0] < 0.8 * hist[0][0] and hist[-1][1] < 0.8 * hist[0][1]


def test_load_official_checkpoint_and_stats(tmp_path):
    src = _tokenizer()
    sd = {k: v.clone() for k, v in src.ae.state_dict().items()}
    sd["loss.discriminator.main.0.weight"] = torch.zeros(1)  # training-only keys are dropped
    sd["foundation_model.model.cls_token"] = torch.zeros(1)
    torch.save({"state_dict": sd}, tmp_path / "vavae.pt")
    torch.save(
        {"mean": torch.arange(8.0).view(1, 8, 1, 1), "std": torch.full((1, 8, 1, 1), 2.0)},
        tmp_path / "stats.pt",
    )
    dst = VAVAETokenizer("tiny", 32, perceptual="random-features")
    dst.load_official(tmp_path / "vavae.pt", tmp_path / "stats.pt")
    for k, v in src.ae.state_dict().items():
        torch.testing.assert_close(dst.ae.state_dict()[k], v)
    z = torch.zeros(1, 8, 2, 2)
    torch.testing.assert_close(dst.normalize(z)[0, :, 0, 0], -torch.arange(8.0) / 2)
    del sd["linear_proj.weight"]  # the inference-only checkpoint lacks the projection
    sd["decoder.conv_in.bias"] = torch.zeros(3)  # but any wrong shape still fails
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="size mismatch"):
        dst.load_official(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="vavae-imagenet256-f16d32-dinov2"):
        dst.load_official(tmp_path / "missing.pt")


def test_recipe_matches_release():
    r = paper_recipe("800ep")
    assert (r.lr, r.betas, r.batch_size, r.ema_decay, r.mixed_precision, r.epochs) == (
        2e-4,
        (0.9, 0.95),
        1024,
        0.9999,
        "bf16",
        800,
    )
    assert r.sampler.guidance == 6.7 and r.sampler.guidance_interval == pytest.approx((0.0, 0.875))
    assert (
        r.sampler.time_shift == pytest.approx(1 / 0.3) and r.sampler.guidance_channels == 3
    )  # paper: as released
    r64 = paper_recipe("64ep", official_cfg_quirk=True)
    assert r64.sampler.guidance == 10.0 and r64.sampler.guidance_interval == pytest.approx((0.0, 0.9))
    assert r64.sampler.guidance_channels == 3 and r64.epochs == 64
    assert OFFICIAL_LOSS["disc_start"] == 5001 and OFFICIAL_LOSS["vf_weight"] == 0.1


def test_time_shift_matches_official_grid():
    from baselines.transport import shift_time

    s = 0.3
    t = torch.linspace(0, 1, 250, dtype=torch.float64)  # official grid, t = 0 noise
    official = s * t / (1 + (s - 1) * t)
    ours = shift_time(torch.linspace(1, 0, 250, dtype=torch.float64), 1 / s)  # t = 1 noise
    torch.testing.assert_close(1 - ours, official)


def test_tiny_backbone_end_to_end():
    bb = build_backbone("vavae_lightningdit", "tiny", num_classes=4, image_size=32)
    assert bb.tokenizer.needs_features and bb.tokenizer.trainable
    assert bb.tokenizer.latent_shape(32) == (8, 8, 8)
    assert "all latent channels" in bb.notes["guidance"]
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    feats = bb.features(x)
    assert feats.shape == (4, 64, 32)
    parts = bb.tokenizer.loss(x, feats, step=0)
    assert torch.isfinite(parts["loss"])
    with torch.no_grad():
        z = bb.tokenizer.encode(x, feats)
    bb.tokenizer.set_latent_stats(z)
    out = bb.generator.loss(
        bb.tokenizer.normalize(z), torch.tensor([0, 1, 2, 3]), generator=torch.Generator().manual_seed(0)
    )
    assert {"loss", "denoise", "cos"} <= set(out) and torch.isfinite(out["loss"])
    imgs = bb.sample_images(torch.tensor([0, 1]), torch.randn(2, 8, 8, 8), steps=3)
    assert imgs.shape == (2, 3, 32, 32) and torch.isfinite(imgs).all()  # decoded, not clamped


def test_official_cfg_equals_sampler_quirk_option():
    """The common sampler with guidance_channels=3 and the data-at-1 wrapper gives the official guided velocity."""
    bb = build_backbone("vavae_lightningdit", "tiny", num_classes=4, image_size=32, official_cfg_quirk=True)
    gen, net = bb.generator, bb.generator.net.eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    x, y = torch.randn(2, 8, 8, 8), torch.tensor([1, 3])
    tau, w = 0.3, 4.0
    null = torch.full_like(y, 4)
    with torch.no_grad():
        off = official_forward_with_cfg(
            net, torch.cat([x, x]), torch.full((4,), 1 - tau), torch.cat([y, null]), w
        )[:2]
        v_c, v_u = (-gen.net(x, torch.full((2,), 1 - tau), lab) for lab in (y, null))
    guided = v_u + w * (v_c - v_u)
    ours = torch.cat(
        [guided[:, :3], v_c[:, 3:]], dim=1
    )  # what transport.sample does with guidance_channels=3
    torch.testing.assert_close(ours, -off, atol=1e-4, rtol=1e-4)
    # and the sampler itself runs with the quirk switched on
    lat = gen.sample(y, torch.randn(2, 8, 8, 8), None, bb.recipe.sampler.replace(steps=2))
    assert lat.shape == (2, 8, 8, 8) and torch.isfinite(lat).all()


def test_paper_preset_builds_without_files():
    """XL/1 builds (for throughput) with no files; DINOv2 is not constructed unless asked."""
    with torch.device("meta"):  # no memory, no init cost
        bb = build_backbone("vavae_lightningdit", "XL/1", perceptual="random-features")
    assert bb.encoder is None
    assert bb.tokenizer.latent_shape(256) == (32, 16, 16)
    assert sum(p.numel() for p in bb.generator.net.parameters()) == 675_256_736
    with pytest.raises(FileNotFoundError):
        build_backbone("vavae_lightningdit", "XL/1", encoder_weights="/nonexistent/dinov2.safetensors")
