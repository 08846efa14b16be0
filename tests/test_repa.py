import pytest
import torch

from baselines.backbones.repa import build_backbone
from baselines.parity import main as parity_main
from baselines.sit import SiT_models


def test_parity_repa_sit(golden, capsys):
    case = golden("repa_sit_tiny")
    assert parity_main([str(case)]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok") == 8 and "FAIL" not in out


def test_sit_xl2_size_and_official_layout():
    with torch.device("meta"):
        m = SiT_models["XL/2"](input_size=32, num_classes=1000, z_dims=[768], projector_dim=2048)
    n = sum(p.numel() for name, p in m.named_parameters() if not name.startswith("projectors"))
    # SiT-XL/2 without learned sigma: 675.11M incl. the fixed pos_embed parameter (DiT-XL/2 reports 675M);
    # REPA's projector adds 1152*2048 + 2048*2048 + 2048*768 + biases.
    assert abs(n / 1e6 - 675.11) < 0.01
    proj = sum(p.numel() for name, p in m.named_parameters() if name.startswith("projectors"))
    assert proj == 1152 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 768 + 768
    keys = set(m.state_dict())
    for k in ("x_embedder.proj.weight", "t_embedder.mlp.2.bias", "y_embedder.embedding_table.weight", "pos_embed",
              "blocks.27.adaLN_modulation.1.weight", "projectors.0.4.weight", "final_layer.linear.weight"):  # fmt: skip
        assert k in keys
    assert m.state_dict()["y_embedder.embedding_table.weight"].shape == (1001, 1152)


def test_strict_load_rejects_foreign_keys():
    m = SiT_models["tiny"](input_size=8, num_classes=4, z_dims=[16])
    sd = m.state_dict()
    sd["blocks.0.attn.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        m.load_state_dict(sd, strict=True)


def test_repa_tiny_backbone_trains_and_samples():
    torch.manual_seed(0)
    bb = build_backbone("tiny", num_classes=4, image_size=32)
    c, h, w = bb.tokenizer.latent_shape(32)
    assert (c, h, w) == (4, 8, 8) and bb.recipe.sampler.guidance == 1.8
    gen = bb.generator
    lat = torch.randn(8, c, h, w)
    feats = bb.features(torch.rand(8, 3, 32, 32) * 2 - 1)
    opt = torch.optim.AdamW(gen.parameters(), lr=1e-3)
    first = None
    for i in range(30):
        parts = gen.loss(lat, torch.arange(8) % 4, feats, generator=torch.Generator().manual_seed(i % 3))
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        first = first if first is not None else float(parts["proj"])
    assert float(parts["proj"]) < first  # the alignment term is being optimised
    x = bb.sample_images(torch.tensor([0, 1]), torch.randn(2, c, h, w), None, mode="ode", steps=3)
    assert x.shape == (2, 3, 32, 32) and bool(torch.isfinite(x).all())  # decoded, not clamped
