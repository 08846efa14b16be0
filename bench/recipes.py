"""Every backbone's paper recipes and sampling protocols, each setting beside its source (`invoke recipes`).

The VALUES come from the Recipe / protocol objects the backbones build (baselines/backbones/<name>.py), so the
table cannot drift from the code; the SOURCES below say where each value comes from: a file and line of the
official release (repository @ the commit read), a paper section, or "ours" with the reason when the source is
silent, ambiguous or broken. A setting without a source is an error (tests/test_recipes.py).
"""

from __future__ import annotations

# The commits read (fetched snapshots of the official repositories).
REPA = "sihyun-yu/REPA@67f7145"
LDIT = "hustvl/LightningDiT@2725fed"
SFLOW = "apple/ml-starflow@e565a46"
TFLOW = "apple/ml-tarflow@313120e"
SIT = "willisma/SiT@947f95b"
ADM = "openai/guided-diffusion@22e0df8"
FAE_PAPER = "arXiv 2512.07829 (FAE)"
SF_PAPER = "arXiv 2506.06276 (STARFlow)"
# FAE has no public code and this machine's stored copy of the paper has its abstract only: the appendix values
# below are those quoted by issue #12 (which read the appendix); they could not be re-read here.
FAE_APPX = f"{FAE_PAPER} appendix (training details, as quoted in issue #12)"
IMAGENET_TRAIN = 1_281_167  # images per epoch: iterations x batch / this = epochs

_Y800 = "configs/reproductions/lightningdit_xl_vavae_f16d32_800ep_cfg.yaml"
_YBOTH = "configs/reproductions/lightningdit_xl_vavae_f16d32_{64ep,800ep}_cfg.yaml"
_NO_STAGE1 = "no stage 1: the paper preset uses a frozen released tokenizer"

# backbone -> setting -> source. Keys: Recipe field names, and "<protocol>.<setting>" for sampling protocols.
# A "<backbone>/<preset>" entry overrides single settings of one preset.
SOURCES: dict[str, dict[str, str]] = {
    "repa": {
        "lr": f"{REPA} train.py:418 (--learning-rate 1e-4); train.py:199 (constant lr 1e-4 in the paper)",
        "betas": f"{REPA} train.py:419-420 (adam-beta1 0.9, adam-beta2 0.999)",
        "weight_decay": f"{REPA} train.py:421 (adam-weight-decay 0)",
        "batch_size": f"{REPA} train.py:407 (--batch-size 256, global); README.md:38-56 keeps it",
        "epochs": f"{REPA} README.md:138 (released SiT-XL/2 trained 4M iterations) x 256 / {IMAGENET_TRAIN:,} = 799",
        "lr_schedule": f"{REPA} train.py:204-210 (AdamW, no scheduler)",
        "warmup_steps": f"{REPA} train.py:204-210 (no warmup)",
        "warmup_epochs": f"{REPA} train.py:204-210 (no warmup)",
        "min_lr": f"{REPA} train.py:204-210 (constant lr: unused)",
        "ema_decay": f"{REPA} train.py:81 (update_ema decay 0.9999), train.py:322 (every step)",
        "ema_warmup": f"{REPA} train.py:227 (EMA = model at step 0, then plain 0.9999)",
        "grad_clip": f"{REPA} train.py:316-317, 423 (clip_grad_norm_ max-grad-norm 1.0)",
        "label_drop": f"{REPA} train.py:434 (--cfg-prob 0.1), applied once in models/sit.py:83-97 (token_drop)",
        "mixed_precision": f"{REPA} train.py:411 (--mixed-precision fp16), README.md:44",
        "posterior": f"{REPA} train.py:71-77, 296 (sample_posterior: mean + std * randn, a fresh draw every step) "
        "from preprocessing/encoders.py:72-74 (stored mean and std)",
        "hflip": f"{REPA} dataset.py:59-75 (stored latents as extracted), preprocessing/dataset_tools.py (no flip)",
        "latent_norm": f"{REPA} train.py:179-184 (latents x 0.18215, bias 0), generate.py:144-150 (inverse)",
        "release_labels": f"{REPA} generate.py:122 (y = torch.randint(0, num_classes))",
        "release_uint8": f"{REPA} generate.py:151-154 (clamp(255 (x + 1) / 2).to(uint8): truncation), as ADM "
        f"({ADM} scripts/image_sample.py:60)",
        "logit_normal_until_epoch": f"{REPA} loss.py:56-57 (weighting 'uniform': t ~ U(0, 1) throughout)",
        "paper.mode": f"{REPA} README.md:132 (--mode=sde), samplers.py:105-183 (Euler-Maruyama, diffusion 2t, last "
        "step the mean)",
        "paper.steps": f"{REPA} README.md:133 (--num-steps=250)",
        "paper.guidance": f"{REPA} README.md:134 (--cfg-scale=1.8)",
        "paper.guidance_interval": f"{REPA} README.md:135 (--guidance-high=0.7), generate.py:206 (guidance-low 0), "
        "samplers.py:131 (decided by t_cur, t = 1 noise)",
        "paper.guidance_schedule": f"{REPA} samplers.py:105-115 (one scale, one interval)",
        "paper.guidance_channels": f"{REPA} samplers.py:149-151 (every channel)",
        "paper.time_shift": f"{REPA} samplers.py:122 (plain linspace: no shift)",
        "paper.heun": f"{REPA} samplers.py:110 (SDE: heun unused)",
        "paper.heun_guidance": f"{REPA} samplers.py:84, 97 (the ODE's Heun step guides its 2nd call by t_cur)",
        "paper.t_last": f"{REPA} samplers.py:122 (linspace(1, 0.04, steps) + [0])",
        "stage1_epochs": f"{REPA} train.py:176 (frozen sd-vae-ft-mse): {_NO_STAGE1}",
    },
    "vavae_lightningdit": {
        "lr": f"{LDIT} {_YBOTH}:44, train.py:118",
        "betas": f"{LDIT} {_YBOTH}:45 (beta2 0.95), train.py:118 (beta1 0.9)",
        "weight_decay": f"{LDIT} train.py:118 (weight_decay=0)",
        "batch_size": f"{LDIT} {_YBOTH}:36",
        "epochs": f"{LDIT} README.md:90 (released LightningDiT-XL-800ep); the 800ep yaml's max_steps (line 35) is "
        "the 64-epoch value, copied",
        "lr_schedule": f"{LDIT} train.py:118 (AdamW, no scheduler)",
        "warmup_steps": f"{LDIT} train.py:118 (no warmup)",
        "warmup_epochs": f"{LDIT} train.py:118 (no warmup)",
        "min_lr": f"{LDIT} train.py:118 (constant lr: unused)",
        "ema_decay": f"{LDIT} train.py:304 (update_ema decay 0.9999), train.py:213 (every step)",
        "ema_warmup": f"{LDIT} train.py:158 (EMA = model at step 0, then plain 0.9999)",
        "grad_clip": f"{LDIT} train.py:209-211 (only with optimizer.max_grad_norm, which no released yaml sets)",
        "label_drop": f"{LDIT} models/lightningdit.py:288 (class_dropout_prob 0.1), :152 (token_drop)",
        "mixed_precision": f"{LDIT} run_train.sh:3, 18 (accelerate --mixed_precision bf16)",
        "posterior": f"{LDIT} extract_features.py:92 + tokenizer/vavae.py:69-70 (posterior.sample() once per image "
        "at extraction)",
        "hflip": f"{LDIT} datasets/img_latent_dataset.py:77 ('latents' or 'latents_flip' with p 0.5), "
        "extract_features.py:50-53 (both extracted)",
        "latent_norm": f"{LDIT} datasets/img_latent_dataset.py:43-50, 83-85 (released latents_stats.pt; computed from "
        "10k latents only when absent), {_YBOTH}:15-16",
        "logit_normal_until_epoch": f"{LDIT} configs/config_details.yaml:59-61 ('in large-scale experiments, we "
        "disable lognorm at the mid of training'): ours 400 = half of 800 epochs, the step is not given",
        "release_labels": f"{LDIT} inference.py:203 (y = torch.randint(0, num_classes))",
        "release_uint8": f"{LDIT} tokenizer/vavae.py:81 (clamp(127.5 x + 128).to(uint8) = round half up)",
        "stage1_epochs": f"{LDIT} vavae/configs/f16d32_vfdinov2_long.yaml:1-9, 74 (100 + 15 + 15 epochs: vf_weight "
        "0.5 -> 0.1 -> 0.1, margins 0 -> 0 -> (0.25, 0.5)), docs/log.txt:6 (latents of the '100+15ep+15ep' "
        "tokenizer); issue hustvl/LightningDiT#50 (maintainer: released VA-VAE trained ~125 epochs; the 50-epoch "
        "config gave FID 3.17 w/o CFG at 800 ep vs the release's 2.17)",
        "stage1_lr": f"{LDIT} vavae/configs/f16d32_vfdinov2.yaml:5 (base_learning_rate 1e-4), vavae/main.py:713-719 "
        "(no lr scaling)",
        "stage1_batch_size": f"{LDIT} vavae/configs/f16d32_vfdinov2.yaml:48, 61-62 (8 per GPU x 8 GPUs x 4 nodes)",
        "stage1_betas": f"{LDIT} vavae/ldm/models/autoencoder.py:436-439 (Adam (0.5, 0.9), autoencoder and "
        "discriminator)",
        "stage1_lr_schedule": f"{LDIT} vavae/ldm/models/autoencoder.py:426-440 (no scheduler)",
        "stage1_warmup_steps": f"{LDIT} vavae/ldm/models/autoencoder.py:426-440 (no warmup)",
        "stage1_min_lr": f"{LDIT} vavae/ldm/models/autoencoder.py:426-440 (constant lr: unused)",
        "stage1_grad_clip": f"{LDIT} vavae/main.py:687 + vavae/configs/f16d32_vfdinov2.yaml:59-66 (Lightning Trainer "
        "without gradient_clip_val: no clipping)",
        "paper.mode": f"{LDIT} {_Y800}:59-60 (ODE, euler), transport/integrators.py:77-126 (torchdiffeq fixed grid)",
        "paper.steps": f"{LDIT} {_Y800}:65 (250 grid points), transport/integrators.py:94 (linspace(t0, t1, 250)) = "
        "249 Euler steps",
        "paper.time_shift": f"{LDIT} {_Y800}:76 (0.3, t = 0 noise), transport/integrators.py:96-101; = 1 / 0.3 in "
        "our t = 1 noise convention",
        "paper.guidance": f"{LDIT} {_Y800}:66 (cfg 6.7)",
        "paper.guidance_interval": f"{LDIT} {_Y800}:75 (cfg_interval_start 0.125, t = 0 noise), "
        "models/lightningdit.py:436-439 (decided by t[0] for the batch)",
        "paper.guidance_schedule": f"{LDIT} models/lightningdit.py:420-442 (one scale, one interval)",
        "paper.guidance_channels": f"{LDIT} models/lightningdit.py:428-432 (guides output channels 0-2 only, 'for exact "
        "reproducibility'), inference.py:210-211 (forward_with_cfg)",
        "paper.heun": f"{LDIT} {_Y800}:60 (euler)",
        "paper.heun_guidance": "Euler: no second evaluation",
        "paper.t_last": "ODE: unused",
        "common.guidance": "ours: 1 + (w - 1) sqrt(3 / 32), the all-channel scale with the release's guidance norm "
        "(backbones/vavae_lightningdit.py common_guidance; nobody tuned an all-channel scale)",
        "common.guidance_channels": f"ours: every channel, the standard CFG ({LDIT} models/lightningdit.py:429-431 "
        "names it)",
    },
    "vavae_lightningdit/XL/1 64ep": {
        "epochs": f"{LDIT} configs/reproductions/lightningdit_xl_vavae_f16d32_64ep_cfg.yaml:35-36 (80k steps x 1024 "
        f"/ {IMAGENET_TRAIN:,} = 64 epochs)",
        "logit_normal_until_epoch": f"{LDIT} configs/config_details.yaml:59 ('in small-scale experiments, we enable "
        "lognorm'): on throughout",
        "paper.guidance": f"{LDIT} configs/reproductions/lightningdit_xl_vavae_f16d32_64ep_cfg.yaml:66 (cfg 10.0)",
        "common.guidance": "ours: 1 + (10 - 1) sqrt(3 / 32), the all-channel scale with the release's guidance norm",
        "paper.guidance_interval": f"{LDIT} configs/reproductions/lightningdit_xl_vavae_f16d32_64ep_cfg.yaml:75 "
        "(cfg_interval_start 0.10, t = 0 noise), models/lightningdit.py:436-439",
    },
    "fae": {
        "lr": f"{FAE_APPX}: generator AdamW lr 1e-4",
        "betas": "ours: AdamW defaults (0.9, 0.999); the generator's betas are not stated",
        "weight_decay": "ours: 0 (not stated)",
        "batch_size": f"{FAE_APPX}: generator batch 512",
        "epochs": f"{FAE_APPX}: 2M iterations x 512 / {IMAGENET_TRAIN:,} = 799 (the paper's '800 epochs')",
        "lr_schedule": f"{FAE_APPX}: constant lr for the generator",
        "warmup_steps": "ours: none (not stated)",
        "warmup_epochs": "ours: none (not stated)",
        "min_lr": "constant lr: unused",
        "ema_decay": "ours: 0.9999 as SiT / LightningDiT (not stated)",
        "ema_warmup": "ours: off, as SiT / LightningDiT",
        "grad_clip": "ours: none, as LightningDiT (not stated)",
        "label_drop": "ours: 0.1 as SiT / LightningDiT (not stated)",
        "mixed_precision": "ours: bf16 as LightningDiT (not stated)",
        "posterior": "ours: posterior mean (not stated; KL weight 1e-6 keeps the posterior narrow)",
        "hflip": "ours: none (not stated)",
        "latent_norm": "ours: per-channel statistics of the training latents (not stated)",
        "logit_normal_until_epoch": f"ours: uniform t throughout; the time shift is a sampling setting, as in "
        f"{LDIT} transport/transport.py:136-166 (training t has no shift) and integrators.py:96-101",
        "release_labels": "no public code: ours (equal labels)",
        "release_uint8": "no public code: ours (round)",
        "stage1_epochs": f"{FAE_APPX}: encoder + feature decoder ~1M iterations at batch 1024 = 799 epochs; pixel "
        "decoder 1M iterations at batch 512. Ours: ONE joint stage 1 of 799 epochs at 1024 whose first half "
        "(stage_split 0.5) trains encoder + feature decoder (0.5M iterations, half the paper's) and whose whole length "
        "trains the pixel decoder (1M iterations at 1024, twice the paper's images)",
        "stage1_lr": f"{FAE_APPX}: lr 1e-4",
        "stage1_batch_size": f"{FAE_APPX}: batch 1024 (encoder + feature decoder)",
        "stage1_betas": f"{FAE_APPX}: AdamW (0.9, 0.999)",
        "stage1_lr_schedule": f"{FAE_APPX}: cosine decay",
        "stage1_warmup_steps": f"{FAE_APPX}: 1000 warmup steps",
        "stage1_min_lr": "ours: 0 (the cosine's floor is not stated)",
        "stage1_grad_clip": "ours: 1.0 over all tokenizer parameters (not stated; the GAN phase is less stable unclipped)",
        "paper.mode": f"{FAE_APPX}: ODE Euler with CFG (the with-CFG row); without CFG an Euler-Maruyama SDE with "
        f"w_t = sigma_t, SiT's diffusion form 'sigma' ({SIT} train_utils.py:25-27, transport/path.py:57) = our g = 2t: "
        "backbones/fae.py SDE_SAMPLER",
        "paper.steps": f"{FAE_APPX}: 250 steps",
        "paper.guidance": "the schedule below sets the scale",
        "paper.guidance_interval": "the schedule below sets the intervals",
        "paper.guidance_schedule": f"{FAE_APPX}: CFG 0.9 for t in [0.9, 1], 2.5 for t in [0, 0.7], 1 elsewhere "
        "(t = 1 noise)",
        "paper.guidance_channels": "ours: every channel (the paper states no DiT channel quirk)",
        "paper.time_shift": f"{FAE_APPX}: timestep shift 0.4, read in LightningDiT's form (t = 0 noise, "
        f"{LDIT} transport/integrators.py:96-101) = 1 / 0.4 in our t = 1 noise convention",
        "paper.heun": f"{FAE_APPX}: Euler",
        "paper.heun_guidance": "Euler: no second evaluation",
        "paper.t_last": "ODE: unused",
    },
    "starflow": {
        "lr": f"{SF_PAPER} appendix B.2 (ImageNet: lr 1e-4, as quoted in issue #12); the release's only yaml "
        f"({SFLOW} configs/starflow_3B_t2i_256x256.yaml:14, 6.4e-5) is text-to-image",
        "betas": f"{SFLOW} train.py:167 (AdamW betas (0.9, 0.95))",
        "weight_decay": f"{SFLOW} train.py:167 (weight_decay 1e-4)",
        "batch_size": f"{SF_PAPER} appendix B.2 (batch 512); t2i yaml:13 has 1024",
        "epochs": f"{SF_PAPER} appendix B.2 (~400M images) / {IMAGENET_TRAIN:,} = 312 epochs",
        "lr_schedule": f"{SFLOW} train.py:169-170, utils/training.py:31-60 (CosineLRSchedule); appendix B.2 (cosine)",
        "warmup_steps": "counted in warmup_epochs",
        "warmup_epochs": f"{SFLOW} train.py:168 (warmup_steps default = num_batches: one epoch)",
        "min_lr": f"{SF_PAPER} appendix B.2 (cosine to 1e-6); {SFLOW} train.py:520, t2i yaml:15",
        "ema_decay": f"{SFLOW} train.py (no EMA model anywhere: the trained weights are sampled)",
        "ema_warmup": "no EMA",
        "grad_clip": f"{SFLOW} train.py:538 (--grad_clip 0 = off), :297",
        "label_drop": f"{SFLOW} configs/starflow_3B_t2i_256x256.yaml:29 (drop_label 0.1), train.py:241",
        "mixed_precision": f"{SFLOW} train.py:208 (torch.autocast bfloat16)",
        "posterior": f"{SFLOW} train.py:226 + utils/model_setup.py:172 (latent_dist.sample() every step)",
        "hflip": f"{SFLOW} dataset.py:275 (RandomHorizontalFlip unless no_flip; train.py:453 default no_flip 0; the "
        "t2i yaml:2 sets no_flip 1, ImageNet is not in the release)",
        "latent_norm": f"{SFLOW} utils/model_setup.py:127, 173, 199 (z x vae.config.scaling_factor = 0.18215 for "
        "sd-vae-ft-ema); noise_std 0.3 (t2i yaml:12) is defined in that space",
        "logit_normal_until_epoch": "not a flow-matching model: unused",
        "release_labels": "the release has no ImageNet FID script: ours (equal labels)",
        "release_uint8": "the release has no ImageNet FID script: ours (round)",
        "stage1_epochs": f"{SFLOW} configs/starflow_3B_t2i_256x256.yaml:26 (frozen sd-vae-ft-ema): {_NO_STAGE1}",
        "paper.mode": f"{SFLOW} scripts/test_sample_image.sh:20 (--jacobi 1), sample.py:171-175",
        "paper.jacobi_block": f"{SFLOW} scripts/test_sample_image.sh:20 (--jacobi_block_size 16)",
        "paper.jacobi_tol": f"{SFLOW} scripts/test_sample_image.sh:20 (--jacobi_th 0.001)",
        "paper.jacobi_max_iters": f"{SFLOW} sample.py:362 (--jacobi_max_iter 32)",
        "paper.guidance": f"{SFLOW} configs/starflow_3B_t2i_256x256.yaml:28 (cfg 2.5; the paper's ImageNet value is not "
        "in the release: unsure)",
        "paper.attn_temp": f"{SFLOW} sample.py:358 (--attn_temp 1)",
        "paper.denoise": f"{SFLOW} sample.py:295-296 (process_denoising). The published 2.40 ({SF_PAPER}) decodes with "
        f"a decoder fine-tuned on noisy latents instead ({SFLOW} finetune_decoder.py:158-160): build option "
        "decoder='finetuned' turns this step off",
        "paper.denoise_lr": f"{SFLOW} sample.py:356 (--self_denoising_lr 1)",
        "paper.noise_std": f"{SFLOW} sample.py:230 (the training noise_std, 0.3)",
        "paper.guide_what": "TARFlow's option: STARFlow guides the deep block's Gaussian (transformer_flow.py:585-601)",
        "paper.annealed_guidance": "TARFlow's option: off",
    },
    "tarflow": {
        "lr": f"{TFLOW} README.md:57-60 (--lr=1e-4)",
        "betas": f"{TFLOW} train.py:70 (AdamW betas (0.9, 0.95))",
        "weight_decay": f"{TFLOW} train.py:70 (weight_decay 1e-4)",
        "batch_size": f"{TFLOW} README.md:57-60 (--batch_size=256)",
        "epochs": f"{TFLOW} README.md:57-60 (--epochs=200)",
        "lr_schedule": f"{TFLOW} train.py:71, utils.py:28-56 (CosineLRSchedule)",
        "warmup_steps": "counted in warmup_epochs",
        "warmup_epochs": f"{TFLOW} train.py:71 (warmup_steps = len(data_loader): one epoch, from 1e-6)",
        "min_lr": f"{TFLOW} train.py:71 (min lr 1e-6)",
        "ema_decay": f"{TFLOW} train.py (no EMA model)",
        "ema_warmup": "no EMA",
        "grad_clip": f"{TFLOW} train.py (no gradient clipping)",
        "label_drop": f"{TFLOW} README.md:59 (--drop_label=0.1), train.py:122",
        "mixed_precision": f"{TFLOW} train.py:97-99 (bf16 autocast with Gaussian noise)",
        "posterior": "pixels: no posterior",
        "hflip": f"{TFLOW} utils.py:132 (RandomHorizontalFlip)",
        "latent_norm": f"{TFLOW} utils.py:134 (pixels in [-1, 1], no further scaling): the noise std is defined there",
        "logit_normal_until_epoch": "not a flow-matching model: unused",
        "release_labels": f"{TFLOW} evaluate_fid.py:72 (y = torch.randint(num_classes))",
        "release_uint8": f"{TFLOW} evaluate_fid.py:33, 107 (torchmetrics FID normalize=True: (x * 255).byte(), "
        "truncation)",
        "stage1_epochs": "pixels: no tokenizer",
        "paper.mode": f"{TFLOW} evaluate_fid.py:77 (model.reverse: token by token with a KV cache)",
        "paper.jacobi_block": "sequential: unused",
        "paper.jacobi_tol": "sequential: unused",
        "paper.jacobi_max_iters": "sequential: unused",
        "paper.guidance": f"{TFLOW} README.md:104 (--cfg=2.3, ImageNet 64)",
        "paper.attn_temp": f"{TFLOW} evaluate_fid.py:137 (--attn_temp 1)",
        "paper.denoise": f"{TFLOW} evaluate_fid.py:80-97 (one score step)",
        "paper.denoise_lr": f"{TFLOW} evaluate_fid.py:140 (--self_denoising_lr 1, times the optimal base lr)",
        "paper.noise_std": f"{TFLOW} evaluate_fid.py:84-86 (the training noise_std)",
        "paper.guide_what": f"{TFLOW} transformer_flow.py:223 (guide_what 'ab')",
        "paper.annealed_guidance": f"{TFLOW} evaluate_fid.py:77 (annealed_guidance=True)",
    },
    "tarflow/imagenet128": {
        "batch_size": f"{TFLOW} README.md:63-66 (--batch_size=768)",
        "epochs": f"{TFLOW} README.md:63-66 (--epochs=320)",
        "lr": f"{TFLOW} README.md:63-66 (--lr=1e-4)",
        "label_drop": f"{TFLOW} README.md:65 (--drop_label=0.1)",
        "paper.guidance": f"{TFLOW} README.md (no ImageNet-128 sampling command): guidance off",
    },
    "tarflow/afhq256": {
        "batch_size": f"{TFLOW} README.md:69-72 (--batch_size=256)",
        "epochs": f"{TFLOW} README.md:69-72 (--epochs=4000)",
        "lr": f"{TFLOW} README.md:69-72 (--lr=1e-4)",
        "label_drop": f"{TFLOW} README.md:71 (--drop_label=0.1)",
        "paper.guidance": f"{TFLOW} README.md (no AFHQ sampling command): guidance off",
    },
}

# plain SiT is REPA's recipe and sampler without the alignment loss (baselines/backbones/sit.py)
SOURCES["sit"] = SOURCES["repa"]


def source(backbone: str, preset: str, setting: str) -> str | None:
    """The source text of one setting of one paper preset, or None when none is recorded."""
    for key in (f"{backbone}/{preset}", backbone):
        text = SOURCES.get(key, {}).get(setting)
        if text:
            return text
    return None


# --- the table -------------------------------------------------------------------------------------------------

_SKIP = {"source", "sampler"}  # `source` is this table's job; the sampler is shown per protocol
_STAGE1 = "stage1_"
ENTRIES = ("repa", "sit", "vavae_lightningdit", "fae", "starflow", "tarflow")  # registry names, report order


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    if value is None:
        return "none"
    return str(value)


def setups() -> list[tuple[str, str, object, dict]]:
    """(backbone, paper preset, Recipe, protocols) of every paper preset, from the backbone modules themselves."""
    import importlib

    out = []
    for name in ENTRIES:
        module = importlib.import_module(f"baselines.backbones.{name}")
        for preset, (recipe, protocols) in module.paper_setups().items():
            out.append((name, preset, recipe, protocols))
    return out


def rows(backbone: str, preset: str, recipe, protocols: dict) -> list[dict]:
    """One row per training / stage-1 / protocol setting of one paper preset: section, setting, value, source
    (None when none is recorded). Values are read from the objects, never restated here."""
    import dataclasses

    out = []
    stage1 = recipe.stage1_epochs > 0
    for f in dataclasses.fields(recipe):
        if f.name in _SKIP or (f.name.startswith(_STAGE1) and f.name != "stage1_epochs" and not stage1):
            continue
        section = "stage 1 (tokenizer)" if f.name.startswith(_STAGE1) else "training"
        out.append(dict(section=section, setting=f.name, value=_fmt(getattr(recipe, f.name)),
                        source=source(backbone, preset, f.name)))  # fmt: skip
    paper = protocols.get("paper")
    for proto, settings in protocols.items():
        for f in dataclasses.fields(settings):
            value, src = getattr(settings, f.name), source(backbone, preset, f"{proto}.{f.name}")
            if src is None and proto != "paper" and paper is not None and getattr(paper, f.name) == value:
                src = "as the paper protocol"
            out.append(dict(section=f"protocol {proto} ({settings.kind})", setting=f.name, value=_fmt(value),
                            source=src))  # fmt: skip
    return out


def table() -> list[dict]:
    """Every row of every paper preset, with backbone and preset."""
    return [
        dict(backbone=b, preset=p, **r)
        for b, p, recipe, protos in setups()
        for r in rows(b, p, recipe, protos)
    ]


def markdown(all_rows: list[dict]) -> str:
    lines = [
        "# Paper recipes and protocols, each setting beside its source",
        "",
        "Generated by `invoke recipes` (bench/recipes.py) from the Recipe and protocol objects of "
        "baselines/backbones/; do not edit by hand. Sources cite the official repositories at the commit read "
        f"({REPA}, {LDIT}, {SFLOW}, {TFLOW}, {SIT}, {ADM}) or the papers; 'ours' marks a choice where the source "
        "is silent, ambiguous or broken, with its reason.",
    ]
    key = None
    for r in all_rows:
        if (r["backbone"], r["preset"]) != key:
            key = (r["backbone"], r["preset"])
            section = None
            lines += ["", f"## {r['backbone']}: {r['preset']}"]
        if r["section"] != section:
            section = r["section"]
            lines += ["", f"### {section}", "", "| setting | value | source |", "|---|---|---|"]
        cell = lambda x: str(x).replace("|", "\\|")  # noqa: E731
        lines.append(f"| {r['setting']} | {cell(r['value'])} | {cell(r['source'] or 'MISSING')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON list of rows instead of Markdown")
    args = ap.parse_args(argv)
    all_rows = table()
    sys.stdout.write(json.dumps(all_rows, indent=1) + "\n" if args.json else markdown(all_rows))
    missing = [f"{r['backbone']} {r['preset']} {r['setting']}" for r in all_rows if not r["source"]]
    if missing:
        print(f"error: {len(missing)} setting(s) without a source: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
