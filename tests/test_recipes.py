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

    gen = FlowMatchingGenerator(_RecordLabels(), (1, 2, 2), 3, t_sampling="logit_normal", label_drop=0.1).train()
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
