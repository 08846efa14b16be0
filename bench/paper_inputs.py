"""The local weights a paper-size (imagenet256) run builds its families from, read from the environment:

    GENBENCH_SD_VAE   an SD-VAE diffusers folder (config.json + diffusion_pytorch_model.safetensors), or a folder
                      holding sd-vae-ft-mse/ and sd-vae-ft-ema/ (huggingface.co/stabilityai/sd-vae-ft-{mse,ema})
    GENBENCH_WEIGHTS  a folder with the DINOv2 encoders: dinov2-vit-b14 (REPA), dinov2-vit-l14 (VA-VAE's VF
                      loss), dinov2-vit-g14 (FAE), each <name>.safetensors (timm's state_dict) or a timm folder
                      <name>/ (config.json + model.safetensors: `huggingface-cli download timm/<arch>.lvd142m`)
    GENBENCH_VGG16    torchvision's vgg16-397923af.pth (LPIPS of VA-VAE's and FAE's stage 1), else torch hub's cache

API:
    paper_build_options(name, env=os.environ) -> dict   build_backbone keyword arguments of a paper preset
    paper_input_problems(names, env=os.environ) -> list[str]   one line per missing file ("- what: problem
        (how to get it)"), [] when everything is there: for the runner's single up-front error

Which SD-VAE: REPA (and plain SiT) train on ft-MSE latents and decode FID samples with ft-EMA (sihyun-yu/REPA
train.py:176, generate.py:88); STARFlow encodes and decodes with ft-EMA (apple/ml-starflow train.py --vae). With
one diffusers folder every family uses it for both."""

from __future__ import annotations

import os
from pathlib import Path

SD_VAE_ENV, WEIGHTS_ENV = "GENBENCH_SD_VAE", "GENBENCH_WEIGHTS"
ENCODER = {"repa": "dinov2-vit-b14", "vavae_lightningdit": "dinov2-vit-l14", "fae": "dinov2-vit-g14"}
TIMM_ARCH = {"dinov2-vit-b14": "vit_base_patch14_dinov2", "dinov2-vit-l14": "vit_large_patch14_dinov2",
             "dinov2-vit-g14": "vit_giant_patch14_dinov2"}  # fmt: skip
SD_VAE_USERS = ("repa", "sit", "starflow")
# stage 1 of VA-VAE and FAE trains with LPIPS (torchvision's VGG16 file; lpips' linear layers ship in its wheel)
LPIPS_USERS, VGG_ENV, VGG16_FILE = ("vavae_lightningdit", "fae"), "GENBENCH_VGG16", "vgg16-397923af.pth"


def _is_diffusers(p: Path) -> bool:
    return (p / "config.json").is_file() and any(
        (p / n).is_file() for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
    )


def sd_vae_folders(root: str | Path) -> dict[str, Path | None]:
    """{"mse": folder, "ema": folder} of GENBENCH_SD_VAE: the folder itself for both, or its sd-vae-ft-* children
    (a missing kind falls back to the other)."""
    root = Path(root)
    if _is_diffusers(root):
        return {"mse": root, "ema": root}
    found = {k: root / f"sd-vae-ft-{k}" for k in ("mse", "ema") if _is_diffusers(root / f"sd-vae-ft-{k}")}
    return {"mse": found.get("mse", found.get("ema")), "ema": found.get("ema", found.get("mse"))}


def _encoder_path(name: str, env) -> Path | None:
    from baselines.encoders import dinov2_weights_path

    root = env.get(WEIGHTS_ENV)
    if not root:
        return None
    p = dinov2_weights_path(name, root)
    return p if p.exists() else None


def paper_build_options(name: str, env=None) -> dict:
    """build_backbone kwargs that point a paper preset of `name` at its local weights (absent inputs are left
    out: the builder or paper_input_problems names them)."""
    env = os.environ if env is None else env
    out: dict = {}
    if name in SD_VAE_USERS and env.get(SD_VAE_ENV):
        vae = sd_vae_folders(env[SD_VAE_ENV])
        if name == "starflow":
            if vae["ema"] is not None:
                out["vae_folder"] = str(vae["ema"])
        elif vae["mse"] is not None:
            out["sd_vae"] = str(vae["mse"])
            if vae["ema"] != vae["mse"]:
                out["sd_vae_decoder"] = str(vae["ema"])
    if name in ENCODER:
        p = _encoder_path(ENCODER[name], env)
        if p is not None:
            out["encoder_weights"] = str(p)
    if name in LPIPS_USERS:  # the real LPIPS, never the stand-in "auto" would fall back to without the file
        out["perceptual"] = "lpips-vgg"
        if name == "vavae_lightningdit" and env.get(VGG_ENV):
            out["vgg_path"] = env[VGG_ENV]
    return out


def _vgg_found(env) -> bool:
    if env.get(VGG_ENV):
        return Path(env[VGG_ENV]).is_file()
    import torch

    return (Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE).is_file()


def paper_input_problems(names, env=None) -> list[str]:
    env = os.environ if env is None else env
    out = []
    if any(n in SD_VAE_USERS for n in names):
        root = env.get(SD_VAE_ENV)
        how = "a diffusers folder of huggingface.co/stabilityai/sd-vae-ft-ema (or -mse), or a folder holding both"
        if not root:
            out.append(
                f"- SD-VAE ({', '.join(n for n in names if n in SD_VAE_USERS)}): set {SD_VAE_ENV}=PATH ({how})"
            )
        elif sd_vae_folders(root)["ema"] is None:
            out.append(f"- SD-VAE: {SD_VAE_ENV}={root} holds no diffusers folder (config.json + "
                       f"diffusion_pytorch_model.safetensors) ({how})")  # fmt: skip
    for n in names:
        if n not in ENCODER:
            continue
        enc = ENCODER[n]
        if _encoder_path(enc, env) is None:
            where = (
                f"{env[WEIGHTS_ENV]}/{enc}.safetensors not found"
                if env.get(WEIGHTS_ENV)
                else f"set {WEIGHTS_ENV}=PATH (a folder holding {enc}.safetensors)"
            )
            out.append(f"- DINOv2 {enc} ({n}): {where} (timm's {TIMM_ARCH[enc]}.lvd142m state_dict, or "
                       f"its timm folder {enc}/: huggingface.co/timm/{TIMM_ARCH[enc]}.lvd142m)")  # fmt: skip
    lp = [n for n in names if n in LPIPS_USERS]
    if lp and not _vgg_found(env):
        where = f"{VGG_ENV}={env[VGG_ENV]} does not exist" if env.get(VGG_ENV) else f"set {VGG_ENV}=PATH"
        out.append(f"- LPIPS VGG16 weights ({', '.join(lp)} stage 1): {where} ({VGG16_FILE}, "
                   f"https://download.pytorch.org/models/{VGG16_FILE}; or torch hub's checkpoints cache)")  # fmt: skip
    return out
