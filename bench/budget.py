"""What each family needs at paper scale (imagenet256), computed, not guessed: `python -m bench.budget`.

The generators are built on the meta device (no memory, no weights files) to count their parameters and
their forward FLOPs per image (the model's own `flops_per_image`, else torch's FlopCounterMode on one meta
forward). From those:
- training state = parameters x (4 B fp32 weights + 4 B grads + 8 B AdamW moments + 4 B EMA), activations
  excluded; a family whose state exceeds FSDP_THRESHOLD of one GPU's memory is marked "--fsdp" (it must run with it);
- GPU-hours = 3 x forward FLOPs (forward + backward) x images seen / (MFU x peak); sampling FID-50K =
  50,000 x NFE(paper sampler) x forward FLOPs / (MFU x peak) (optimistic for autoregressive flows, whose
  sequential decoding is memory-bound);
- disk: the latent cache (posterior mean + std of every image and its flip, float32), REPA's cropped uint8
  images (its encoder runs in stage 2; VA-VAE's runs in stage 1, which streams the folder), and one FID-50K
  sample file per evaluation and protocol.
Assumptions are arguments, printed with the table: H100 SXM dense bf16 peak 989 TFLOP/s, MFU 0.40, 80 GB."""

from __future__ import annotations

import argparse

import torch

IMAGENET_TRAIN = 1_281_167
IMAGE_BYTES = 256 * 256 * 3
FSDP_THRESHOLD = 0.6  # of GPU memory for parameters + grads + optimizer + EMA; the rest is activations


def _meta_flops(net, *inputs) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        net(*inputs)
    return float(fc.get_total_flops())


def paper_generators() -> dict[str, dict]:
    """family -> generator facts at paper size: params, forward FLOPs/image, latent shape, paper NFE, images cache."""
    out = {}
    with torch.device("meta"):
        from baselines.sit import SiT, SiT_configs

        latent = (4, 32, 32)  # SD-VAE ft-MSE f8 at 256 px
        net = SiT(input_size=32, in_channels=4, num_classes=1000, z_dims=(768,), **{**SiT_configs["XL/2"], "projector_dim": 2048})  # fmt: skip
        x, t, y = torch.zeros(1, *latent), torch.full((1,), 0.5), torch.zeros(1, dtype=torch.long)
        out["repa (SiT-XL/2)"] = dict(
            net=net, flops=_meta_flops(net, x, t, y), latent=latent, nfe=2 * 250, images=True
        )

        from baselines.lightningdit import LightningDiT_models

        latent = (32, 16, 16)  # VA-VAE f16d32
        net = LightningDiT_models["XL/1"](input_size=16, in_channels=32, num_classes=1000)
        x = torch.zeros(1, *latent)
        # VA-VAE's encoder (the VF loss) runs in stage 1, which streams the folder: no images in its cache
        out["vavae_lightningdit (XL/1)"] = dict(net=net, flops=_meta_flops(net, x, t, y), latent=latent, nfe=2 * 250, images=False)  # fmt: skip

        from baselines.api import build_backbone

        fae = build_backbone("fae", "paper", device="meta")
        latent = tuple(fae.tokenizer.latent_shape(256))
        out["fae (LightningDiT-XL/1)"] = dict(net=fae.generator, flops=float(fae.generator.flops_per_image()),
                                            latent=latent, nfe=2 * 50, images=False)  # fmt: skip

        from baselines.starflow import StarFlow_models

        for preset in ("1.4B", "3.8B"):  # 3.8B: the released text-to-image network with a class table
            m = StarFlow_models[preset](in_channels=4, img_size=32, txt_dim=1001)
            # Jacobi decoding: one pass of the deep block per sequential step in the worst case
            out[f"starflow ({preset})"] = dict(net=m, flops=float(m.flops_per_image()), latent=(4, 32, 32),
                                               nfe=2 * m.num_patches, images=False)  # fmt: skip
    for v in out.values():
        v["params"] = sum(p.numel() for p in v.pop("net").parameters())
    return out


def budget_rows(epochs=(80, 800), peak_tflops: float = 989.0, mfu: float = 0.40, gpu_gb: float = 80.0):
    rows = []
    per_s = peak_tflops * 1e12 * mfu
    for name, g in paper_generators().items():
        state_gb = g["params"] * 20 / 1e9
        lat = 1
        for d in g["latent"]:
            lat *= d
        cache_gb = IMAGENET_TRAIN * 2 * 2 * lat * 4 / 1e9 + (
            IMAGENET_TRAIN * IMAGE_BYTES / 1e9 if g["images"] else 0
        )
        sample_h = 50_000 * g["nfe"] * g["flops"] / per_s / 3600
        row = [name, g["params"] / 1e6, g["flops"] / 1e9, state_gb, "--fsdp" if state_gb > FSDP_THRESHOLD * gpu_gb else "DDP",
               cache_gb, 50_000 * IMAGE_BYTES / 1e9]  # fmt: skip
        row += [3 * g["flops"] * IMAGENET_TRAIN * e / per_s / 3600 for e in epochs]
        rows.append(row + [sample_h])
    headers = ["family", "params (M)", "fwd GFLOP/img", "train state (GB)", f"{gpu_gb:.0f} GB GPUs",
               "latent cache (GB)", "FID-50K npz (GB)"] + [f"GPU-h {e} ep" for e in epochs] + ["GPU-h FID-50K"]  # fmt: skip
    return headers, rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.budget", description=__doc__.splitlines()[0])
    p.add_argument("--peak-tflops", type=float, default=989.0, help="GPU peak (default: H100 SXM dense bf16)")
    p.add_argument("--mfu", type=float, default=0.40)
    p.add_argument("--gpu-gb", type=float, default=80.0)
    a = p.parse_args(argv)
    from tabulate import tabulate

    headers, rows = budget_rows(peak_tflops=a.peak_tflops, mfu=a.mfu, gpu_gb=a.gpu_gb)
    print(
        f"assumed: peak {a.peak_tflops:g} TFLOP/s, MFU {a.mfu:g}, {a.gpu_gb:g} GB per GPU, ImageNet train {IMAGENET_TRAIN} images"
    )
    print(tabulate(rows, headers=headers, floatfmt=".3g", tablefmt="github"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
