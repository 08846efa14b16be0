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
