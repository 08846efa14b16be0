import pytest
import torch

from baselines.encoders import DINOv2Encoder, build_encoder


def test_standin_is_fixed_and_frozen():
    a, b = build_encoder("standin", dim=16, grid=4), build_encoder("standin", dim=16, grid=4)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    fa = a(x)
    assert fa.shape == (2, 16, 16) and torch.equal(fa, b(x))
    assert not any(p.requires_grad for p in a.parameters())
    a.train()
    assert not a.training


def test_dinov2_missing_weights_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        build_encoder("dinov2-vit-s14", weights=tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("clip")


def test_dinov2_loads_a_local_timm_file_and_returns_patch_tokens(tmp_path):
    import timm
    from safetensors.torch import save_file

    kw = dict(depth=1)  # a one-block ViT-S/14 keeps the test cheap; same key layout as the real file
    ref = timm.create_model(
        "vit_small_patch14_dinov2", pretrained=False, num_classes=0, dynamic_img_size=True, **kw
    )
    assert ref.pos_embed.shape[1] == 37 * 37 + 1  # the released checkpoints' table (518 px)
    path = tmp_path / "dinov2-vit-s14.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    enc = DINOv2Encoder("dinov2-vit-s14", weights=path, **kw)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    tokens = enc(x)
    assert tokens.shape == (2, 256, 384)
    with torch.no_grad():
        xi = torch.nn.functional.interpolate(
            (x + 1) / 2, size=(224, 224), mode="bicubic", align_corners=False
        )
        xi = (xi - enc.mean) / enc.std
        want = ref.forward_features(xi)[:, ref.num_prefix_tokens :]
    assert torch.allclose(tokens, want, atol=1e-5)
    assert DINOv2Encoder("dinov2-vit-s14", weights=path, preprocess="vavae", **kw)(x).shape == (2, 256, 384)
