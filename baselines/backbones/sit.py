"""Registry entry "sit": plain SiT, the reference of REPA's speed-up claim (REPA, Yu et al., ICLR 2025, reports
SiT-XL/2 + REPA reaching plain SiT-XL/2's 7M-iteration FID 17.5x sooner). The same model, tokenizer and recipe as
"repa" (baselines/backbones/repa.py) without the representation alignment: no projector heads, no frozen encoder,
the flow-matching loss alone (REPA's `proj_coeff` 0). Sharing REPA's tokenizer (the SD-VAE stand-in's shared key
in tiny suites, SD-VAE ft-MSE at paper scale) and its sampler, the two differ by the alignment term only.
"""

from __future__ import annotations

from baselines.api import Backbone
from baselines.backbones.repa import PAPER_RECIPE, PRESETS, TINY_RECIPE, protocols, sd_vae_tokenizer
from baselines.sit import SiT, SiT_configs
from baselines.transport import FlowMatchingGenerator
from bench.errors import OptionError

RECIPE = PAPER_RECIPE.replace(source="REPA's recipe (baselines/backbones/repa.py) without the alignment loss")
TINY = TINY_RECIPE.replace(source="REPA's tiny recipe without the alignment loss")


def paper_setups() -> dict:
    """Paper presets -> (recipe, protocols), what build_backbone uses and `invoke recipes` prints."""
    return {"XL/2": (RECIPE, protocols(RECIPE))}


def build_backbone(
    preset: str = "tiny",
    *,
    num_classes: int | None = None,
    image_size: int | None = None,
    sd_vae: str | None = None,
    sd_vae_decoder: str | None = None,
) -> Backbone:
    if preset not in PRESETS:
        raise OptionError(f"unknown SiT preset {preset!r}; known: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    num_classes = num_classes or p["num_classes"]
    image_size = image_size or p["image_size"]
    tokenizer = sd_vae_tokenizer(preset, sd_vae, sd_vae_decoder, "SiT")  # REPA's, decoding option included
    c, h, w = tokenizer.latent_shape(image_size)
    cfg = {k: v for k, v in SiT_configs[p["sit"]].items() if k != "projector_dim"}
    net = SiT(input_size=h, in_channels=c, num_classes=num_classes, z_dims=(), **cfg)  # no projector heads
    recipe = TINY if preset == "tiny" else RECIPE
    generator = FlowMatchingGenerator(
        net, (c, h, w), num_classes, proj_coeff=0.0, label_drop=recipe.label_drop
    )
    return Backbone(
        name="sit",
        family="sit",
        tokenizer=tokenizer,
        generator=generator,
        recipe=recipe,
        protocols=protocols(recipe),
        notes={
            "guidance": "CFG on all channels, interval t <= 0.7 (t=1 noise), as REPA",
            "alignment": "none",
        },
    )
