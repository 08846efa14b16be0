"""Paper presets against their sources (issue #12): each fix pins the value or the behaviour it is about."""

import pytest
import torch

from baselines.autoencoder import SDVAETokenizer, load_diffusers_vae


def _sd_vae_folder(path, seed):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    m = diffusers.AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=32,
        layers_per_block=1,
        sample_size=32,
    )
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.save_pretrained(path)
    return path


def test_repa_encodes_with_one_sd_vae_and_decodes_with_another(tmp_path):
    """13b: REPA trains on ft-MSE latents (train.py:176) and decodes its FID samples with ft-EMA (generate.py:193)."""
    mse, ema = _sd_vae_folder(tmp_path / "mse", 0), _sd_vae_folder(tmp_path / "ema", 1)
    tok = SDVAETokenizer(mse, decoder_folder=ema)
    ref_mse, ref_ema = load_diffusers_vae(mse), load_diffusers_vae(ema)
    x, z = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(tok.encode(x), ref_mse.encode(x).mean)
        torch.testing.assert_close(tok.decode(z), ref_ema.decode(z))
        assert not torch.allclose(tok.decode(z), ref_mse.decode(z))
    assert tok.decoder_folder == str(ema)


def test_vavae_long_schedule_phases():
    """9: the released tokenizer's 100 + 15 + 15 epochs (f16d32_vfdinov2_long.yaml): vf_weight 0.5 -> 0.1 -> 0.1,
    margins 0 -> 0 -> (0.25, 0.5); the loss reads the phase of its step."""
    from baselines.vavae import LONG_PHASES, VAVAETokenizer

    tok = VAVAETokenizer("tiny", 32, perceptual="random-features", phases=LONG_PHASES)
    tok.total_steps = 130
    hp = [tok.hp_at(s) for s in (0, 99, 100, 114, 115, 129)]
    assert [h["vf_weight"] for h in hp] == [0.5, 0.5, 0.1, 0.1, 0.1, 0.1]
    assert [(h["distmat_margin"], h["cos_margin"]) for h in hp] == [(0.0, 0.0)] * 4 + [(0.25, 0.5)] * 2
    x, f = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 64, 32)
    early = tok.loss(x, f, step=0, generator=torch.Generator().manual_seed(0))
    late = tok.loss(x, f, step=120, generator=torch.Generator().manual_seed(0))
    assert float(early["vf_cos"]) > float(late["vf_cos"]) + 0.3  # relu(1 - cos) vs relu(0.5 - cos), cos ~ 0
    with pytest.raises(ValueError, match="phases"):
        VAVAETokenizer("tiny", 32, phases=((0.5, {}), (0.9, {})))


class _TinyVelocity(torch.nn.Module):
    """v(x, t, y) = a_y * x + b * t: class-dependent, so guidance matters; null class = num_classes."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.a = torch.nn.Parameter(torch.linspace(-1.0, 1.0, num_classes + 1))
        self.b = torch.nn.Parameter(torch.tensor(0.7))

    def forward(self, x, t, y):
        return self.a[y].view(-1, 1, 1, 1) * x + self.b * t.view(-1, 1, 1, 1)


def _repa_heun(net, x, y, steps, w, hi):
    """REPA samplers.py:46-102 (euler_sampler, heun=True): guidance of BOTH evaluations decided by t_cur <= hi."""
    ts = torch.linspace(1, 0, steps + 1, dtype=torch.float64).tolist()
    null = torch.full_like(y, 3)

    def v(x_, t, guided):
        tt = torch.full((len(x_),), t)
        if not guided:
            return net(x_.float(), tt, y).double()
        c, u = net(x_.float(), tt, y).double(), net(x_.float(), tt, null).double()
        return u + w * (c - u)

    x = x.double()
    for i, (tc, tn) in enumerate(zip(ts[:-1], ts[1:])):
        g = tc <= hi
        d = v(x, tc, g)
        x_next = x + (tn - tc) * d
        if i < steps - 1:
            x_next = x + (tn - tc) * (0.5 * d + 0.5 * v(x_next, tn, g))
        x = x_next
    return x


def test_heun_second_evaluation_guided_by_t_cur_as_repa():
    """13c: REPA's Heun decides the guidance of its second evaluation (at t_next) by t_cur; `t_next` stays an
    option. Steps 4 put t_cur = 0.75 outside and t_next = 0.5 inside the interval t <= 0.7."""
    from baselines.transport import FlowMatchingGenerator

    gen = FlowMatchingGenerator(_TinyVelocity(), (1, 2, 2), 3).eval()
    y, noise = torch.tensor([0, 2]), torch.randn(2, 1, 2, 2)
    kw = dict(mode="ode", steps=4, heun=True, guidance=2.0, guidance_interval=(0.0, 0.7))
    with torch.no_grad():
        ours = gen.sample(y, noise, **kw)
        other = gen.sample(y, noise, **kw, heun_guidance="t_next")
        want = _repa_heun(gen.net, noise, y, 4, 2.0, 0.7).float()
    torch.testing.assert_close(ours, want, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(ours, other)
    # evaluations: first 0.75 (1) 0.5 (2) 0.25 (2) 0 (2) ... + second decided at t_cur 1, .75, .5 -> 1 + 1 + 2
    assert gen.nfe(**kw) == (1 + 1 + 2 + 2) + (1 + 1 + 2)
    assert gen.nfe(**kw, heun_guidance="t_next") == (1 + 1 + 2 + 2) + (1 + 2 + 2)
    with pytest.raises(ValueError, match="heun_guidance"):
        gen.nfe(**kw, heun_guidance="t_mid")


class _RecordLabels(_TinyVelocity):
    def forward(self, x, t, y):
        self.seen = y.clone()
        return super().forward(x, t, y)


def test_generator_reads_label_drop_and_logit_normal_cutoff_from_the_recipe():
    """8 + 12: the recipe (after suite overrides) sets the label dropout at train time, and LightningDiT's
    800-epoch recipe switches logit-normal t off mid-training (configs/config_details.yaml:59-61)."""
    from baselines.api import Recipe
    from baselines.transport import FlowMatchingGenerator

    gen = FlowMatchingGenerator(
        _RecordLabels(), (1, 2, 2), 3, t_sampling="logit_normal", label_drop=0.1
    ).train()
    y, x = torch.zeros(256, dtype=torch.long), torch.randn(256, 1, 2, 2)
    gen.apply_recipe(Recipe(label_drop=1.0))
    gen.loss(x, y, generator=torch.Generator().manual_seed(0))
    assert gen.label_drop == 1.0 and bool((gen.net.seen == 3).all())
    gen.apply_recipe(Recipe(label_drop=0.0))
    gen.loss(x, y, generator=torch.Generator().manual_seed(0))
    assert bool((gen.net.seen == 0).all())
    r = Recipe(logit_normal_until_epoch=400)
    gen.apply_recipe(r, epoch=399.9)
    assert gen.t_sampling == "logit_normal"
    gen.apply_recipe(r, epoch=400)
    assert gen.t_sampling == "uniform"
    gen.apply_recipe(Recipe(), epoch=500)
    assert gen.t_sampling == "logit_normal"  # no cut-off: the sampling the generator was built with


# --- the paper presets' values (issue #12 items 1-13; sources in reports/recipes.md) ----------------------------


def _setups():
    from bench.recipes import setups

    return {(b, p): (r, protos) for b, p, r, protos in setups()}


def test_lightningdit_paper_protocol_is_the_release_and_common_guides_every_channel():
    """1: paper = the release (CFG on latent channels 0-2, 6.7 / 10); common = all channels at its own scale."""
    from baselines.backbones.vavae_lightningdit import common_guidance

    s = _setups()
    for release, w, hi in (("800ep", 6.7, 0.875), ("64ep", 10.0, 0.9)):
        recipe, protos = s[("vavae_lightningdit", f"XL/1 {release}")]
        assert recipe.sampler == protos["paper"]  # the recipe samples as released
        assert protos["paper"].guidance_channels == 3 and protos["paper"].guidance == w
        assert protos["paper"].guidance_interval == pytest.approx((0.0, hi))
        assert protos["common"].guidance_channels is None
        assert protos["common"].guidance == pytest.approx(1 + (w - 1) * (3 / 32) ** 0.5, abs=1e-4)
        assert protos["common"].replace(guidance=w, guidance_channels=3) == protos["paper"]
    assert common_guidance(6.7, 32) == pytest.approx(2.7453, abs=1e-4)


def test_fae_loss_unweighted_and_stage1_schedule():
    """2 + 3: w_t = sigma_t is the SDE coefficient, not a loss weight; stage 1 ~1M iterations at 1024 (799 epochs),
    cosine with 1000 warmup steps; the tiny preset keeps a constant stage-1 lr."""
    from baselines.api import build_backbone
    from baselines.backbones import fae

    bb = build_backbone("fae", "paper", device="meta")
    assert bb.generator.loss_weight == "none"
    r = fae.PAPER_RECIPE
    assert (r.stage1_epochs, r.stage1_batch_size, r.stage1_lr, r.stage1_betas) == (
        799,
        1024,
        1e-4,
        (0.9, 0.999),
    )
    assert (r.stage1_lr_schedule, r.stage1_warmup_steps) == ("cosine", 1000)
    assert round(r.stage1_epochs * 1_281_167 / 1024 / 1e6, 2) == 1.0  # iterations, millions
    assert (fae.TINY_RECIPE.stage1_lr_schedule, fae.TINY_RECIPE.stage1_warmup_steps) == ("constant", 0)
    assert fae.SDE_SAMPLER.mode == "sde" and fae.SDE_SAMPLER.guidance == 1.0


def test_starflow_imagenet_recipe_and_decoder_choice(tmp_path):
    """4: batch 512, lr 1e-4 cosine to 1e-6, ~400M images (312 epochs); one-epoch warmup; both decoders."""
    from baselines.api import build_backbone
    from baselines.backbones.starflow import RECIPES
    from bench.errors import OptionError

    r = RECIPES["1.4B"]
    assert (r.batch_size, r.lr, r.lr_schedule, r.min_lr, r.epochs) == (512, 1e-4, "cosine", 1e-6, 312)
    assert round(r.epochs * 1_281_167 / 1e6) == 400
    assert r.sampler.denoise
    with pytest.raises(OptionError, match="finetuned_decoder"):
        build_backbone("starflow", "1.4B", vae_folder=tmp_path, decoder="finetuned")
    with pytest.raises(OptionError, match="finetuned_decoder"):
        build_backbone("starflow", "tiny", decoder="finetuned", finetuned_decoder=tmp_path)
    with pytest.raises(OptionError, match="unknown STARFlow decoder"):
        build_backbone("starflow", "tiny", decoder="vq")
    assert "denoising step" in build_backbone("starflow", "tiny").notes["decoder"]


def test_data_handling_as_released():
    """5 latent scaling, 6 flows' one-epoch warmup, 7 posterior draws, 8 flips, 9 + 10 VA-VAE stage 1."""
    s = _setups()
    repa, _ = s[("repa", "XL/2")]
    sflow, _ = s[("starflow", "1.4B")]
    ldit, _ = s[("vavae_lightningdit", "XL/1 800ep")]
    ldit64, _ = s[("vavae_lightningdit", "XL/1 64ep")]
    assert (repa.latent_norm, sflow.latent_norm, ldit.latent_norm) == ("scale", "scale", "released")
    assert (repa.posterior, sflow.posterior, ldit.posterior) == ("sample", "sample", "sample_once")
    assert (repa.hflip, ldit.hflip) == (0.0, 0.5)
    assert (ldit.logit_normal_until_epoch, ldit64.logit_normal_until_epoch) == (400, None)
    assert (ldit.stage1_epochs, ldit.stage1_grad_clip, ldit.stage1_betas) == (130, None, (0.5, 0.9))
    for preset in ("imagenet64", "imagenet128", "afhq256"):
        t, _ = s[("tarflow", preset)]
        assert (t.warmup_epochs, t.warmup_steps, t.latent_norm, t.hflip) == (1.0, 0, "scale", 0.5)
    assert (sflow.warmup_epochs, sflow.warmup_steps) == (1.0, 0)
    assert s[("tarflow", "afhq256")][0].epochs == 4000


def test_release_fid_conventions_and_precision_recorded():
    """11 labels, 12 mixed precision, 13a uint8: what each release did."""
    s = _setups()
    want = {("repa", "XL/2"): ("random", "truncate", "fp16"), ("vavae_lightningdit", "XL/1 800ep"):
            ("random", "round", "bf16"), ("starflow", "1.4B"): ("equal", "round", "bf16"),
            ("tarflow", "imagenet64"): ("random", "truncate", "bf16"), ("fae", "paper"): ("equal", "round", "bf16")}  # fmt: skip
    for key, (labels, uint8, mp) in want.items():
        r = s[key][0]
        assert (r.release_labels, r.release_uint8, r.mixed_precision) == (labels, uint8, mp), key


def test_tiny_presets_keep_the_smoke_behaviour():
    """The CPU presets are ours: no fixed scales, posterior means, no flips, no logit-normal cut-off."""
    from baselines.api import build_backbone

    for name in ("repa", "sit", "vavae_lightningdit", "fae", "starflow", "tarflow"):
        r = build_backbone(name, "tiny").recipe
        assert (r.latent_norm, r.posterior, r.hflip, r.logit_normal_until_epoch) == (
            "per_channel",
            "mean",
            0.0,
            None,
        )
        assert (r.release_labels, r.release_uint8) == ("equal", "round"), name
    vt = build_backbone("vavae_lightningdit", "tiny")
    assert vt.recipe.sampler.guidance_channels is None and vt.recipe.stage1_grad_clip == 1.0
    assert vt.protocols["paper"].guidance_channels == 3


def test_invoke_recipes_reproduces_the_committed_table():
    """`invoke recipes` == reports/recipes.md byte for byte, and every row has a source (exit 0)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-m", "invoke", "recipes"], cwd=repo, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    committed = (repo / "reports" / "recipes.md").read_text()
    assert p.stdout == committed, (
        "reports/recipes.md is stale: rebuild it with `invoke recipes > reports/recipes.md`"
    )
    assert "MISSING" not in committed and "| lr | 0.0001 |" in committed


def test_every_setting_has_a_source_and_values_come_from_the_objects():
    import dataclasses

    from bench.recipes import markdown, rows, table

    all_rows = table()
    assert all(r["source"] for r in all_rows)
    recipe, protos = _setups()[("starflow", "1.4B")]
    changed = rows("starflow", "1.4B", dataclasses.replace(recipe, lr=3e-4), protos)
    assert {r["setting"]: r["value"] for r in changed}["lr"] == "0.0003"  # read from the object, not restated
    assert (
        rows("starflow", "1.4B", dataclasses.replace(recipe, lr=3e-4), {"x": protos["paper"]})[-1]["source"]
        is None
    )
    assert markdown(all_rows).count("\n## ") == len({(r["backbone"], r["preset"]) for r in all_rows})
