"""Registry entry "fae": FAE tokenizer (baselines/fae.py) + a flow-matching generator (LightningDiT-XL/1 or SiT)
on its 16x16x32 latent; the paper's recipe and sampler, and the tiny CPU preset. See baselines/fae.py's docstring
for the choices the paper leaves open."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from baselines.api import Backbone, FlowMatchingSampler, Recipe
from baselines.fae import FAEConfig, FAETokenizer
from bench.errors import OptionError

GUIDANCE_SCHEDULE = ((0.9, 1.0, 0.9), (0.0, 0.7, 2.5))  # (t_lo, t_hi, scale), t = 1 noise; 1.0 elsewhere
PAPER_TIMESTEP_SHIFT = 0.4  # LightningDiT form (t = 0 noise); = shift_time 1 / 0.4 with t = 1 noise

PAPER_RECIPE = Recipe(
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.0,
    batch_size=512,
    epochs=800,
    lr_schedule="constant",
    ema_decay=0.9999,
    grad_clip=None,
    label_drop=0.1,
    mixed_precision="bf16",
    sampler=FlowMatchingSampler(
        mode="ode", steps=250, guidance_schedule=GUIDANCE_SCHEDULE, time_shift=1 / PAPER_TIMESTEP_SHIFT
    ),
    # encoder + feature decoder: ~1M iterations at batch 1024 (= 799 epochs), cosine with 1000 warmup steps
    stage1_epochs=799,
    stage1_lr=1e-4,
    stage1_batch_size=1024,
    stage1_betas=(0.9, 0.999),
    stage1_lr_schedule="cosine",
    stage1_warmup_steps=1000,
    source="arXiv 2512.07829 (FAE) appendix as quoted in issue #12; every setting's source: reports/recipes.md",
)
# the no-CFG alternative: Euler-Maruyama with w_t = sigma_t, SiT's diffusion form 'sigma' (willisma/SiT
# train_utils.py:25-27, transport/path.py:57), which is baselines.transport.euler_maruyama's g = 2t
SDE_SAMPLER = FlowMatchingSampler(mode="sde", steps=250, guidance=1.0, time_shift=1 / PAPER_TIMESTEP_SHIFT)

TINY_RECIPE = PAPER_RECIPE.replace(
    lr=5e-4, batch_size=64, epochs=40, ema_decay=0.999, mixed_precision="no",
    sampler=dict(steps=50), stage1_epochs=40, stage1_lr=1e-3, stage1_batch_size=64,
    stage1_lr_schedule="constant", stage1_warmup_steps=0,
    source="tiny CPU preset (ours); sampler structure as the paper's",
)  # fmt: skip


def protocols(recipe: Recipe) -> dict:
    # FAE guides every channel, so its paper sampler is also its common one
    return {"paper": recipe.sampler, "common": recipe.sampler}


def paper_setups() -> dict[str, tuple[Recipe, dict]]:
    """Paper presets -> (recipe, protocols), what build_backbone uses and `invoke recipes` prints."""
    return {"paper": (PAPER_RECIPE, protocols(PAPER_RECIPE))}


GENERATORS = {
    # LightningDiT-XL/1 (VA-VAE release settings: SwiGLU, RoPE, RMSNorm, no qk-norm), patch 1 on 16x16x32
    "paper": dict(hidden_size=1152, depth=28, num_heads=16, mlp_ratio=4.0),
    "tiny": dict(hidden_size=128, depth=4, num_heads=4, mlp_ratio=4.0),
}


def _generator_net(
    arch: str, size: dict, latent_shape: tuple[int, int, int], num_classes: int, label_drop: float
):
    c, h, _ = latent_shape
    if arch == "lightningdit":
        from baselines.lightningdit import LightningDiT

        net = LightningDiT(input_size=h, patch_size=1, in_channels=c, class_dropout_prob=label_drop, num_classes=num_classes,
                           learn_sigma=False, use_qknorm=False, use_swiglu=True, use_rope=True, use_rmsnorm=True,
                           wo_shift=False, **size)  # fmt: skip
        return net, "data_at_1"
    if arch == "sit":
        from baselines.sit import SiT

        net = SiT(input_size=h, patch_size=1, in_channels=c, num_classes=num_classes, class_dropout_prob=label_drop,
                  hidden_size=size["hidden_size"], decoder_hidden_size=size["hidden_size"], depth=size["depth"],
                  num_heads=size["num_heads"], mlp_ratio=size["mlp_ratio"], encoder_depth=1, z_dims=(8,), projector_dim=16)  # fmt: skip
        return net, "noise_at_1"
    raise OptionError(f"unknown FAE generator {arch!r}; known: lightningdit, sit")


def build_backbone(
    preset: str = "tiny",
    *,
    num_classes: int | None = None,
    image_size: int | None = None,
    latent_dim: int | None = None,
    encoder_weights: str | None = None,
    generator: str = "lightningdit",
    device: str | None = None,
    **options: Any,
) -> Backbone:
    """FAE + flow-matching generator. preset "paper" (DINOv2-g/14, LightningDiT-XL/1, ImageNet 256) or "tiny"
    (stand-in encoder, 32 px, 8 classes). options: FAEConfig fields (None values are ignored). generator:
    "lightningdit" (LightningDiT-XL/1 at paper size) or "sit" (SiT-XL/1, the paper's other generator; REPA's
    class, its projector unused). device="meta" builds shapes only (no encoder is built then)."""
    from baselines.encoders import build_encoder
    from baselines.transport import FlowMatchingGenerator

    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(FAEConfig)})
    if unknown:
        known = ["num_classes", "image_size", "latent_dim", "encoder_weights", "generator", "device"]
        known += [f.name for f in dataclasses.fields(FAEConfig)]
        raise OptionError(f"unknown fae build option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    overrides = {k: v for k, v in options.items() if v is not None}
    if latent_dim is not None:
        overrides["latent_dim"] = latent_dim
    cfg = FAEConfig.from_preset(preset, **overrides)
    if image_size is not None and image_size != cfg.image_size:
        # paper: DINOv2 always sees 224 px (16x16 tokens), so the pixel patch grows with the image; tiny: the
        # stand-in's token grid follows the image at a fixed patch (f8)
        fixed = cfg.grid if preset == "paper" else cfg.patch_size
        if image_size % fixed:
            raise ValueError(f"FAE {preset}: image_size {image_size} is not a multiple of {fixed}")
        key = "patch_size" if preset == "paper" else "grid"
        cfg = dataclasses.replace(cfg, **{key: image_size // fixed})
    num_classes = num_classes or (8 if preset == "tiny" else 1000)
    recipe = TINY_RECIPE if preset == "tiny" else PAPER_RECIPE
    if device == "meta":
        encoder, enc_name = None, "none (meta build)"
    elif preset == "tiny":
        encoder, enc_name = build_encoder("standin", dim=cfg.feature_dim, grid=cfg.grid), "standin"
    else:  # first, so a missing weights file fails before the 0.5B-parameter tokenizer is built
        encoder, enc_name = build_encoder("dinov2-vit-g14", weights=encoder_weights), "dinov2-vit-g14"
        cfg = dataclasses.replace(cfg, feature_dim=encoder.dim)  # the features FAE encodes are the encoder's
    with torch.device(device or "cpu"):
        tokenizer = FAETokenizer(cfg)
        latent = tokenizer.latent_shape(cfg.image_size)
        net, net_time = _generator_net(generator, GENERATORS[preset], latent, num_classes, recipe.label_drop)
    # no loss weight: the paper's w_t = sigma_t (SiT's notation) is the SDE diffusion coefficient (SDE_SAMPLER);
    # SiT trains velocity models unweighted (willisma/SiT transport/transport.py:139-140)
    gen = FlowMatchingGenerator(net, latent, num_classes, net_time=net_time, label_drop=recipe.label_drop)
    perceptual = (
        "none"
        if cfg.perceptual_weight <= 0
        else ("random-features" if device == "meta" else tokenizer.perceptual_loss().kind)
    )
    notes = {
        "encoder": enc_name,
        "latent": f"{latent[1]}x{latent[2]}x{latent[0]}",
        "generator": f"{generator} patch 1, linear interpolant, v-prediction, unweighted loss (w_t = sigma_t is the "
        "SDE's diffusion coefficient, SiT's 'sigma' form = our Euler-Maruyama g = 2t)",
        "time_shift_training": "none: the shift is a sampling setting, as in LightningDiT's code (training t uniform)",
        "encoder_activation": "none between the attention layer and the projection (the paper's figure could not be "
        "read here: unverified)",
        "guidance": "ODE Euler 250: CFG 0.9 on t in [0.9,1], 2.5 on t in [0,0.7], 1 elsewhere (t=1 noise), all channels",
        "time_shift": f"paper {PAPER_TIMESTEP_SHIFT} read as LightningDiT's (t=0 noise) = shift_time {1 / PAPER_TIMESTEP_SHIFT:g} (t=1 noise)",
        "sampler_alternative": "SDE Euler-Maruyama 250 steps, no CFG, same shift (fae.SDE_SAMPLER)",
        "perceptual": perceptual,
        "gan": f"PatchGAN hinge, weight {cfg.disc_weight} x adaptive, from {cfg.disc_start:.0%} of stage 1"
        if cfg.disc_weight > 0
        else "off",
        "stage1": f"steps < {cfg.stage_split:.0%}: enc + feature dec (L2 + {cfg.kl_weight:g} KL) and pixel dec on features + "
        f"N(0, {cfg.pixel_noise_sigma}^2); rest: pixel dec on feature-decoder outputs",
        "stage1_schedule": f"{recipe.stage1_epochs} epochs at batch {recipe.stage1_batch_size}, {recipe.stage1_lr_schedule}"
        f" lr {recipe.stage1_lr:g}, {recipe.stage1_warmup_steps} warmup steps"
        + (
            ""
            if preset == "tiny"
            else "; paper: enc + feature dec 1M its @1024, pixel dec 1M its @512, one after "
            "the other; ours: one joint run, so enc + feature dec get half the paper's iterations and the pixel "
            "decoder twice its images"
        ),  # fmt: skip
        "open_choices": "no position table in the encoder; per-element-mean losses; beta=kl_weight ours; L1 pixel loss; "
        "posterior samples feed the decoders; see baselines/fae.py docstring",
    }
    return Backbone(
        name="fae",
        family="fae",
        tokenizer=tokenizer,
        generator=gen,
        recipe=recipe,
        encoder=encoder,
        notes=notes,
        protocols=protocols(recipe),
    )
