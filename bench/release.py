"""Released checkpoints in their OFFICIAL file formats, loaded strictly into our models, to regenerate the
papers' tables with one evaluator (`invoke bench --suite imagenet256 --from-release`).

API:
    load_release(backbone_name, weights_dir=None, *, release=None, preset=None, num_classes=None,
                 image_size=None, device="cpu", **options) -> Backbone   (eval mode, EMA weights)
    check_release_files(backbone_names, weights_dir=None, releases=None) -> dict[name, dict[role, Path]]
        raises MissingInputError listing EVERY missing file with where to get it (before any loading)
    release_paths(backbone_names, weights_dir=None, releases=None) -> (paths, missing lines)  (no raise)
    IMAGENET256_RELEASES: the backbones with public ImageNet-256 class-conditional weights
    load_tokenizer("sd-vae-ft-mse" | "sd-vae-ft-ema" | "vavae-f16d32", weights_dir=None) -> Tokenizer (frozen)
    RELEASES: backbone name -> release name -> Release (files relative to the weights dir, defaults)
    load_checkpoint_file(path) -> dict   (weights_only torch.load / safetensors; argparse.Namespace allowed,
        since REPA's train.py stores its args in the checkpoint)

The weights directory is `weights_dir` or $GENBENCH_WEIGHTS, laid out as (file names as released):

    repa/last.pt                                   REPA SiT-XL/2, 4M iterations (generate.py: download_model('last.pt'),
                                                   a flat EMA state_dict; a train.py checkpoint {'model','ema',...} works too)
    sd-vae-ft-ema/  config.json + diffusion_pytorch_model.safetensors   (huggingface.co/stabilityai/sd-vae-ft-ema)
    sd-vae-ft-mse/  config.json + diffusion_pytorch_model.safetensors   (huggingface.co/stabilityai/sd-vae-ft-mse)
    lightningdit/lightningdit-xl-imagenet256-64ep.pt    (huggingface.co/hustvl/lightningdit-xl-imagenet256-64ep)
    lightningdit/lightningdit-xl-imagenet256-800ep.pt   (huggingface.co/hustvl/lightningdit-xl-imagenet256-800ep)
    vavae/vavae-imagenet256-f16d32-dinov2.pt       (huggingface.co/hustvl/vavae-imagenet256-f16d32-dinov2)
    vavae/latents_stats.pt                         (same repository: {'mean', 'std'} [1, 32, 1, 1])
    tarflow/afhq_model_8_768_8_8_0.07.pth          (ml-site.cdn-apple.com/models/tarflow/afhq256/, ml-tarflow README)

Which weights: REPA generate.py loads `['ema']` of a train.py checkpoint and the downloaded last.pt as is;
LightningDiT inference.py takes `checkpoint['ema']` when present, else the dict itself; VA-VAE
(tokenizer/autoencoder.py init_from_ckpt) takes `state_dict` without loss.* (and the frozen DINOv2); TARFlow's
sample.ipynb loads the flat state_dict. REPA samples with SD-VAE ft-EMA by default (generate.py --vae ema).

The generator's network is built from the architecture files and the registry module's presets, without the
frozen training-time encoder (DINOv2 is needed to train REPA / VA-VAE, not to sample from them). A file that
does not fit the architecture fails the strict load with the first mismatched keys named.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from baselines.api import BACKBONES, Backbone
from bench.errors import CorruptInputError, MissingInputError, OptionError

WEIGHTS_ENV = "GENBENCH_WEIGHTS"


@dataclass(frozen=True)
class ReleaseFile:
    path: str  # relative to the weights directory
    what: str
    source: str  # where to download it
    folder: bool = False  # a diffusers folder (config.json + weights)


@dataclass(frozen=True)
class Release:
    files: dict[str, ReleaseFile]  # role -> file
    preset: str  # our preset of the released architecture
    options: dict[str, Any] = field(default_factory=dict)
    notes: str = ""


def _sd_vae(kind: str) -> ReleaseFile:
    return ReleaseFile(
        f"sd-vae-ft-{kind}",
        f"SD-VAE ft-{kind.upper()} diffusers folder (config.json + diffusion_pytorch_model.safetensors)",
        f"https://huggingface.co/stabilityai/sd-vae-ft-{kind}",
        folder=True,
    )


_REPA_SIT = ReleaseFile(
    "repa/last.pt",
    "REPA SiT-XL/2 checkpoint (4M iterations, EMA weights)",
    "the Dropbox link of sihyun-yu/REPA utils.py download_model('last.pt') (README: pretrained SiT-XL/2)",
)
_VAVAE = ReleaseFile(
    "vavae/vavae-imagenet256-f16d32-dinov2.pt",
    "VA-VAE f16d32 checkpoint",
    "https://huggingface.co/hustvl/vavae-imagenet256-f16d32-dinov2/blob/main/vavae-imagenet256-f16d32-dinov2.pt",
)
_STATS = ReleaseFile(
    "vavae/latents_stats.pt",
    "VA-VAE latent statistics latents_stats.pt",
    "https://huggingface.co/hustvl/vavae-imagenet256-f16d32-dinov2/blob/main/latents_stats.pt",
)


def _lightningdit(ep: str) -> ReleaseFile:
    name = f"lightningdit-xl-imagenet256-{ep}"
    return ReleaseFile(f"lightningdit/{name}.pt", f"LightningDiT-XL/1 {ep} checkpoint",
                       f"https://huggingface.co/hustvl/{name}/blob/main/{name}.pt")  # fmt: skip


RELEASES: dict[str, dict[str, Release]] = {
    "repa": {
        "sit-xl2-4m": Release({"generator": _REPA_SIT, "vae": _sd_vae("ema")}, "XL/2",
                              notes="REPA generate.py defaults: SD-VAE ft-EMA, SDE 250 steps, CFG 1.8, interval 0.7"),
        "sit-xl2-4m-mse": Release({"generator": _REPA_SIT, "vae": _sd_vae("mse")}, "XL/2",
                                  notes="REPA generate.py --vae mse"),
    },
    "vavae_lightningdit": {
        ep: Release({"generator": _lightningdit(ep), "tokenizer": _VAVAE, "stats": _STATS}, "XL/1",
                    options={"release": ep}, notes=f"configs/reproductions/lightningdit_xl_vavae_f16d32_{ep}_cfg.yaml")
        for ep in ("800ep", "64ep")
    },
    "tarflow": {
        "afhq256": Release(
            {"generator": ReleaseFile("tarflow/afhq_model_8_768_8_8_0.07.pth", "TARFlow AFHQ 256 checkpoint",
                                      "https://ml-site.cdn-apple.com/models/tarflow/afhq256/afhq_model_8_768_8_8_0.07.pth")},
            "afhq256", notes="apple/ml-tarflow README / sample.ipynb: patch 8, 768 channels, 8x8 blocks, noise 0.07, 3 classes"),
    },
}  # fmt: skip
# TARFlow's public weights are AFHQ 256 (3 classes), not ImageNet; STARFlow's class-conditional ImageNet weights
# are not public (apple/ml-starflow README: T2I/T2V checkpoints "released soon"); FAE has none.
IMAGENET256_RELEASES = ("repa", "vavae_lightningdit")
DEFAULT_RELEASE = {"repa": "sit-xl2-4m", "vavae_lightningdit": "800ep", "tarflow": "afhq256"}


def _release(name: str, release: str | None) -> Release:
    if name not in RELEASES:
        have = ", ".join(sorted(RELEASES))
        raise OptionError(f"no released checkpoint is supported for backbone {name!r}; known: {have}")
    release = release or DEFAULT_RELEASE[name]
    if release not in RELEASES[name]:
        raise OptionError(f"unknown {name} release {release!r}; known: {', '.join(RELEASES[name])}")
    return RELEASES[name][release]


def weights_root(weights_dir: str | Path | None) -> Path:
    d = weights_dir or os.environ.get(WEIGHTS_ENV)
    if not d:
        raise MissingInputError(f"released weights: pass a weights directory or set {WEIGHTS_ENV}=PATH")
    return Path(d)


def _file_ok(p: Path, f: ReleaseFile) -> bool:
    if f.folder:
        return (p / "config.json").is_file() and any(
            (p / n).is_file() for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
        )
    return p.is_file()


def release_paths(names, weights_dir: str | Path | None = None,
                  releases: dict[str, str] | None = None) -> tuple[dict[str, dict[str, Path]], list[str]]:  # fmt: skip
    """(paths per backbone and role, one line per missing file with where to get it)."""
    root = weights_root(weights_dir)
    out, missing = {}, []
    for name in [names] if isinstance(names, str) else names:
        rel = _release(name, (releases or {}).get(name))
        out[name] = {}
        for role, f in rel.files.items():
            p = root / f.path
            out[name][role] = p
            if not _file_ok(p, f):
                line = f"- {f.what}: {p} ({'folder ' if f.folder else ''}not found; get it from {f.source})"
                if line not in missing:
                    missing.append(line)
    return out, missing


def check_release_files(names, weights_dir: str | Path | None = None,
                        releases: dict[str, str] | None = None) -> dict[str, dict[str, Path]]:  # fmt: skip
    """Every file the releases of `names` need, as paths; ONE MissingInputError listing each missing one."""
    paths, missing = release_paths(names, weights_dir, releases)
    if missing:
        root = weights_root(weights_dir)
        raise MissingInputError(
            f"released weights missing under {root} ({WEIGHTS_ENV}):\n" + "\n".join(missing)
        )
    return paths


# --- loading ---------------------------------------------------------------------------------------------------


def load_checkpoint_file(path: str | Path) -> dict:
    """A released checkpoint as a dict, never through plain pickle: safetensors, or torch.load(weights_only=True)
    with argparse.Namespace allowed (REPA's train.py saves its args in the checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        ValueError,
        AttributeError,
    ) as e:  # not torch, foreign globals
        raise CorruptInputError(
            f"{path}: not a loadable weights-only checkpoint ({type(e).__name__}: {e})"
        ) from None


def ema_state_dict(ckpt: dict) -> dict[str, torch.Tensor]:
    """The EMA weights of a checkpoint: `ckpt['ema']` (REPA / LightningDiT train.py layout) or the dict itself."""
    sd = ckpt.get("ema", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CorruptInputError(
            "checkpoint holds no state_dict of tensors (expected the weights or {'ema': ...})"
        )
    return sd


def strict_load(module: torch.nn.Module, sd: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """load_state_dict(strict=True), with ONE error naming the first mismatched keys when the file does not fit."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in sd and tuple(sd[k].shape) != tuple(v.shape)]  # fmt: skip
    if missing or unexpected or shapes:
        parts = []
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        ):
            if keys:
                parts.append(f"{len(keys)} {what} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")
        raise CorruptInputError(f"{path}: does not fit {arch} (strict load): " + "; ".join(parts))
    module.load_state_dict(sd, strict=True)


def _sampler_with(settings, **changes):
    """Sampler settings with some fields changed (None removes one): typed settings (`.replace`) or a dict."""
    if hasattr(settings, "replace") and not isinstance(settings, dict):
        return settings.replace(**changes)
    out = dict(settings)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def _set_protocols(bb: Backbone, paper, common) -> Backbone:
    """The evaluation protocols (Backbone.protocols, where the api has them): "paper" = the release's sampler
    exactly, "common" = the setting shared by all families."""
    if "protocols" in {f.name for f in dataclasses.fields(Backbone)}:
        bb.protocols = {"paper": paper, "common": common}
    return bb


def _registry_module(name: str):
    if name not in BACKBONES:
        raise OptionError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
    return importlib.import_module(BACKBONES[name].split(":")[0])


def _repa(paths, preset, num_classes, image_size, **_):
    from baselines.autoencoder import SDVAETokenizer
    from baselines.sit import SiT, SiT_configs
    from baselines.transport import FlowMatchingGenerator

    mod = _registry_module("repa")
    p = mod.PRESETS[preset]
    num_classes, image_size = num_classes or p["num_classes"], image_size or p["image_size"]
    tokenizer = SDVAETokenizer(paths["vae"])
    c, h, w = tokenizer.latent_shape(image_size)
    cfg = SiT_configs[p["sit"]]
    net = SiT(input_size=h, in_channels=c, num_classes=num_classes, z_dims=(p["z_dim"],),
              **{**cfg, "projector_dim": p["projector_dim"]})  # fmt: skip
    sd = ema_state_dict(load_checkpoint_file(paths["generator"]))
    if any(
        k.startswith("decoder_blocks.") for k in sd
    ):  # REPA generate.py --legacy: utils.load_legacy_checkpoints
        depth = cfg["encoder_depth"]
        sd = {(f"blocks.{int(k.split('.')[1]) + depth}." + k.split(".", 2)[2] if k.startswith("decoder_blocks.")
               else k): v for k, v in sd.items()}  # fmt: skip
    strict_load(net, sd, paths["generator"], f"SiT-{p['sit']} (REPA)")
    gen = FlowMatchingGenerator(
        net, (c, h, w), num_classes, proj_coeff=0.5, label_drop=mod.PAPER_RECIPE.label_drop
    )
    bb = Backbone(name="repa", family="repa_sit", tokenizer=tokenizer, generator=gen, recipe=mod.PAPER_RECIPE,
                  notes={"guidance": "CFG on all channels, interval t <= 0.7 (t=1 noise)"})  # fmt: skip
    return _set_protocols(bb, mod.PAPER_RECIPE.sampler, mod.PAPER_RECIPE.sampler)  # REPA guides all channels


def _vavae_tokenizer(ckpt: Path, stats: Path, config: str):
    """The released VA-VAE (strict) with its latents_stats.pt, frozen; no loss modules (not trained here)."""
    from baselines.vavae import VAVAETokenizer

    tok_sd = load_checkpoint_file(ckpt)
    tok_sd = tok_sd.get("state_dict", tok_sd)
    proj = tok_sd.get("linear_proj.weight")
    vf_dim = int(proj.shape[0]) if proj is not None else 1024  # reverse_proj: latent -> foundation width
    tokenizer = VAVAETokenizer(config, vf_dim, perceptual_weight=0.0)
    try:
        tokenizer.load_official(ckpt, stats)
    except RuntimeError as e:  # load_state_dict(strict=True) mismatch
        raise CorruptInputError(
            f"{ckpt}: does not fit VA-VAE {config} (strict load): {str(e)[:400]}"
        ) from None
    tokenizer.trainable = False
    return tokenizer.requires_grad_(False)


def _vavae_lightningdit(
    paths, preset, num_classes, image_size, release="800ep", official_cfg_quirk=True, **_
):
    from baselines.lightningdit import LightningDiT_models
    from baselines.transport import FlowMatchingGenerator

    mod = _registry_module("vavae_lightningdit")
    p = mod.PRESETS[preset]
    num_classes, image_size = num_classes or p["num_classes"], image_size or p["image_size"]
    common = mod.paper_recipe(release, False).sampler  # CFG on every channel
    paper = _sampler_with(common, guidance_channels=3)  # the release: CFG on latent channels 0-2 only
    recipe = dataclasses.replace(
        mod.paper_recipe(release, False), sampler=paper if official_cfg_quirk else common
    )
    tokenizer = _vavae_tokenizer(paths["tokenizer"], paths["stats"], p["vavae"])
    c, h, w = tokenizer.latent_shape(image_size)
    net = LightningDiT_models[p["dit"]](input_size=h, in_channels=c, num_classes=num_classes)
    strict_load(net, ema_state_dict(load_checkpoint_file(paths["generator"])), paths["generator"],
                f"LightningDiT-{p['dit']}")  # fmt: skip
    gen = FlowMatchingGenerator(net, (c, h, w), num_classes, net_time="data_at_1", t_sampling="logit_normal",
                                cos_loss_weight=1.0, label_drop=recipe.label_drop)  # fmt: skip
    bb = Backbone(name="vavae_lightningdit", family="vavae_lightningdit", tokenizer=tokenizer, generator=gen,
                  recipe=recipe, notes={"guidance": "official quirk: CFG on the first 3 latent channels only"
                                        if official_cfg_quirk else "CFG on all latent channels"})  # fmt: skip
    return _set_protocols(bb, paper, common)


def _tarflow(paths, preset, num_classes, image_size, **_):
    mod = _registry_module("tarflow")
    bb = mod.build_backbone(preset, num_classes=num_classes, image_size=image_size)
    model = bb.generator.model
    strict_load(model, ema_state_dict(load_checkpoint_file(paths["generator"])), paths["generator"],
                f"TARFlow {preset}")  # fmt: skip
    return bb


_LOADERS = {"repa": _repa, "vavae_lightningdit": _vavae_lightningdit, "tarflow": _tarflow}


def load_release(backbone_name: str, weights_dir: str | Path | None = None, *, release: str | None = None,
                 preset: str | None = None, num_classes: int | None = None, image_size: int | None = None,
                 device: str = "cpu", **options) -> Backbone:  # fmt: skip
    """A Backbone holding the released weights (strict load), in eval mode, ready for `bench.sample.generate`.

    `preset` defaults to the released architecture (XL/2, XL/1, afhq256); tests pass "tiny" with tiny files in the
    official formats. `options` go to the family loader (vavae_lightningdit: official_cfg_quirk=True, the paper
    protocol's sampler; False guides every channel)."""
    rel = _release(backbone_name, release)
    paths = check_release_files(backbone_name, weights_dir, {backbone_name: release} if release else None)
    bb = _LOADERS[backbone_name](paths[backbone_name], preset or rel.preset, num_classes, image_size,
                                 **{**rel.options, **options})  # fmt: skip
    bb.notes = {**bb.notes, "release": release or DEFAULT_RELEASE[backbone_name], "release_notes": rel.notes,
                "weights": {k: str(v) for k, v in paths[backbone_name].items()}}  # fmt: skip
    bb.tokenizer.to(device).eval()
    bb.generator.to(device).eval()
    return bb


# --- released tokenizers alone (to train generators on their latents: the imagenet256 latent cache) ---------

TOKENIZERS: dict[str, dict[str, ReleaseFile]] = {
    "sd-vae-ft-mse": {"vae": _sd_vae("mse")},  # REPA trains on ft-MSE latents (train.py:176)
    "sd-vae-ft-ema": {"vae": _sd_vae("ema")},
    "vavae-f16d32": {"tokenizer": _VAVAE, "stats": _STATS},
}


def load_tokenizer(name: str, weights_dir: str | Path | None = None, *, config: str = "f16d32", device="cpu"):
    """A released tokenizer from the weights directory, frozen and in eval mode: "sd-vae-ft-mse",
    "sd-vae-ft-ema" (diffusers folders) or "vavae-f16d32" (+ latents_stats.pt). `config` is the VA-VAE
    architecture (tests pass "tiny"). Missing files: one MissingInputError listing each."""
    from baselines.autoencoder import SDVAETokenizer

    if name not in TOKENIZERS:
        raise OptionError(f"unknown released tokenizer {name!r}; known: {', '.join(TOKENIZERS)}")
    root = weights_root(weights_dir)
    paths = {role: root / f.path for role, f in TOKENIZERS[name].items()}
    missing = [f"- {f.what}: {paths[r]} (not found; get it from {f.source})" for r, f in TOKENIZERS[name].items()
               if not _file_ok(paths[r], f)]  # fmt: skip
    if missing:
        raise MissingInputError(
            f"released tokenizer {name} missing under {root} ({WEIGHTS_ENV}):\n" + "\n".join(missing)
        )
    tok = (
        SDVAETokenizer(paths["vae"])
        if "vae" in paths
        else _vavae_tokenizer(paths["tokenizer"], paths["stats"], config)
    )
    return tok.to(device).eval()
