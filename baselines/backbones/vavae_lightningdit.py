"""Registry entry "vavae_lightningdit": VA-VAE tokenizer (baselines/vavae.py) + LightningDiT generator
(baselines/lightningdit.py) with the released recipe and sampler (hustvl/LightningDiT)."""

from __future__ import annotations

import os

from baselines.api import Backbone, FlowMatchingSampler, Recipe
from baselines.autoencoder import small_posterior_init
from baselines.vavae import LONG_PHASES, VAVAE_CONFIGS, VAVAETokenizer
from bench.errors import OptionError

# Official time shift: the released sampler integrates t = 0 (noise) -> 1 on linspace(0, 1, 250) mapped by
# t' = s t / (1 + (s - 1) t) with s = 0.3 (transport/integrators.py). In the common t = 1-noise convention
# (tau = 1 - t) that is tau' = S tau / (1 + (S - 1) tau) with S = 1 / 0.3, i.e. baselines.transport.shift_time.
OFFICIAL_TIMESTEP_SHIFT = 0.3
# configs/reproductions/lightningdit_xl_vavae_f16d32_{64ep,800ep}_cfg.yaml: cfg scale and cfg_interval_start
# (guidance off while t < start, t = 0 noise -> on for tau <= 1 - start).
RELEASES = {"64ep": dict(epochs=64, guidance=10.0, cfg_interval_start=0.10),
            "800ep": dict(epochs=800, guidance=6.7, cfg_interval_start=0.125)}  # fmt: skip

PRESETS = {
    # preset: LightningDiT model, VA-VAE config, image size, classes, foundation encoder
    "XL/1": dict(dit="XL/1", vavae="f16d32", image_size=256, num_classes=1000, encoder="dinov2-vit-l14"),
    "tiny": dict(dit="tiny/2", vavae="tiny", image_size=32, num_classes=8, encoder="standin"),
}


def paper_recipe(release: str = "800ep", official_cfg_quirk: bool = True) -> Recipe:
    """The release's recipe; its sampler is the `paper` protocol (CFG on latent channels 0-2 only, as released,
    models/lightningdit.py:428-432); official_cfg_quirk=False guides every channel at the same scale."""
    if release not in RELEASES:
        raise OptionError(f"unknown LightningDiT release {release!r}; known: {', '.join(RELEASES)}")
    r = RELEASES[release]
    sampler = FlowMatchingSampler(
        mode="ode",
        steps=249,  # num_sampling_steps 250 = 250 grid points of torchdiffeq's fixed-grid Euler = 249 steps
        time_shift=1.0 / OFFICIAL_TIMESTEP_SHIFT,
        guidance=r["guidance"],
        guidance_interval=(0.0, 1.0 - r["cfg_interval_start"]),
        guidance_channels=3 if official_cfg_quirk else None,
    )
    return Recipe(
        lr=2e-4, betas=(0.9, 0.95), weight_decay=0.0, batch_size=1024, epochs=r["epochs"], lr_schedule="constant",
        ema_decay=0.9999, grad_clip=None, label_drop=0.1, mixed_precision="bf16", sampler=sampler,
        posterior="sample_once", hflip=0.5, latent_norm="released",
        # the 800-epoch run switches logit-normal t off "at the mid of training" (config_details.yaml:59-61)
        logit_normal_until_epoch=r["epochs"] / 2 if release == "800ep" else None,
        release_labels="random", release_uint8="round",
        # VA-VAE: the released tokenizer's 100 + 15 + 15 epochs (f16d32_vfdinov2_long.yaml), no gradient clipping
        stage1_epochs=130, stage1_lr=1e-4, stage1_batch_size=256, stage1_betas=(0.5, 0.9), stage1_grad_clip=None,
        source=(f"hustvl/LightningDiT configs/reproductions/lightningdit_xl_vavae_f16d32_{release}_cfg.yaml, train.py, "
                "run_train.sh, datasets/img_latent_dataset.py, extract_features.py; VA-VAE: "
                "vavae/configs/f16d32_vfdinov2_long.yaml; every setting's line: reports/recipes.md"),
    )  # fmt: skip


# tiny's tokenizer: FAE tiny's small PatchGAN (16 filters, 2 layers; the default (64, 3) cost 2.5x the autoencoder's
# own step), on from step 96 of the smoke suite's 384. Measured (smoke extractor, batch 16, 12 epochs, one seed each;
# short GAN runs are volatile): no GAN rFID 203 / PSNR 19.3; (64, 3) from 192: 131 / 17.9; (16, 2) from 192:
# 224 / 19.1; (16, 2) from 96: 50.7 / 19.8, at 199 s of one core (the (64, 3) GAN: about 450 s).
TINY_TOKENIZER = dict(disc_start=96, disc_ndf=16, disc_layers=2)


def tiny_recipe(release: str = "800ep", official_cfg_quirk: bool = False) -> Recipe:
    """tiny (CPU suites, ours): the release's optimiser and sampler structure, the harness's earlier data handling
    (per-channel statistics, posterior mean, no flips) and a clipped stage 1, which the short smoke runs need."""
    return paper_recipe(release, official_cfg_quirk).replace(
        posterior="mean", hflip=0.0, latent_norm="per_channel", logit_normal_until_epoch=None,
        release_labels="equal", stage1_epochs=50, stage1_grad_clip=1.0, source="tiny CPU preset (ours)",
    )  # fmt: skip


def common_guidance(paper_scale: float, channels: int, guided: int = 3) -> float:
    """The `common` protocol's all-channel CFG scale (ours; nobody tuned one): the scale whose extra guidance
    (w - 1) (v_c - v_u) has the same norm over all `channels` as the release's over its `guided` channels,
    assuming channels of equal size: 1 + (w - 1) sqrt(guided / channels). 800ep: 6.7 -> 2.75; 64ep: 10 -> 3.76
    (cf. FAE's all-channel 2.5 with LightningDiT-XL/1 on a latent of the same 16x16x32 shape)."""
    return 1.0 + (paper_scale - 1.0) * (guided / channels) ** 0.5


def protocols(recipe: Recipe, channels: int) -> dict[str, FlowMatchingSampler]:
    """paper: the release's sampler, quirk included (CFG on latent channels 0-2); common: CFG on every channel at
    `common_guidance`'s scale, same steps, shift and interval."""
    s = recipe.sampler
    return {
        "paper": s.replace(guidance_channels=3),
        "common": s.replace(guidance_channels=None, guidance=round(common_guidance(s.guidance, channels), 4)),
    }


def paper_setups() -> dict[str, tuple[Recipe, dict]]:
    """Paper presets -> (recipe, protocols), what build_backbone uses and `invoke recipes` prints."""
    out = {}
    for release in RELEASES:
        r = paper_recipe(release)
        out[f"XL/1 {release}"] = (r, protocols(r, 32))
    return out


def build_backbone(preset: str = "tiny", *, num_classes: int | None = None, image_size: int | None = None,
                   release: str = "800ep", official_cfg_quirk: bool | None = None, vavae_ckpt: str | None = None,
                   latent_stats: str | None = None, encoder_weights: str | None = None,
                   perceptual: str = "auto", vgg_path: str | None = None) -> Backbone:  # fmt: skip
    """`vavae_lightningdit`. tiny: VA-VAE tiny (32 px -> 8x8x8) aligned to the stand-in encoder + LightningDiT
    tiny/2. XL/1: VA-VAE f16d32 (`vavae_ckpt`/`latent_stats` load the release; DINOv2 ViT-L/14 is built only when
    `encoder_weights` or $GENBENCH_WEIGHTS is given) + LightningDiT-XL/1."""
    from baselines.encoders import build_encoder
    from baselines.lightningdit import LightningDiT_models
    from baselines.transport import FlowMatchingGenerator

    if preset not in PRESETS:
        raise OptionError(f"unknown vavae_lightningdit preset {preset!r}; known: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    num_classes = num_classes or p["num_classes"]
    image_size = image_size or p["image_size"]
    if official_cfg_quirk is None:  # the paper preset samples as released; tiny (ours) guides every channel
        official_cfg_quirk = preset != "tiny"
    recipe = (
        tiny_recipe(release, official_cfg_quirk)
        if preset == "tiny"
        else paper_recipe(release, official_cfg_quirk)
    )

    encoder = None
    if preset == "tiny":
        dd, _e = VAVAE_CONFIGS["tiny"]
        grid = image_size // 2 ** (len(dd["ch_mult"]) - 1)
        encoder = build_encoder("standin", dim=32, grid=grid)
        vf_dim = encoder.dim
    else:
        vf_dim = 1024
        if encoder_weights is not None or os.environ.get("GENBENCH_WEIGHTS"):
            encoder = build_encoder(p["encoder"], weights=encoder_weights, preprocess="vavae")
            vf_dim = encoder.dim
    tokenizer = VAVAETokenizer(p["vavae"], vf_dim, perceptual=perceptual, vgg_path=vgg_path,
                               **(TINY_TOKENIZER if preset == "tiny" else {"phases": LONG_PHASES}))  # fmt: skip
    if preset == "tiny":
        small_posterior_init(tokenizer.ae)  # as the SD-VAE stand-in (baselines/autoencoder.py)
    if vavae_ckpt is not None:
        tokenizer.load_official(vavae_ckpt, latent_stats)
        tokenizer.trainable = False  # the released tokenizer is used as is
        tokenizer.requires_grad_(False)
    c, h, w = tokenizer.latent_shape(image_size)
    net = LightningDiT_models[p["dit"]](input_size=h, in_channels=c, num_classes=num_classes)
    generator = FlowMatchingGenerator(net, (c, h, w), num_classes, net_time="data_at_1", t_sampling="logit_normal",
                                      cos_loss_weight=1.0, label_drop=recipe.label_drop)  # fmt: skip
    protos = protocols(recipe, c)
    guidance_note = (
        ("recipe sampler = paper protocol: CFG on latent channels 0-2 only, as released" if official_cfg_quirk
         else "recipe sampler: CFG on all latent channels at the release's scale (official_cfg_quirk=False)")
        + f"; common protocol: all channels at {protos['common'].guidance:g} (same guidance norm, ours)"
    )  # fmt: skip
    return Backbone(
        name="vavae_lightningdit",
        family="vavae_lightningdit",
        tokenizer=tokenizer,
        generator=generator,
        recipe=recipe,
        encoder=encoder,
        # paper: the release's sampler with its quirk (CFG on latent channels 0-2 only); common: CFG on all channels
        protocols=protos,
        notes={
            "guidance": guidance_note,
            "guidance_interval": f"released {release}: cfg {RELEASES[release]['guidance']}, on for t <= "
            f"{1 - RELEASES[release]['cfg_interval_start']:.3f} (t=1 noise), per step for the whole batch",
            "time_shift": f"official timestep_shift {OFFICIAL_TIMESTEP_SHIFT} (t=0 noise) = shift_time "
            f"{1 / OFFICIAL_TIMESTEP_SHIFT:.4f} (t=1 noise)",
            "perceptual": tokenizer.loss_fn.perceptual_kind,
            "discriminator": "own PatchGAN (LDM NLayerDiscriminator keys), hinge loss",
            "vf_encoder": "stand-in (not DINOv2)" if preset == "tiny" else p["encoder"],
            "tokenizer": "released VA-VAE checkpoint"
            if vavae_ckpt
            else "trained in stage 1"
            + ("" if preset == "tiny" else " (100 + 15 + 15 epoch loss phases of f16d32_vfdinov2_long.yaml)"),
            "latents": f"posterior {recipe.posterior}, hflip {recipe.hflip:g}, normalisation {recipe.latent_norm}",
            "t_sampling": "logit-normal"
            + (
                f" until epoch {recipe.logit_normal_until_epoch:g}, then uniform "
                "(config_details.yaml: off 'at the mid of training'; the step is ours)"
                if recipe.logit_normal_until_epoch
                else " throughout"
            ),  # fmt: skip
            "release_fid": f"labels {recipe.release_labels} (inference.py:203), uint8 {recipe.release_uint8} "
            "(tokenizer/vavae.py:81)",
        },
    )
