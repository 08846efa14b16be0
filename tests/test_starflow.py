"""STARFlow: golden parity, exact invertibility across the official switches, Jacobi == sequential at tolerance 0,
paper preset sizes on the meta device, the uniform wrapper."""

import json

import pytest
import torch

from baselines import parity, starflow
from baselines.api import Backbone, Recipe, sample_generators
from baselines.backbones.starflow import StarFlowGenerator
from baselines.backbones.tarflow import PixelTokenizer
from bench.studies.sizes import preset_sizes


def _golden_model(case_dir):
    case, model = parity.load_case(case_dir)
    return case.config, model, case.io


def _randomize(model, std=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "proj_out" in n or n.endswith("norm.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def test_golden_parity(golden):
    lines = []
    assert parity.run_case(golden("starflow_tiny"), out=lines.append), "\n".join(lines)
    config = json.loads((golden("starflow_tiny") / "config.json").read_text())
    assert len(lines) == len(config["calls"]) and all(line.endswith(" ok") for line in lines)


@pytest.mark.parametrize("cfg", [False, True])
def test_jacobi_tol0_equals_sequential_golden(golden, cfg):
    config, model, io = _golden_model(golden("starflow_tiny"))
    z = io["z_sample"]
    y, w = (io["y_cfg"], float(config["conventions"]["reverse_cfg"]["guidance"])) if cfg else (io["y"], 0.0)
    seq = model.reverse(z, y, w)
    for block in (16, 7):
        stats = []
        jac = model.reverse(z, y, w, mode="jacobi", jacobi_block=block, jacobi_tol=0.0, stats=stats)
        assert (jac - seq).abs().max() <= 1e-4
        assert sum(s.passes for s in stats) <= len(model.blocks) * model.num_patches
    stats = []
    fast = model.reverse(z, y, w, mode="jacobi", jacobi_block=16, jacobi_tol=1e-3, stats=stats)
    assert torch.isfinite(fast).all() and sum(s.passes for s in stats) < len(model.blocks) * model.num_patches


BASE = dict(in_channels=4, img_size=4, patch_size=1, channels=64, num_blocks=3, layers_per_block=[1, 1, 2], head_dim=32,
            rope=1, sos=1, txt_size=1, txt_dim=6, cond_top_only=1, use_softplus=1, use_final_norm=1, soft_clip=4.0,
            seq_order="L2R")  # fmt: skip
VARIANTS = [
    dict(),
    dict(seq_order="R2L", num_blocks=4, layers_per_block=[1, 0, 1, 2]),  # an IdentityBlock
    dict(sos=0, rope=0),  # zero shift + learned positional table (TARFlow style)
    dict(
        txt_size=0, txt_dim=0, cond_top_only=0, use_softplus=0, soft_clip=0, use_final_norm=0
    ),  # unconditional, exp scale
    dict(
        use_swiglu=1,
        norm_type="rms_norm",
        use_qk_norm=1,
        use_post_norm=1,
        num_heads=4,
        num_kv_heads=2,
        use_bias=0,
        hf_style_rope=1,
    ),
    dict(txt_size=3, txt_dim=7, cond_top_only=0),  # every block conditional, 3-token prefix
    dict(patch_size=2, img_size=8, top_block_channels=128),
]


@pytest.mark.parametrize("kw", VARIANTS, ids=range(len(VARIANTS)))
def test_forward_reverse_roundtrip(kw):
    model = _randomize(starflow.StarFlow(**{**BASE, **kw})).eval()
    x = torch.randn(2, model.in_channels, model.img_size, model.img_size)
    y = torch.randn(2, model.txt_size, model.txt_dim) if model.txt_dim else None
    with torch.no_grad():
        z, y_out, outputs, logdets = model(x, y)
    assert len(outputs) == len(model.blocks) + 1 and torch.equal(outputs[0], model.patchify(x))
    assert torch.equal(model.unpatchify(model.patchify(x)), x)
    assert torch.allclose(model.reverse(z, y), x, atol=1e-4)
    assert torch.allclose(model.reverse(z, y, mode="jacobi", jacobi_block=5, jacobi_tol=0.0), x, atol=1e-4)


def test_unsupported_options_rejected():
    with pytest.raises(ValueError, match="temporal_causal"):
        starflow.StarFlow(**{**BASE, "temporal_causal": 1})
    with pytest.raises(ValueError, match="unknown"):
        starflow.StarFlow(**{**BASE, "no_such_option": 1})
    with pytest.raises(ValueError, match="cond_top_only"):
        starflow.StarFlow(**{**BASE, "txt_size": 0, "txt_dim": 0})


def test_paper_preset_sizes_on_meta_device():
    rows = {(r["family"], r["preset"]): r for r in preset_sizes()}
    assert abs(rows["starflow", "1.4B"]["params"] / 1.4e9 - 1) < 0.02
    assert (
        abs(rows["starflow", "3.8B"]["params"] / 3.86e9 - 1) < 0.01
    )  # PAPERS.md: the 3B t2i config has 3.86B
    assert rows["starflow", "3.8B"]["deep_block"] > 2 * rows["starflow", "3.8B"]["shallow_blocks"]


def _tiny_generator(num_classes=4):
    model = _randomize(starflow.StarFlow_models["tiny"](channels=32, head_dim=16, layers_per_block=[1, 1, 1], img_size=4,
                                            txt_dim=num_classes + 1), 0.02)  # fmt: skip
    return StarFlowGenerator(model, num_classes)


def test_wrapper_trains_and_samples():
    gen = _tiny_generator()
    x = torch.randn(16, 4, 4, 4)
    y = torch.arange(16) % 4
    opt = torch.optim.AdamW(gen.parameters(), lr=3e-3)
    losses = []
    for i in range(8):
        parts = gen.loss(x, y, generator=torch.Generator().manual_seed(i))
        assert set(parts) >= {"loss", "nll", "loss_z", "loss_logdet", "latent_norm"} and torch.isfinite(
            parts["loss"]
        )
        assert parts["latent_norm"] > 0
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        losses.append(float(parts["loss"].detach()))
    assert losses[-1] < losses[0]
    m = gen.eval_metrics(x, y)
    assert set(m) == {"bits_per_dim", "bits_per_dim_clean"} and all(v == v for v in m.values())

    gen.eval()
    bb = Backbone("starflow", "normalizing_flow", PixelTokenizer(), gen, Recipe())  # identity decode
    labels = torch.tensor([0, 3, 2])
    gens = sample_generators(1, range(3))
    noise = torch.stack([torch.randn(4, 4, 4, generator=g) for g in gens])
    outs = {}
    for name, sampler in {"seq": dict(), "cfg": dict(guidance=1.5), "jac": dict(mode="jacobi", jacobi_block=5),
                          "jac_cfg": dict(mode="jacobi", guidance=1.5, jacobi_tol=0.0)}.items():  # fmt: skip
        out = bb.sample_images(labels, noise, gens, **sampler)
        assert out.shape == (3, 4, 4, 4) and torch.isfinite(out).all()
        alone = bb.sample_images(labels[2:], noise[2:], gens[2:], **sampler)  # independent of the batch
        assert torch.allclose(out[2:], alone, atol=1e-5)
        outs[name] = out
    assert not torch.allclose(outs["seq"], outs["cfg"], atol=1e-3)  # guidance acts
    assert torch.allclose(
        outs["jac_cfg"], outs["cfg"], atol=1e-4
    )  # Jacobi at tol 0 == sequential, guided too
    T = 16  # 4x4 latent, patch 1, SOS: T steps per block; prefix pass for the deep block; denoise fwd+bwd
    assert gen.nfe() == 3 * T + 1 + 2
    assert gen.nfe(guidance=1.5, denoise=False) == 2 * (T + 1) + 2 * T
    assert gen.nfe(mode="jacobi", jacobi_block=8, jacobi_max_iters=4, denoise=False) == 3 * 2 * 4 + 1
    with pytest.raises(ValueError, match="unknown autoregressive-flow sampler option"):
        gen.sample(labels, noise, steps=3)


def test_registry_backbone_builds():
    pytest.importorskip("baselines.autoencoder")
    from baselines.api import build_backbone

    bb = build_backbone("starflow", "tiny", num_classes=8, image_size=32)
    assert bb.tokenizer.latent_shape(32) == (4, 8, 8)
    assert bb.generator.model.txt_dim == 9 and bb.recipe.sampler.mode == "jacobi"
    with pytest.raises(ValueError, match="vae_folder"):
        build_backbone("starflow", "1.4B")
    with pytest.raises(ValueError, match="text-to-image"):
        build_backbone("starflow", "3.8B")
