"""Frozen vision encoders that give patch features [B, T, D] of images in [-1, 1].

- `dinov2-vit-{s,b,l,g}14`: DINOv2 through timm, weights from a LOCAL file (nothing is downloaded). Input is
  resized (bicubic) to 224 px and ImageNet-normalised, as REPA / VA-VAE / FAE do; the CLS and register tokens
  are dropped, leaving 16 x 16 = 256 patch tokens.
- `standin`: a small fixed (seeded, never trained) convolutional encoder for the embedded CPU suites; it
  plays the frozen encoder's role (alignment target, FAE input) at no cost. Its features are not semantic.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

DINOV2_ARCHS = {
    "dinov2-vit-s14": ("vit_small_patch14_dinov2", 384),
    "dinov2-vit-b14": ("vit_base_patch14_dinov2", 768),
    "dinov2-vit-l14": ("vit_large_patch14_dinov2", 1024),
    "dinov2-vit-g14": ("vit_giant_patch14_dinov2", 1536),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class StandInEncoder(nn.Module):
    """Fixed random conv features on a `grid` x `grid` token grid: images [B,3,H,W] -> [B, grid*grid, dim]."""

    def __init__(self, dim: int = 32, grid: int = 8, width: int = 32, seed: int = 0):
        super().__init__()
        self.dim, self.grid = dim, grid
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, dim, 1),
        )  # fmt: skip
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.net.parameters():  # seeded init: identical encoder in every process and run
                p.copy_(
                    torch.randn(p.shape, generator=g)
                    * (1.0 / max(1, p[0].numel()) ** 0.5 if p.ndim > 1 else 0.01)
                )
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: always eval

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.net(images.float())  # [B, dim, H, W]
        h = F.adaptive_avg_pool2d(h, self.grid)  # [B, dim, grid, grid]
        return h.flatten(2).transpose(1, 2)  # [B, grid*grid, dim], row-major tokens


class DINOv2Encoder(nn.Module):
    """timm DINOv2 ViT loaded from a local weights file; returns patch tokens [B, 256, D] at 224 px."""

    def __init__(self, name: str = "dinov2-vit-l14", weights: str | os.PathLike | None = None, image_size: int = 224,
                 preprocess: str = "imagenet", **timm_kwargs):  # fmt: skip
        super().__init__()
        if preprocess not in ("imagenet", "vavae"):
            raise ValueError(f"preprocess must be 'imagenet' or 'vavae', got {preprocess!r}")
        # "imagenet": [0,1] -> bicubic 224 -> ImageNet mean/std (REPA, FAE). "vavae": VA-VAE's VF features are taken
        # on [-1,1] images resized bilinearly to 224 with no normalisation (hustvl/LightningDiT vavae/ldm).
        self.preprocess = preprocess
        import timm

        if name not in DINOV2_ARCHS:
            raise ValueError(f"unknown DINOv2 encoder {name!r}; known: {', '.join(DINOV2_ARCHS)}")
        arch, _ = DINOV2_ARCHS[name]
        random_init = str(weights) == "random"  # autoencoder.RANDOM_WEIGHTS: throughput on paper shapes only
        path = Path(weights) if weights and not random_init else None
        # a timm folder (config.json + model.safetensors), as on the HF hub
        if path is not None and path.is_dir():
            path, timm_kwargs = _timm_folder(path, arch, timm_kwargs)
        if not random_init and (path is None or not path.is_file()):
            raise FileNotFoundError(
                f"{name}: weights file not found ({path}). Download timm's '{arch}.lvd142m' weights "
                "(model.safetensors) on a machine with internet and pass its path (--encoder-weights or GENBENCH_WEIGHTS)."
            )
        # Keep timm's native size (518 px: the released 37x37 position table) so the official file loads strictly;
        # dynamic_img_size interpolates the table to the 224 px input at run time, as DINOv2 itself does.
        self.model = timm.create_model(
            arch, pretrained=False, num_classes=0, dynamic_img_size=True, **timm_kwargs
        )
        if path is not None:  # safetensors or weights_only; a mismatch names the first keys
            from bench.checkpoints import load_state_dict_strict, load_weights

            load_state_dict_strict(self.model, load_weights(path, f"{name} weights"), path)
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    @property
    def dim(self) -> int:
        return self.model.embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        if self.preprocess == "vavae":
            x = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)
        else:
            x = F.interpolate((images.float() + 1) / 2, size=size, mode="bicubic", align_corners=False)
            x = (x - self.mean) / self.std
        tokens = self.model.forward_features(x)  # [B, prefix + 256, D]
        return tokens[:, self.model.num_prefix_tokens :]


def _timm_folder(folder: Path, arch: str, timm_kwargs: dict) -> tuple[Path, dict]:
    """The weights file and timm kwargs of a timm model folder (what `huggingface-cli download
    timm/vit_large_patch14_dinov2.lvd142m` gives): config.json's architecture must be `arch` (its pretrained tag,
    e.g. ".lvd142m", aside); its model_args, if any, are passed to timm.create_model as timm's local-dir loader does."""
    import json

    cfg_p = folder / "config.json"
    if not cfg_p.is_file():
        raise FileNotFoundError(f"{folder}: a timm model folder holds config.json and model.safetensors")
    cfg = json.loads(cfg_p.read_text())
    got = str(cfg.get("architecture", "")).split(".")[0]
    if got != arch:
        raise ValueError(f"{cfg_p}: architecture {got!r}, expected {arch!r}")
    weights = next(
        (folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None
    )
    if weights is None:
        raise FileNotFoundError(f"{folder}: no model.safetensors (or pytorch_model.bin)")
    return weights, {**cfg.get("model_args", {}), **timm_kwargs}


def dinov2_weights_path(name: str, root: str | os.PathLike) -> Path:
    """Where a DINOv2 encoder's weights sit in a weights folder: <name>.safetensors, else a timm folder <name>/."""
    root = Path(root)
    folder = root / name
    return (
        folder
        if not (root / f"{name}.safetensors").is_file() and folder.is_dir()
        else root / f"{name}.safetensors"
    )


def build_encoder(name: str, **kwargs) -> nn.Module:
    """'standin' (kwargs: dim, grid, width, seed) or a DINOv2 name (kwargs: weights, image_size, timm kwargs).
    A DINOv2 encoder without `weights` looks at $GENBENCH_WEIGHTS/<name>.safetensors (or the timm folder
    $GENBENCH_WEIGHTS/<name>/)."""
    if name == "standin":
        return StandInEncoder(**kwargs)
    if name in DINOV2_ARCHS:
        if kwargs.get("weights") is None and os.environ.get("GENBENCH_WEIGHTS"):
            kwargs["weights"] = dinov2_weights_path(name, os.environ["GENBENCH_WEIGHTS"])
        return DINOv2Encoder(name, **kwargs)
    raise ValueError(f"unknown encoder {name!r}; known: standin, {', '.join(DINOV2_ARCHS)}")
