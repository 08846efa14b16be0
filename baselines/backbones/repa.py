"""Registry entry "repa": REPA + SiT (Yu et al., ICLR 2025; sihyun-yu/REPA): SiT trained with the flow-matching loss plus
representation alignment: the hidden state after block `encoder_depth` goes through a projector MLP and is
pulled towards frozen-encoder patch features by a negative cosine (coefficient 0.5).

Recipe of the official release (train.py defaults + README commands): AdamW lr 1e-4 constant, betas (0.9, 0.999),
no weight decay, batch 256, fp16 mixed precision, EMA 0.9999, grad clip 1.0, label drop 0.1, SD-VAE ft-MSE latents
(x 0.18215), DINOv2 ViT-B/14 targets; sampling SDE Euler-Maruyama 250 steps, CFG 1.8 with guidance interval
t <= 0.7 (guides all channels).
"""

from __future__ import annotations

from baselines.api import Backbone, FlowMatchingSampler, Recipe
from baselines.sit import SiT, SiT_configs
from baselines.transport import FlowMatchingGenerator
from bench.errors import OptionError

PAPER_RECIPE = Recipe(
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.0,
    batch_size=256,
    epochs=800,
    lr_schedule="constant",
    ema_decay=0.9999,
    grad_clip=1.0,
    label_drop=0.1,
    mixed_precision="fp16",
    posterior="sample",  # train.py:296: a fresh posterior draw every step
    latent_norm="scale",  # train.py:179-184: SD-VAE latents x 0.18215
    release_labels="random",  # generate.py:122
    release_uint8="truncate",  # generate.py:151-154
    sampler=FlowMatchingSampler(mode="sde", steps=250, guidance=1.8, guidance_interval=(0.0, 0.7)),
    source="sihyun-yu/REPA train.py defaults, README (SiT-XL/2, 4M iterations ~ 800 epochs), generate.py (cfg 1.8, "
    "guidance_high 0.7, SDE 250); every setting's line: reports/recipes.md",
)
# tiny (CPU suites, ours): the stand-in tokenizer has no fixed scale, so its latents keep the harness's per-channel
# statistics and posterior mean, as before
TINY_RECIPE = PAPER_RECIPE.replace(
    posterior="mean", latent_norm="per_channel", release_labels="equal", release_uint8="round",
    source="tiny CPU preset (ours); REPA's optimiser and sampler",
)  # fmt: skip


def paper_setups() -> dict[str, tuple[Recipe, dict]]:
    """Paper presets -> (recipe, protocols), what build_backbone uses and `invoke recipes` prints."""
    return {"XL/2": (PAPER_RECIPE, protocols(PAPER_RECIPE))}


def protocols(recipe: Recipe) -> dict:
    # REPA guides every channel, so its released sampler is also its common one
    return {"paper": recipe.sampler, "common": recipe.sampler}


PRESETS = {
    # preset: (SiT config, image size, latent channels, encoder)
    "XL/2": dict(
        sit="XL/2", image_size=256, num_classes=1000, encoder="dinov2-vit-b14", z_dim=768, projector_dim=2048
    ),
    "tiny": dict(sit="tiny", image_size=32, num_classes=8, encoder="standin", z_dim=64, projector_dim=256),
}


def sd_vae_tokenizer(preset: str, sd_vae: str | None, sd_vae_decoder: str | None, who: str):
    """REPA's tokenizer (also plain SiT's): the shared SD-VAE stand-in for tiny, else the frozen SD-VAE of the local
    diffusers folder `sd_vae`, decoding with `sd_vae_decoder`'s decoder when given."""
    from baselines.autoencoder import SDVAETokenizer, sd_vae_standin

    if preset == "tiny":
        return sd_vae_standin("tiny-f4")
    if sd_vae is None:
        raise FileNotFoundError(
            f"{who} paper preset needs a local SD-VAE ft-MSE diffusers folder (--sd-vae PATH)"
        )
    return SDVAETokenizer(sd_vae, decoder_folder=sd_vae_decoder)


def build_backbone(
    preset: str = "tiny",
    *,
    num_classes: int | None = None,
    image_size: int | None = None,
    sd_vae: str | None = None,
    sd_vae_decoder: str | None = None,
    encoder_weights: str | None = None,
) -> Backbone:
    """XL/2: SiT-XL/2 on the frozen SD-VAE of the local diffusers folder `sd_vae` (the release trains on ft-MSE
    latents, train.py:176); `sd_vae_decoder` decodes samples with another folder's decoder (the release's FID
    samples use ft-EMA, generate.py:88, 193). tiny: the stand-in tokenizer and encoder."""
    from baselines.encoders import build_encoder

    if preset not in PRESETS:
        raise OptionError(f"unknown REPA preset {preset!r}; known: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    num_classes = num_classes or p["num_classes"]
    image_size = image_size or p["image_size"]
    tokenizer = sd_vae_tokenizer(preset, sd_vae, sd_vae_decoder, "REPA")
    c, h, w = tokenizer.latent_shape(image_size)
    cfg = SiT_configs[p["sit"]]
    grid = h // cfg["patch_size"]
    if preset == "tiny":
        encoder = build_encoder("standin", dim=p["z_dim"], grid=grid)
    else:
        encoder = build_encoder(p["encoder"], weights=encoder_weights)
    # the projector's width follows the encoder's, as REPA's train.py (z_dims = [encoder.embed_dim])
    z_dim = encoder.dim if preset != "tiny" else p["z_dim"]
    net = SiT(
        input_size=h,
        in_channels=c,
        num_classes=num_classes,
        z_dims=(z_dim,),
        **{**cfg, "projector_dim": p["projector_dim"]},
    )
    recipe = TINY_RECIPE if preset == "tiny" else PAPER_RECIPE
    generator = FlowMatchingGenerator(
        net, (c, h, w), num_classes, proj_coeff=0.5, label_drop=recipe.label_drop
    )
    decoder = "stand-in (trained in stage 1)" if preset == "tiny" else (
        f"decoder of {sd_vae_decoder} (the release decodes with ft-EMA), encoder of {sd_vae}" if sd_vae_decoder
        else f"{sd_vae} for encoding and decoding (the release decodes with ft-EMA: pass sd_vae_decoder)")  # fmt: skip
    return Backbone(
        name="repa",
        family="repa_sit",
        tokenizer=tokenizer,
        generator=generator,
        recipe=recipe,
        encoder=encoder,
        protocols=protocols(recipe),
        notes={
            "guidance": "CFG on all channels, interval t <= 0.7 (t=1 noise)",
            "alignment": f"block {cfg['encoder_depth']}, coefficient 0.5",
            "decoder": decoder,
            "release_fid": f"labels {recipe.release_labels}, uint8 {recipe.release_uint8} (generate.py:122, 151-154)",
        },
    )
