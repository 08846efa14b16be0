"""Throughput and memory: training img/s, sampling img/s and latency per batch size, peak memory, parameters.
Timed after warm-up on copies of the models, so measuring never changes the trained weights."""

from __future__ import annotations

import copy
import resource
import time

import torch

from baselines.api import Backbone, randn_per_sample, sample_generators
from bench.progress import log


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_mb(device: str) -> tuple[str, float]:
    if device.startswith("cuda"):
        return "peak_mem_mb", torch.cuda.max_memory_allocated() / 2**20
    # CPU: the process's peak resident set (includes the interpreter and data), labelled as such
    return "peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_images_per_second(
    bb: Backbone, batch: int, image_size: int, num_classes: int, device: str, steps: int = 5, warmup: int = 2
) -> float:
    gen = copy.deepcopy(bb.generator).train()
    shape = bb.tokenizer.latent_shape(image_size)
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(batch, *shape, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    feats = None
    if gen.needs_features:
        feats = bb.features(torch.zeros(batch, 3, image_size, image_size, device=device))
    opt = torch.optim.AdamW([p for p in gen.parameters() if p.requires_grad], lr=1e-6)
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        loss = gen.loss(lat, y, feats, generator=torch.Generator().manual_seed(i))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


@torch.no_grad()
def sample_latency(
    bb: Backbone, batch: int, image_size: int, num_classes: int, device: str, sampler: dict, repeats: int = 1
) -> float:
    """Seconds to generate one batch of images (generator sampling + decode), after one warm-up call."""
    shape = bb.tokenizer.latent_shape(image_size)
    gens = sample_generators(0, range(batch))
    noise = randn_per_sample(gens, shape).to(device)
    labels = (torch.arange(batch) % num_classes).to(device)
    small = {**sampler, "steps": min(2, sampler.get("steps", 2))} if "steps" in sampler else sampler
    bb.sample_images(labels, noise, gens, **small)  # warm-up (allocations, compilation)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        bb.sample_images(labels, noise, gens, **sampler)
    _sync(device)
    return (time.perf_counter() - t0) / repeats


def measure_backbone(bb: Backbone, store, name: str, suite, device: str, seed: int = 0) -> dict:
    r = bb.recipe
    sampler = dict(r.sampler)
    nfe = bb.generator.nfe(**sampler)
    out = {}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    params = sum(p.numel() for p in bb.generator.parameters())
    store.log_metric(name, "throughput", "params", params, device=device)
    store.log_metric(
        name,
        "throughput",
        "tokenizer_params",
        sum(p.numel() for p in bb.tokenizer.parameters()),
        device=device,
    )
    store.log_metric(name, "throughput", "flops_per_forward", bb.generator.flops_per_image(), device=device)
    tr = train_images_per_second(bb, r.batch_size, suite.image_size, suite.num_classes, device)
    store.log_metric(name, "throughput", "train_img_per_s", tr, n_samples=r.batch_size, device=device)
    out["train_img_per_s"] = tr
    for b in suite.throughput_batch_sizes:
        lat = sample_latency(bb, b, suite.image_size, suite.num_classes, device, sampler)
        fields = dict(
            n_samples=b, sampler=sampler.get("mode"), steps=sampler.get("steps"), nfe=nfe, device=device
        )
        store.log_metric(name, "throughput", "sample_latency_s", lat, **fields)
        store.log_metric(name, "throughput", "sample_img_per_s", b / lat, **fields)
        out["sample_img_per_s"] = b / lat
    key, mb = _peak_mb(device)
    store.log_metric(name, "throughput", key, mb, device=device)
    log.info(
        f"[{name}] throughput: train {tr:.1f} img/s, sampling {out['sample_img_per_s']:.1f} img/s (nfe {nfe}), {key} {mb:.0f}"
    )
    return out
