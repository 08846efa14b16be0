"""The latent cache as its own stage, before any training (as LightningDiT's extract_features.py and REPA's
preprocessing/dataset_tools.py encode): encode an ImageNet-layout folder with a released tokenizer.

    [torchrun --nproc_per_node N [--nnodes ... --rdzv-endpoint ...]] python -m bench.extract_latents \\
        --data $GENBENCH_IMAGENET --tokenizer sd-vae-ft-mse|sd-vae-ft-ema|vavae-f16d32 [--weights $GENBENCH_WEIGHTS]
        [--cache DIR] [--image-size 256] [--batch-size 64] [--workers 8] [--shard-size 10000] [--with-images]
        [--device cuda|cpu]

Under torchrun every rank extracts its shards (rank r: r, r + world, ...; NCCL on CUDA, gloo on CPU); the cache
directory must be on a file system all nodes share. A rerun skips finished, checksum-verified shards. Prints
the cache directory; the trainer finds the same cache by its key (tokenizer weights, crop, file list).
API: main(argv=None) -> exit code (2 for bad input, with one `error: ...` message)."""

from __future__ import annotations

import argparse
import os
import sys

import torch

from bench.errors import UserError


def _init_distributed(device: str) -> str:
    """Join torchrun's process group when launched by it; returns this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend)
    return device


def main(argv: list[str] | None = None) -> int:
    from bench.data import ImageFolder
    from bench.latent_cache import build_latent_cache, default_cache_root
    from bench.progress import log, setup_logging
    from bench.release import TOKENIZERS, load_tokenizer

    p = argparse.ArgumentParser(prog="python -m bench.extract_latents", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("GENBENCH_IMAGENET"), help="ImageNet-layout train folder")
    p.add_argument("--tokenizer", required=True, choices=sorted(TOKENIZERS))
    p.add_argument("--weights", default=None, help="released weights folder (default $GENBENCH_WEIGHTS)")
    p.add_argument(
        "--cache", default=None, help="cache root (default $GENBENCH_CACHE or results/_cache/latents)"
    )
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=10_000)
    p.add_argument(
        "--with-images", action="store_true", help="also store the cropped images (REPA needs them)"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--vavae-config", default="f16d32", help=argparse.SUPPRESS)  # tests: "tiny"
    a = p.parse_args(argv)
    setup_logging()
    try:
        if not a.data:
            raise UserError("no ImageNet folder: pass --data DIR or set GENBENCH_IMAGENET")
        source = ImageFolder(a.data, a.image_size)  # checked before the (slow) tokenizer load
        tokenizer = load_tokenizer(a.tokenizer, a.weights, config=a.vavae_config)
        device = _init_distributed(a.device)
        cache = build_latent_cache(source, tokenizer.to(device), a.cache or default_cache_root(),
                                   with_images=a.with_images, shard_size=a.shard_size, batch_size=a.batch_size,
                                   num_workers=a.workers, device=device, desc=f"latents {a.tokenizer}")  # fmt: skip
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    mean, std = cache.stats()
    log.info(f"latent cache {cache.dir}: {cache.n} images, latents {cache.latent_shape}, "
             f"per-channel mean {mean.tolist()}, std {std.tolist()}")  # fmt: skip
    print(cache.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
