"""TARFlow: golden parity, exact invertibility, Jacobi == sequential at tolerance 0, the uniform wrapper."""

import json

import pytest
import torch

from baselines import parity, tarflow
from baselines.api import build_backbone, sample_generators
from baselines.parity import tarflow as tarflow_parity


def _golden_model(case_dir):
    case, model = parity.load_case(case_dir)
    return case.config, model, case.io


def _randomize(model, std=0.05, seed=0):
    """Non-zero proj_out (officially zero-initialised) so that every block does something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "proj_out" in n or "class_embed" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def test_golden_parity(golden):
    lines = []
    assert parity.run_case(golden("tarflow_tiny"), out=lines.append), "\n".join(lines)
    config = json.loads((golden("tarflow_tiny") / "config.json").read_text())
    assert len(lines) == len(config["calls"]) and all(line.endswith(" ok") for line in lines)


@pytest.mark.parametrize(
    "opts", [dict(), dict(guidance=1.5), dict(guidance=1.5, annealed_guidance=True, attn_temp=0.8)]
)
def test_jacobi_tol0_equals_sequential_golden(golden, opts):
    _, model, io = _golden_model(golden("tarflow_tiny"))
    z, y = io["z_sample"], io["y"]
    seq = model.reverse(z, y, **opts)
    for block in (16, 5):
        stats = []
        jac = model.reverse(
            z, y, mode="jacobi", jacobi_block=block, jacobi_tol=0.0, jacobi_max_iters=64, stats=stats, **opts
        )
        assert (jac - seq).abs().max() <= 1e-4
        assert sum(s.passes for s in stats) <= len(model.blocks) * (
            model.num_patches - 1
        )  # never worse than sequential
    stats = []
    fast = model.reverse(z, y, mode="jacobi", jacobi_block=16, jacobi_tol=1e-3, stats=stats, **opts)
    assert torch.isfinite(fast).all() and sum(s.passes for s in stats) < len(model.blocks) * (
        model.num_patches - 1
    )


@pytest.mark.parametrize(
    "kw", [dict(), dict(num_classes=0), dict(nvp=False), dict(patch_size=4, img_size=16, in_channels=1)]
)
def test_forward_reverse_roundtrip(kw):
    base = dict(
        in_channels=3,
        img_size=8,
        patch_size=2,
        channels=64,
        num_blocks=3,
        layers_per_block=1,
        nvp=True,
        num_classes=4,
    )
    model = _randomize(tarflow_parity.parity_model({**base, **kw})).eval()
    x = torch.randn(
        3,
        base["in_channels"] if "in_channels" not in kw else kw["in_channels"],
        model.img_size,
        model.img_size,
    )
    y = torch.tensor([0, 3, 1]) if model.num_classes else None
    with torch.no_grad():
        z, outputs, logdets = model(x, y)
    assert len(outputs) == 3 and logdets.shape == (3,)
    assert (logdets.abs().sum() > 0) == model.nvp  # volume preserving (nvp=False): log-determinant 0
    assert torch.allclose(model.reverse(z, y), x, atol=1e-4)
    assert torch.allclose(model.reverse(z, y, mode="jacobi", jacobi_block=4, jacobi_tol=0.0), x, atol=1e-4)


def test_dropped_label_uses_mean_embedding():
    model = _randomize(
        tarflow.TarFlow_models["tiny"](channels=64, num_blocks=2, layers_per_block=1, img_size=8)
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        z_drop, _, _ = model(x, torch.tensor([-1, -1]))
        z_none, _, _ = model(x, None)
        z_cond, _, _ = model(x, torch.tensor([2, 5]))
    assert torch.equal(z_drop, z_none) and not torch.allclose(z_drop, z_cond)


def test_unknown_kwargs_rejected():
    with pytest.raises(ValueError, match="head_dim"):
        tarflow_parity.parity_model(
            dict(
                in_channels=3,
                img_size=8,
                patch_size=2,
                channels=64,
                num_blocks=2,
                layers_per_block=1,
                head_dim=32,
            )
        )


def _tiny_backbone():
    bb = build_backbone("tarflow", "tiny", num_classes=8, image_size=16)
    bb.generator.model = _randomize(
        tarflow.TarFlow_models["tiny"](img_size=16, channels=64, num_blocks=2, layers_per_block=1), 0.02
    )
    return bb


def test_wrapper_trains_and_samples():
    bb = _tiny_backbone()
    gen = bb.generator
    assert bb.tokenizer.latent_shape(16) == (3, 16, 16) and bb.recipe.betas == (0.9, 0.95)
    bb.tokenizer.set_latent_stats(torch.randn(10, 3, 16, 16) * 5)  # pixel tokenizer: a no-op
    x = torch.rand(16, 3, 16, 16) * 2 - 1
    assert torch.equal(bb.tokenizer.normalize(bb.tokenizer.encode(x)), x)
    y = torch.arange(16) % 8
    opt = torch.optim.AdamW(gen.parameters(), lr=2e-3)
    losses = []
    for i in range(8):
        parts = gen.loss(x, y, generator=torch.Generator().manual_seed(i))
        assert set(parts) >= {"loss", "nll", "loss_z", "loss_logdet"} and torch.isfinite(parts["loss"])
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        losses.append(float(parts["loss"].detach()))
    assert losses[-1] < losses[0]
    m = gen.eval_metrics(x, y)
    assert set(m) == {"bits_per_dim", "bits_per_dim_noisy"} and all(
        torch.isfinite(torch.tensor(v)) for v in m.values()
    )

    gen.eval()
    labels = torch.tensor([1, 4, 7])
    gens = sample_generators(0, range(3))
    noise = torch.stack([torch.randn(3, 16, 16, generator=g) for g in gens])
    for sampler in (dict(), dict(guidance=1.0, annealed_guidance=True), dict(mode="jacobi", jacobi_block=4)):
        out = bb.sample_images(labels, noise, gens, **sampler)
        assert out.shape == (3, 3, 16, 16) and torch.isfinite(out).all()
        alone = bb.sample_images(labels[1:2], noise[1:2], gens[1:2], **sampler)  # independent of the batch
        assert torch.allclose(out[1:2], alone, atol=1e-5)
        again = bb.sample_images(labels, noise, gens, **sampler)
        assert torch.equal(out, again)
    assert gen.nfe() == 2 * 15 + 2 and gen.last_sample_stats.wall_s > 0
    assert gen.nfe(guidance=1.0, denoise=False) == 2 * 2 * 15
    with pytest.raises(ValueError, match="unknown autoregressive-flow sampler option.*known: guidance"):
        gen.sample(labels, noise, steps=10)
    with pytest.raises(ValueError, match="labels"):
        gen.sample(torch.tensor([8, 0, 1]), noise)
