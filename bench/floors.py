"""Tokenizer floors: how well each backbone's tokenizer alone reconstructs the suite's held-out reference images.

A latent generator cannot beat its decoder: its FID is read against the rFID of `decode(encode(x))` on the
reference images. Rows (phase "tokenizer"), logged once per backbone after stage 1:
- "rfid": FID of the reconstructions against the suite's reference statistics, with the suite's extractor, through
  `bench.evaluate.score` (the code path of the generators' FID; the reconstructions are converted to uint8 with the
  samples' convention). As rFID is usually reported (LDM, VA-VAE on ImageNet val), the reconstructed set is the
  reference set itself, so the floor of a perfect tokenizer is 0;
- "psnr": mean over images of 10 log10(1 / MSE) on [0, 1] floats (reconstruction clamped to [-1, 1]); a
  perfect reconstruction is capped at PSNR_CAP dB (the store holds finite numbers);
- "lpips": mean LPIPS-VGG distance, only when a local VGG16 file is found (baselines.losses: $GENBENCH_VGG16 or
  torch hub's cache); never downloaded.
A tokenizer shared by several backbones (`Tokenizer.shared_key`, SD-VAE for REPA and STARFlow) is measured once
per run: its values are kept in <run>/_shared/<key>.floor.json and logged under every backbone that uses it
(the report reads floors by backbone). A pixel-space backbone (TARFlow) logs its identity floor (rFID ~0).

Hook (bench/train.py, after stage 1): `tokenizer_floor(run)` with `run` the BackboneRun (bb, name, store, suite,
device, reference, extractor, and `data` where the trainer has it)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import torch

from bench.progress import log

PSNR_CAP = 100.0  # dB: MSE clamped at 1e-10 on [0, 1] images
BATCH = 64


def _is_main() -> bool:
    d = torch.distributed
    return not (d.is_available() and d.is_initialized()) or d.get_rank() == 0


def _barrier() -> None:
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        d.barrier()


def reference_images(run) -> np.ndarray:
    """The suite's held-out reference images, uint8 NHWC (the trainer's RunData, or the embedded "ref" split)."""
    data = getattr(run, "data", None)
    ref = data.reference() if data is not None and hasattr(data, "reference") else None
    if ref is None:
        from bench.data import embedded_images

        s = run.suite
        ref, _ = embedded_images(s.image_size, s.n_ref_per_class, "ref", num_classes=s.num_classes)
    if isinstance(ref, str | os.PathLike):  # an ADM reference batch (imagenet suites)
        from bench.metrics import read_npz

        ref = read_npz(ref).images()
    return np.asarray(ref)


def at_run_size(images: np.ndarray, size: int) -> np.ndarray:
    """Reference images at the run's resolution (ADM's center crop: BOX halving, BICUBIC), so the floor measures
    the tokenizer at the size it trains at: a dry run at --image-size 32 against the 256 px ADM reference batch
    (FAE's tokenizer decodes to its own fixed size). Unchanged when the sizes already agree (paper runs, the
    embedded suites)."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    from PIL import Image

    from bench.data import center_crop_arr

    return np.stack([center_crop_arr(Image.fromarray(im), size) for im in images])


@torch.no_grad()
def reconstruct(bb, images_u8: np.ndarray, device: str = "cpu", batch: int = BATCH):
    """decode(encode(x)) of uint8 NHWC images -> (uint8 NHWC, per-image PSNR [N], per-image LPIPS [N] or None)."""
    from bench.data import to_model_range
    from bench.metrics.adm_npz import to_uint8_counted
    from bench.sample import uint8_convention

    tok, conv = bb.tokenizer, uint8_convention()
    tok.eval()
    lp = _lpips(device)
    out, psnr, lpips = [], [], []
    for s in range(0, len(images_u8), batch):
        x = to_model_range(images_u8[s : s + batch]).to(device)
        f = bb.features(x) if tok.needs_features else None
        z = tok.encode(x, f) if tok.needs_features else tok.encode(x)
        rec = tok.decode(z).float()
        u8, bad = to_uint8_counted(rec.cpu(), conv)
        if bad.any():
            raise FloatingPointError(f"{int(bad.sum())} tokenizer reconstructions are NaN/Inf")
        out.append(u8)
        mse = ((rec.clamp(-1, 1) - x) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        psnr.append((-10 * torch.log10(mse)).clamp_max(PSNR_CAP).cpu())
        if lp is not None:
            lpips.append(lp(x, rec.clamp(-1, 1)).flatten().cpu())
    return np.concatenate(out), torch.cat(psnr).numpy(), (torch.cat(lpips).numpy() if lpips else None)


def _lpips(device):
    from baselines.losses import PerceptualLoss, _default_vgg_path

    path = _default_vgg_path()
    if path is None or not path.is_file():
        return None
    return PerceptualLoss("lpips-vgg", path).to(device)


def measure(bb, reference, extractor, images_u8: np.ndarray, device: str = "cpu") -> dict[str, float]:
    """{"rfid", "psnr"[, "lpips"]} of a backbone's tokenizer on images whose statistics are `reference`."""
    from bench.evaluate import score

    rec, psnr, lpips = reconstruct(bb, images_u8, device)
    out = {"rfid": score(rec, reference, extractor, ("fid",))["fid"], "psnr": float(np.mean(psnr))}
    if lpips is not None:
        out["lpips"] = float(np.mean(lpips))
    return out


def tokenizer_floor(run) -> dict[str, float] | None:
    """Measure (or reuse the shared tokenizer's) floor and log it for `run.name`; idempotent across resumes."""
    done = any(
        r["backbone"] == run.name and r["phase"] == "tokenizer" and r["metric"] == "rfid"
        for r in run.store.metrics()
    )
    if done or run.reference is None or run.extractor is None:
        _barrier()
        return None
    values = None
    if _is_main():
        key = run.bb.tokenizer.shared_key
        cache = run.store.dir / "_shared" / f"{key}.floor.json" if key else None
        if cache is not None and cache.is_file():
            saved = json.loads(cache.read_text())
            if saved.get("extractor") == run.extractor.name:
                values = saved["values"]
                log.info(f"[{run.name}] tokenizer floor: shared {key}, measured by {saved['measured_by']}")
        images = at_run_size(reference_images(run), run.suite.image_size)
        if values is None:
            values = measure(run.bb, run.reference, run.extractor, images, run.device)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"extractor": run.extractor.name, "measured_by": run.name,
                                           "n_samples": len(images), "values": values}))  # fmt: skip
                os.replace(tmp, cache)
        for k, v in values.items():
            run.store.log_metric(run.name, "tokenizer", k, v, extractor=run.extractor.name if k == "rfid" else None,
                                 n_samples=len(images))  # fmt: skip
        shown = " ".join(f"{k}={v:.4g}" for k, v in values.items() if math.isfinite(v))
        log.info(f"[{run.name}] tokenizer floor on {len(images)} reference images: {shown}")
    _barrier()
    return values


__all__ = ["tokenizer_floor", "measure", "reconstruct", "reference_images", "at_run_size", "PSNR_CAP"]
