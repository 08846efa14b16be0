"""FD-DINOv2 features equal dgm-eval's on the same random weights and images.

dgm-eval (layer6ai-labs/dgm-eval at 74c79f7) runs torch.hub's DINOv2 (facebookresearch/dinov2 at b8931f7).
Below is a port of that path, written from reading the sources: dgm_eval/models/dinov2.py:46-59 (torchvision
Resize((224, 224), BICUBIC) on a PIL image, ToTensor, Normalize(ImageNet mean, std)), dgm_eval/dataloaders.py:
62-66 (ADM npz rows through Image.fromarray), and the hub model: dinov2/models/vision_transformer.py (patch
embedding, class token, interpolate_pos_encoding :180-212, blocks with LayerScale, final norm, CLS token
:255-271, head = Identity :167, forward :325-330) with dinov2/layers (Attention, Mlp, LayerScale). The key
names are the official checkpoint's, so its state_dict is what our extractor loads.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.data import embedded_images
from bench.metrics import get_extractor
from bench.metrics.extractors import DINOv2

DIM, DEPTH, HEADS, GRID = 384, 2, 6, 37  # ViT-S/14 width; 2 blocks keep the test fast; 518 px table


class HubAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.num_heads = HEADS
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = torch.unbind(self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads), 2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(DIM))

    def forward(self, x):
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(DIM, 4 * DIM), nn.Linear(4 * DIM, DIM)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class HubBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.attn, self.ls1 = nn.LayerNorm(DIM, eps=1e-6), HubAttention(), LayerScale()
        self.norm2, self.mlp, self.ls2 = nn.LayerNorm(DIM, eps=1e-6), Mlp(), LayerScale()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, DIM, 14, 14)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class HubDinoViT(nn.Module):
    """DinoVisionTransformer(img_size=518, patch_size=14, interpolate_offset=0.1, interpolate_antialias=False)."""

    def __init__(self):
        super().__init__()
        self.patch_size, self.interpolate_offset, self.interpolate_antialias = 14, 0.1, False
        self.patch_embed = PatchEmbed()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, GRID * GRID + 1, DIM))
        self.mask_token = nn.Parameter(torch.zeros(1, DIM))
        self.blocks = nn.ModuleList(HubBlock() for _ in range(DEPTH))
        self.norm = nn.LayerNorm(DIM, eps=1e-6)

    def interpolate_pos_encoding(self, x, w, h):  # vision_transformer.py:180-212
        npatch, n = x.shape[1] - 1, self.pos_embed.shape[1] - 1
        if npatch == n and w == h:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
        dim = x.shape[-1]
        w0, h0 = w // self.patch_size, h // self.patch_size
        m = int(math.sqrt(n))
        sx, sy = float(w0 + self.interpolate_offset) / m, float(h0 + self.interpolate_offset) / m
        patch_pos_embed = F.interpolate(
            patch_pos_embed.reshape(1, m, m, dim).permute(0, 3, 1, 2),
            mode="bicubic",
            antialias=self.interpolate_antialias,
            scale_factor=(sx, sy),
        )
        assert (w0, h0) == patch_pos_embed.shape[-2:]
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(x.dtype)

    def forward(self, x):
        _, _, w, h = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, w, h)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]  # head(x_norm_clstoken), head = Identity


def dgm_eval_features(model, images_uint8):
    """dgm-eval's DINOv2Encoder.transform + get_representations on ADM-npz rows."""
    import torchvision.transforms as TF
    from PIL import Image

    transform = TF.Compose([TF.Resize((224, 224), TF.InterpolationMode.BICUBIC), TF.ToTensor()])
    norm = TF.Normalize(np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]))
    batch = torch.stack([norm(transform(Image.fromarray(a).convert("RGB"))) for a in images_uint8])
    with torch.no_grad():
        return model(batch).numpy()


@pytest.fixture(scope="module")
def hub_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = HubDinoViT().eval()
    with torch.no_grad():  # random weights with every part active (LayerScale ~1, a non-trivial table)
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
            elif name in ("pos_embed", "cls_token", "mask_token"):
                p.normal_(0.0, 0.5)
            elif p.ndim > 1:
                nn.init.normal_(p, 0.0, (1.0 / p[0].numel()) ** 0.5)
            else:
                p.normal_(0.0, 0.1)
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_pretrain.pth"
    torch.save(model.state_dict(), path)  # the official checkpoint's layout (mask_token, 1370-entry table)
    return model, path


def test_fd_dinov2_features_equal_dgm_eval_hub_path(hub_checkpoint):
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    model, path = hub_checkpoint
    images, _ = embedded_images(32, 1, split="test")  # 8 photo crops, upsampled to 224 as dgm-eval does
    ours = DINOv2("dinov2-vit-s14", weights=path, model_kwargs={"depth": DEPTH}).features(
        images, batch_size=3
    )
    ref = dgm_eval_features(model, images)
    assert ours["pool"].shape == (8, DIM)
    np.testing.assert_allclose(ours["pool"], ref, rtol=0, atol=2e-5 * np.abs(ref).max())  # float32 round-off

    # timm's dynamic_img_size (antialiased resampling at size=16) on the same weights is measurably different
    dyn = timm.create_model(
        "vit_small_patch14_dinov2", pretrained=False, num_classes=0, dynamic_img_size=True, depth=DEPTH
    )
    dyn.load_state_dict(checkpoint_filter_fn(torch.load(path, weights_only=True), dyn))
    extractor = DINOv2("dinov2-vit-s14", random_weights=True, model_kwargs={"depth": DEPTH})
    extractor.model = dyn.eval()
    rel = np.abs(extractor.features(images)["pool"] - ref).max() / np.abs(ref).max()
    assert rel > 100 * 2e-5


def test_dinov2_timm_checkpoint_and_missing_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError, match="dinov2-vit-l14.*lvd142m"):
        get_extractor("dinov2-vit-l14", weights=tmp_path / "absent.safetensors")
    torch.manual_seed(0)  # timm's own layout (518 px table, no mask_token) loads the same way
    timm_model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, depth=DEPTH)
    save_file(timm_model.state_dict(), str(tmp_path / "s14.safetensors"))
    ex = DINOv2("dinov2-vit-s14", weights=tmp_path / "s14.safetensors", model_kwargs={"depth": DEPTH})
    assert ex.model.pos_embed.shape == (1, 16 * 16 + 1, DIM)
    hub = HubDinoViT()
    hub.load_state_dict({**timm_model.state_dict(), "mask_token": torch.zeros(1, DIM)})
    images, _ = embedded_images(32, 1, split="test")
    np.testing.assert_allclose(
        ex.features(images[:3])["pool"], dgm_eval_features(hub.eval(), images[:3]), atol=1e-4
    )
