import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from baselines import ops
from baselines.lightningdit import LightningDiT, LightningDiT_models, official_forward_with_cfg
from baselines.parity import run_case
from baselines.parity.lightningdit import parity_model


def test_parity_golden_lightningdit(golden):
    lines: list[str] = []
    with ops.backend("torch"):  # the reference ops must reproduce the official numbers
        ok = run_case(golden("lightningdit_tiny"), out=lines.append)
    assert ok, "\n".join(lines)
    assert len(lines) == 3 and all(line.endswith(" ok") for line in lines)


def test_parity_golden_lightningdit_triton_interpreter(golden):
    """The same parity through the Triton kernels (modulated RMSNorm, SwiGLU, RoPE) under TRITON_INTERPRET=1."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "GENBENCH_OPS": "triton"}
    case = golden("lightningdit_tiny")
    res = subprocess.run([sys.executable, "-m", "baselines.parity", str(case)], env=env, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count(" ok") == 3


def test_fixed_tables_match_golden(golden):
    """pos_embed and the RoPE buffers are derived from the kwargs alone and equal the official ones."""
    case = golden("lightningdit_tiny")
    kw = json.loads((case / "config.json").read_text())["kwargs"]
    want = load_file(str(case / "weights.safetensors"))
    model = parity_model(kw)
    for key in ("pos_embed", "feat_rope.freqs_cos", "feat_rope.freqs_sin"):
        torch.testing.assert_close(model.state_dict()[key], want[key], atol=1e-6, rtol=0)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in want.items()}


def official_xl1_layout(
    depth=28, d=1152, heads=16, c=32, grid=16, classes=1000
) -> dict[str, tuple[int, ...]]:
    """The key layout of the released LightningDiT-XL/1 state_dict (models/lightningdit.py, XL/1 config),
    written out independently of our module."""
    hidden = int(2 / 3 * 4 * d)  # 3072
    t, hd = grid * grid, d // heads
    lay = {
        "pos_embed": (1, t, d),
        "x_embedder.proj.weight": (d, c, 1, 1),
        "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (classes + 1, d),
        "feat_rope.freqs_cos": (t, hd),
        "feat_rope.freqs_sin": (t, hd),
        "final_layer.norm_final.weight": (d,),
        "final_layer.linear.weight": (c, d),
        "final_layer.linear.bias": (c,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        lay.update({
            p + "norm1.weight": (d,), p + "norm2.weight": (d,),
            p + "attn.qkv.weight": (3 * d, d), p + "attn.qkv.bias": (3 * d,),
            p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
            p + "mlp.w12.weight": (2 * hidden, d), p + "mlp.w12.bias": (2 * hidden,),
            p + "mlp.w3.weight": (d, hidden), p + "mlp.w3.bias": (d,),
            p + "adaLN_modulation.1.weight": (6 * d, d), p + "adaLN_modulation.1.bias": (6 * d,),
        })  # fmt: skip
    return lay


def test_xl1_official_layout_loads_strict_and_param_count():
    layout = official_xl1_layout()
    with torch.device("meta"):
        model = LightningDiT_models["XL/1"]()
        sd = {k: torch.empty(shape) for k, shape in layout.items()}
    model.load_state_dict(sd, strict=True, assign=True)  # raises on any missing/unexpected key or shape
    n = sum(p.numel() for p in model.parameters())
    assert f"{n / 1e6:.2f}M" == "675.26M"  # official log docs/log.txt: "LightningDiT Parameters: 675.26M"
    assert n == 675_256_736


def test_random_state_dict_roundtrip_small():
    """A random state dict in the layout of one model loads strictly into a fresh one and gives equal outputs."""
    kw = dict(input_size=4, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=5,
              use_swiglu=True, use_rope=True, use_rmsnorm=True)  # fmt: skip
    a, b = LightningDiT(**kw).eval(), LightningDiT(**kw).eval()
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in a.state_dict().items()}
    a.load_state_dict(sd, strict=True)
    b.load_state_dict(sd, strict=True)
    x, t, y = torch.randn(2, 4, 4, 4), torch.rand(2), torch.tensor([1, 5])
    torch.testing.assert_close(a(x, t, y), b(x, t, y))


@pytest.mark.parametrize(
    "flags,keys,absent",
    [
        (
            dict(use_qknorm=True, use_rmsnorm=True),
            ["blocks.0.attn.q_norm.weight", "blocks.0.attn.k_norm.weight"],
            [],
        ),
        (dict(use_qknorm=True, use_rmsnorm=False), ["blocks.0.attn.q_norm.bias"], ["blocks.0.norm1.weight"]),
        (
            dict(use_swiglu=False),
            ["blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight"],
            ["blocks.0.mlp.w12.weight"],
        ),
        (dict(use_rope=False), [], ["feat_rope.freqs_cos"]),
        (dict(wo_shift=True), ["blocks.0.adaLN_modulation.1.weight"], []),
        (dict(learn_sigma=True), ["final_layer.linear.weight"], []),
    ],
)
def test_options(flags, keys, absent):
    base = dict(input_size=6, patch_size=2, in_channels=4, hidden_size=96, depth=2, num_heads=6, num_classes=3,
                use_swiglu=True, use_rope=True, use_rmsnorm=True)  # fmt: skip
    model = LightningDiT(**{**base, **flags})
    sd = model.state_dict()
    assert all(k in sd for k in keys) and not any(k in sd for k in absent)
    if flags.get("wo_shift"):
        assert sd["blocks.0.adaLN_modulation.1.weight"].shape[0] == 4 * 96
    if flags.get("learn_sigma"):
        assert sd["final_layer.linear.weight"].shape[0] == 2 * 2 * 8
    with torch.no_grad():  # randomise the zero-initialised layers so the forward is not trivially 0
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    out = model(torch.randn(2, 4, 6, 6), torch.rand(2), torch.tensor([0, 3]))
    assert out.shape == (2, 4, 6, 6) and torch.isfinite(out).all() and out.abs().sum() > 0
    if "feat_rope.freqs_cos" in sd:
        assert sd["feat_rope.freqs_cos"].shape == (9, 16)  # (6/2)^2 tokens, head_dim 16


def test_bad_sizes():
    with pytest.raises(ValueError, match="divisible by 4"):
        LightningDiT(
            input_size=4, patch_size=1, in_channels=4, hidden_size=48, depth=1, num_heads=8, use_rope=True
        )
    with pytest.raises(ValueError, match="divisible by patch_size"):
        LightningDiT(input_size=5, patch_size=2, in_channels=4, hidden_size=64, depth=1, num_heads=4)


def test_official_cfg_semantics():
    torch.manual_seed(0)
    model = LightningDiT_models["tiny"](in_channels=6, num_classes=4).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 6, 8, 8)
    xc, yc = torch.cat([x, torch.randn_like(x)]), torch.tensor([1, 2, 4, 4])
    with torch.no_grad():
        cond, uncond = model(x, torch.full((2,), 0.5), yc[:2]), model(x, torch.full((2,), 0.5), yc[2:])
        out = official_forward_with_cfg(model, xc, torch.full((4,), 0.5), yc, 3.0, True, 0.11)
        t_low = torch.tensor([0.05, 0.5, 0.05, 0.5])
        low = official_forward_with_cfg(model, xc, t_low, yc, 3.0, True, 0.11)
        cond_low = model(x, t_low[:2], yc[:2])
    g = uncond[:, :3] + 3.0 * (cond[:, :3] - uncond[:, :3])
    torch.testing.assert_close(out[:2, :3], g, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[2:, :3], g, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[:2, 3:], cond[:, 3:], atol=1e-4, rtol=1e-4)  # unguided channels
    torch.testing.assert_close(out[2:, 3:], uncond[:, 3:], atol=1e-4, rtol=1e-4)
    # t[0] = 0.05 < 0.11 switches guidance off for the whole batch (even the rows with t = 0.5)
    torch.testing.assert_close(low[:2], cond_low, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(low[2:, :3], cond_low[:, :3], atol=1e-4, rtol=1e-4)


def test_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = LightningDiT_models["tiny"](num_classes=3)
    b = LightningDiT_models["tiny"](num_classes=3, use_checkpoint=True)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        for p in a.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    b.load_state_dict(a.state_dict())
    x, t, y = torch.randn(2, 8, 8, 8), torch.rand(2), torch.tensor([0, 2])
    a(x, t, y).square().mean().backward()
    b(x, t, y).square().mean().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        if pa.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_flops_per_image_matches_counter():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from baselines.transport import count_forward_flops

    m = LightningDiT_models["tiny"](num_classes=4)
    with sdpa_kernel(SDPBackend.MATH):  # the math path is plain matmuls, which FlopCounterMode counts
        counted = count_forward_flops(m, (8, 8, 8), 4)
    assert abs(m.flops_per_image() - counted) < 0.01 * m.flops_per_image()
