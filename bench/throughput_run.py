"""The imagenet256-throughput measurement itself: the families at paper (or tiny) size, the run plan with its
time budget, and `ThroughputRun`, which builds each family with random weights and measures training,
sampling and (STARFlow) sequential vs Jacobi decoding, handing every row to a sink as soon as it exists.
See bench/throughput.py for what is measured and how FLOPs are counted."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from baselines.api import Backbone, build_backbone, randn_per_sample, sample_generators
from bench.progress import log

RANDOM = (
    "random"  # the weights path that builds an architecture with random weights (autoencoder.RANDOM_WEIGHTS)
)


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# --- families and plan -----------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """One family of the throughput suite: what to build and at which per-GPU training batch."""

    backbone: str
    preset: str
    image_size: int
    options: dict = field(default_factory=dict)  # build_backbone options (weights paths -> RANDOM)
    per_gpu_batch: int = 32
    batch_source: str = ""
    dit_style: bool = False  # the MFU goals apply to the DiT-style generators
    jacobi: bool = False  # measure sequential vs block-Jacobi decoding


# Per-GPU batches: the recipes give global batches; the releases' GPU counts turn them into per-GPU ones.
PAPER_FAMILIES: dict[str, Family] = {
    f.backbone: f
    for f in (
        Family("repa", "XL/2", 256, dict(sd_vae=RANDOM, encoder_weights=RANDOM), 32,
               "REPA: global batch 256 on 8 GPUs", dit_style=True),
        Family("vavae_lightningdit", "XL/1", 256, {}, 32,
               "LightningDiT official log: 32 images per GPU (H800)", dit_style=True),
        Family("fae", "paper", 256, dict(encoder_weights=RANDOM), 64,
               "FAE: global batch 512, assumed 8 GPUs (the paper gives no GPU count)", dit_style=True),
        Family("starflow", "1.4B", 256, dict(vae_folder=RANDOM), 32,
               "assumed 32 per GPU (the release gives no per-GPU batch)", jacobi=True),
        Family("tarflow", "imagenet64", 64, {}, 32, "TARFlow: global batch 256, assumed 8 GPUs"),
    )
}  # fmt: skip
TINY_FAMILIES: dict[str, Family] = {
    k: Family(
        k, "tiny", 64 if k == "tarflow" else 32, {}, 4, "tiny preset (CPU test size)", f.dit_style, f.jacobi
    )
    for k, f in PAPER_FAMILIES.items()
}
SAMPLE_BATCH_SIZES = (1, 4, 16, 64, 256)
COMPILE_MIN_S = 60.0  # budget a paper-size torch.compile of a training step needs (inductor, fwd + bwd)


@dataclass
class Plan:
    """What one throughput run measures; `budget_s` bounds the whole run (measurements past it are recorded
    as skipped, so a budgeted GPU session always ends with a complete, honest table)."""

    preset: str = "paper"
    families: tuple[str, ...] = tuple(PAPER_FAMILIES)
    sample_batch_sizes: tuple[int, ...] = SAMPLE_BATCH_SIZES
    compile_modes: tuple[bool, ...] = (False, True)
    train_steps: int = 5
    train_warmup: int = 2
    jacobi_batch: int = 4
    dtype: str = "bf16"  # autocast dtype of training and sampling ("fp32": none)
    jacobi_dtype: str = "fp32"  # the deviation is compared with the Jacobi tolerance at full precision
    budget_s: float | None = None
    seed: int = 0
    sampler_steps: int | None = None  # None: the paper's steps (all NFEs); CPU tests lower it, rows record it

    def family(self, name: str) -> Family:
        table = PAPER_FAMILIES if self.preset == "paper" else TINY_FAMILIES
        if name not in table:
            raise ValueError(f"unknown throughput family {name!r}; known: {', '.join(table)}")
        return table[name]


def environment(device: str) -> dict:
    """The fields every row carries besides its own: device, versions."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    from baselines import ops

    dev = torch.device(device)
    name = torch.cuda.get_device_properties(dev).name if dev.type == "cuda" else "cpu"
    # which fused-op implementations ran (the models' Triton kernels or their references), and which SDPA
    # kernels torch may pick (the models call F.scaled_dot_product_attention)
    sdpa = [k for k, on in (("flash", torch.backends.cuda.flash_sdp_enabled()),
                            ("mem_efficient", torch.backends.cuda.mem_efficient_sdp_enabled()),
                            ("math", torch.backends.cuda.math_sdp_enabled())) if on]  # fmt: skip
    return {"device": name, "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
            "ops_backend": ops.get_backend(), "ops_torch_only": ",".join(sorted(ops.torch_only())),
            "sdpa_backends": ",".join(sdpa)}  # fmt: skip


def _autocast(device: str, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    return lambda: torch.autocast(torch.device(device).type, dtype=dt)


def build_family(fam: Family, device: str, num_classes: int | None = None) -> Backbone:
    """The backbone with random weights, on `device`. Built directly there when its constructors allow it
    (seconds instead of a CPU initialisation of billions of weights), else on the CPU and moved."""
    torch.manual_seed(0)
    opts = dict(fam.options, image_size=fam.image_size)
    if num_classes is not None:
        opts["num_classes"] = num_classes
    if "device" in _build_parameters(fam.backbone):  # builders that place their modules themselves (FAE)
        opts["device"] = device
    try:
        with torch.device(device):
            bb = build_backbone(fam.backbone, fam.preset, **opts)
    except RuntimeError:  # e.g. a seeded CPU generator in an initialiser
        bb = build_backbone(fam.backbone, fam.preset, **opts)
    for m in (bb.generator, bb.tokenizer, bb.encoder):
        if m is not None:
            m.to(device)
    return bb


def _build_parameters(backbone: str) -> set[str]:
    import importlib
    import inspect

    from baselines.api import BACKBONES

    module, fn = BACKBONES[backbone].split(":")
    return set(inspect.signature(getattr(importlib.import_module(module), fn)).parameters)


def paper_sampler(bb: Backbone):
    """The release's sampler settings: the `paper` protocol where the backbone declares one, else its recipe's.
    A dict (keyword sampler API) or typed settings (`SamplerSettings`); the helpers below accept both."""
    protocols = getattr(bb, "protocols", None)
    if protocols and "paper" in protocols:
        return protocols["paper"]
    if isinstance(getattr(type(bb), "sampler", None), property):
        return bb.sampler
    return dict(bb.recipe.sampler)


def sampler_get(s, key: str, default=None):
    return s.get(key, default) if isinstance(s, dict) else getattr(s, key, default)


def sampler_with(s, **changes):
    return {**s, **changes} if isinstance(s, dict) else s.replace(**changes)


def sampler_json(s) -> str:
    return json.dumps(s if isinstance(s, dict) else s.as_dict(), default=str)


def call_with_sampler(fn, *args, sampler):
    """fn(*args, **sampler) for the keyword API, fn(*args, sampler) for typed settings."""
    return fn(*args, **sampler) if isinstance(sampler, dict) else fn(*args, sampler)


def synthetic_batch(bb: Backbone, fam: Family, batch: int, num_classes: int, device: str) -> dict:
    """Inputs of the exact training shapes: normalised latents, labels, and the images the encoder sees."""
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(batch, *bb.tokenizer.latent_shape(fam.image_size), generator=g).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    images = None
    if bb.generator.needs_features:
        images = (torch.rand(batch, 3, fam.image_size, fam.image_size, generator=g) * 2 - 1).to(device)
    return {"latents": lat, "labels": y, "images": images}


def train_step(bb, gen, opt, inputs, autocast, device) -> Callable[[int], torch.Tensor]:
    """One optimizer step as the trainer runs it: online encoder features (REPA), loss, backward, AdamW."""
    dev = torch.device(device)

    def step(i: int) -> torch.Tensor:
        rng = torch.Generator(device=dev).manual_seed(i)
        with autocast():
            feats = bb.features(inputs["images"]) if inputs["images"] is not None else None
            loss = gen.loss(inputs["latents"], inputs["labels"], feats, generator=rng)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def count_flops(fn: Callable[[], object]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


@contextlib.contextmanager
def compiled_network(gen: torch.nn.Module, on: bool):
    """torch.compile the generator's network (its largest child module) for the duration; restored after,
    so the sampling sweep that follows runs the same eager module."""
    if not on:
        yield None
        return
    name, child = max(gen.named_children(), key=lambda kv: sum(p.numel() for p in kv[1].parameters()))
    setattr(gen, name, torch.compile(child))
    try:
        yield name
    finally:
        setattr(gen, name, child)


class Clock:
    """The run's time budget."""

    def __init__(self, budget_s: float | None):
        self.t0, self.budget_s = time.monotonic(), budget_s

    def left(self) -> float:
        return math.inf if self.budget_s is None else self.budget_s - (time.monotonic() - self.t0)


def _fail(e: BaseException) -> str:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "error: out of memory"
    return f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


class ThroughputRun:
    """Measures the families of a Plan on one device; every row goes to `sink` as soon as it is measured."""

    def __init__(self, plan: Plan, device: str, sink: Callable[[dict], None], roof: dict):
        self.plan, self.device, self.sink, self.roof = plan, device, sink, roof
        self.env = environment(device)
        self.clock = Clock(plan.budget_s)
        self.cuda = torch.device(device).type == "cuda"

    # --- rows ------------------------------------------------------------------------------------------
    def row(self, fam: Family, phase: str, **fields) -> dict:
        row = {"backbone": fam.backbone, "preset": fam.preset, "phase": phase, "image_size": fam.image_size,
               **self.env, "status": "ok", "time": time.time(), **fields}  # fmt: skip
        if row.get("flops_per_s") is not None:  # MFU against the peak of the dtype the row ran in
            low = row.get("dtype") in ("bf16", "fp16")
            row["peak_flops"] = self.roof["peak_flops_bf16" if low else "peak_flops_fp32"]
            row["mfu"] = row["flops_per_s"] / row["peak_flops"]
            sheet = self.roof.get("datasheet_bf16_flops") if low else None
            row["mfu_datasheet"] = row["flops_per_s"] / sheet if sheet else None
        self.sink(row)
        return row

    def _reset_peak(self):
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def _peak(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**20 if self.cuda else None

    # --- training ----------------------------------------------------------------------------------------
    def train(self, bb: Backbone, fam: Family, num_classes: int, compile_modes=None) -> list[dict]:
        p, dev = self.plan, self.device
        modes = p.compile_modes if compile_modes is None else compile_modes
        if not modes:
            return []
        batch = fam.per_gpu_batch
        gen = bb.generator.train()
        if hasattr(gen, "apply_recipe"):  # the trainer's training-time settings (label dropout, t schedule)
            gen.apply_recipe(bb.recipe)
        autocast = _autocast(dev, p.dtype)
        inputs = synthetic_batch(bb, fam, batch, num_classes, dev)
        params = [q for q in gen.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-6, fused=self.cuda)
        base = dict(batch_size=batch, dtype=p.dtype, batch_source=fam.batch_source,
                    params=sum(q.numel() for q in gen.parameters()))  # fmt: skip
        step = train_step(bb, gen, opt, inputs, autocast, dev)
        step(0)  # allocations (optimizer state) before counting, so the count sees a steady-state step
        flops = count_flops(lambda: step(1))
        rows = []
        for compiled in modes:
            fields = dict(base, compile=compiled, flops_per_step=flops)
            # a compilation cannot be stopped half way: start one only with time for it left
            if self.clock.left() <= (COMPILE_MIN_S if compiled and self.cuda else 0):
                rows.append(self.row(fam, "train", **fields, status="skipped: time budget"))
                continue
            try:
                self._reset_peak()
                with compiled_network(gen, compiled):
                    step = train_step(bb, gen, opt, inputs, autocast, dev)
                    t_warm = time.perf_counter()
                    for i in range(p.train_warmup + (1 if compiled else 0)):  # compile: one more warm-up
                        loss = step(2 + i)
                    sync(dev)
                    warm_s = time.perf_counter() - t_warm
                    t0 = time.perf_counter()
                    for i in range(p.train_steps):
                        loss = step(100 + i)
                    sync(dev)
                    dt = (time.perf_counter() - t0) / p.train_steps
                rows.append(self.row(fam, "train", **fields, step_s=dt, img_per_s=batch / dt, flops_per_s=flops / dt,
                                     warmup_s=warm_s, steps=p.train_steps, peak_mem_mb=self._peak(),
                                     loss_finite=bool(torch.isfinite(loss).item())))  # fmt: skip
            except Exception as e:  # OOM or a compile failure: recorded, the other measurements go on
                rows.append(self.row(fam, "train", **fields, status=_fail(e)))
            self._log(rows[-1])
        del opt
        gen.zero_grad(set_to_none=True)  # the sampling sweep that follows gets the gradients' memory back
        gen.eval()
        return rows

    # --- sampling ----------------------------------------------------------------------------------------
    def _inputs(self, bb, fam, batch, num_classes):
        gens = sample_generators(self.plan.seed, range(batch))
        noise = randn_per_sample(gens, bb.tokenizer.latent_shape(fam.image_size)).to(self.device)
        return (torch.arange(batch) % num_classes).to(self.device), noise, gens

    @torch.no_grad()
    def forward_flops(self, bb, fam, num_classes) -> tuple[float, float]:
        """Counted FLOPs of one generator forward (its training loss without backward) and of one decode,
        per image."""
        inputs = synthetic_batch(bb, fam, 1, num_classes, self.device)
        feats = bb.features(inputs["images"]) if inputs["images"] is not None else None
        rng = torch.Generator(device=torch.device(self.device)).manual_seed(0)
        fwd = count_flops(
            lambda: bb.generator.loss(inputs["latents"], inputs["labels"], feats, generator=rng)
        )
        z = bb.tokenizer.denormalize(inputs["latents"])
        dec = count_flops(lambda: bb.tokenizer.decode(z))
        return fwd, dec

    def _forward_equivalents(self, gen, sampler) -> float:
        stats = getattr(gen, "last_sample_stats", None)  # flows report their measured cost per call
        if stats is not None and getattr(stats, "forward_equivalents", 0):
            return float(stats.forward_equivalents)
        return float(call_with_sampler(gen.nfe, sampler=sampler))

    def sampler(self, bb: Backbone) -> dict:
        sampler = paper_sampler(bb)
        if self.plan.sampler_steps and sampler_get(sampler, "steps") is not None:
            sampler = sampler_with(sampler, steps=self.plan.sampler_steps)
        return sampler

    @torch.no_grad()
    def sample(self, bb: Backbone, fam: Family, num_classes: int) -> list[dict]:
        p, dev = self.plan, self.device
        sampler = self.sampler(bb)
        autocast = _autocast(dev, p.dtype)
        fwd_flops, dec_flops = self.forward_flops(bb, fam, num_classes)
        nfe = call_with_sampler(bb.generator.nfe, sampler=sampler)
        base = dict(dtype=p.dtype, compile=False, sampler=sampler_json(sampler), nfe=nfe,
                    forward_flops=fwd_flops, decode_flops=dec_flops)  # fmt: skip
        with autocast():  # warm-up: kernels compiled and allocator primed before the first timed call
            labels, noise, gens = self._inputs(bb, fam, 1, num_classes)
            steps = sampler_get(sampler, "steps")
            warm = sampler_with(sampler, steps=min(2, steps)) if steps is not None else sampler
            call_with_sampler(bb.sample_images, labels, noise, gens, sampler=warm)
        rows, last = [], None
        for b in p.sample_batch_sizes:
            # the call costs at most linearly more than the last one: skip what cannot finish in the budget
            predicted = 0.0 if last is None else last[1] * b / last[0]
            if self.clock.left() < predicted or self.clock.left() <= 0:
                rows.append(self.row(fam, "sample", **base, batch_size=b, status="skipped: time budget"))
                self._log(rows[-1])
                continue
            try:
                self._reset_peak()
                labels, noise, gens = self._inputs(bb, fam, b, num_classes)
                sync(dev)
                t0 = time.perf_counter()
                with autocast():
                    images = call_with_sampler(bb.sample_images, labels, noise, gens, sampler=sampler)
                sync(dev)
                lat = time.perf_counter() - t0
                fe = self._forward_equivalents(bb.generator, sampler)
                flops = b * (fe * fwd_flops + dec_flops)
                rows.append(self.row(fam, "sample", **base, batch_size=b, latency_s=lat, img_per_s=b / lat,
                                     forward_equivalents=fe, flops_per_s=flops / lat, peak_mem_mb=self._peak(),
                                     finite_frac=float(torch.isfinite(images).float().mean())))  # fmt: skip
                last = (b, lat)
            except Exception as e:
                rows.append(self.row(fam, "sample", **base, batch_size=b, status=_fail(e)))
                if isinstance(e, torch.cuda.OutOfMemoryError):
                    torch.cuda.empty_cache()
                    last = (b, math.inf)  # larger batches would run out of memory too
            self._log(rows[-1])
        return rows

    # --- STARFlow: sequential vs block Jacobi ---------------------------------------------------------
    @torch.no_grad()
    def jacobi(self, bb: Backbone, fam: Family, num_classes: int) -> list[dict]:
        p, b, gen = self.plan, self.plan.jacobi_batch, bb.generator
        sampler = self.sampler(bb)
        tol = float(sampler_get(sampler, "jacobi_tol", 1e-3))
        autocast = _autocast(self.device, p.jacobi_dtype)
        labels, noise, gens = self._inputs(bb, fam, b, num_classes)
        out, rows = {}, []
        for mode in ("sequential", "jacobi"):
            fields = dict(batch_size=b, dtype=p.jacobi_dtype, compile=False, mode=mode, jacobi_tol=tol,
                          sampler=sampler_json(sampler_with(sampler, mode=mode)))  # fmt: skip
            if self.clock.left() <= 0:
                rows.append(self.row(fam, "decode", **fields, status="skipped: time budget"))
                self._log(rows[-1])
                return rows
            try:
                sync(self.device)
                t0 = time.perf_counter()
                with autocast():
                    z = call_with_sampler(
                        gen.sample, labels, noise, gens, sampler=sampler_with(sampler, mode=mode)
                    )
                    out[mode] = z.float()
                sync(self.device)
                lat = time.perf_counter() - t0
                stats = getattr(gen, "last_sample_stats", None)
                rows.append(self.row(fam, "decode", **fields, latency_s=lat, img_per_s=b / lat,
                                     nfe=getattr(stats, "nfe", None)))  # fmt: skip
            except Exception as e:
                rows.append(self.row(fam, "decode", **fields, status=_fail(e)))
                self._log(rows[-1])
                return rows
            self._log(rows[-1])
        dev = (out["sequential"] - out["jacobi"]).abs().flatten(1).amax(1)  # per image, latent space
        seq, jac = rows
        rows.append(self.row(fam, "jacobi_vs_sequential", batch_size=b, dtype=p.jacobi_dtype, compile=False,
                             jacobi_tol=tol, speedup=jac["img_per_s"] / seq["img_per_s"],
                             max_deviation=float(dev.max()), deviation_per_image=[float(d) for d in dev]))  # fmt: skip
        self._log(rows[-1])
        return rows

    def _log(self, row: dict) -> None:
        what = {k: row[k] for k in ("batch_size", "compile", "mode") if k in row}
        nums = {k: row[k] for k in ("img_per_s", "latency_s", "mfu", "peak_mem_mb", "speedup", "max_deviation")
                if row.get(k) is not None}  # fmt: skip
        text = ", ".join(f"{k} {v:.4g}" for k, v in nums.items())
        log.info(f"[{row['backbone']}] {row['phase']} {what}: {row['status']}{': ' + text if text else ''}")

    # --- one family ---------------------------------------------------------------------------------------
    def family(
        self, name: str, num_classes: int, phases=("train", "sample", "jacobi"), compile_modes=None
    ) -> list[dict]:
        """Build one family and measure the named phases (training in `compile_modes`, default the plan's)."""
        fam = self.plan.family(name)
        rows = []
        if self.clock.left() <= 0:
            return [self.row(fam, "build", status="skipped: time budget")]
        t0 = time.perf_counter()
        try:
            bb = build_family(fam, self.device, num_classes)
        except Exception as e:
            return [self.row(fam, "build", status=_fail(e))]
        rows.append(self.row(fam, "build", build_s=time.perf_counter() - t0,
                             params=sum(q.numel() for q in bb.generator.parameters()),
                             tokenizer_params=sum(q.numel() for q in bb.tokenizer.parameters()),
                             encoder_params=sum(q.numel() for q in bb.encoder.parameters()) if bb.encoder else 0))  # fmt: skip
        todo = [getattr(self, ph) for ph in phases if ph != "jacobi" or fam.jacobi]
        for phase in todo:
            try:
                rows += (
                    phase(bb, fam, num_classes, compile_modes)
                    if phase == self.train
                    else phase(bb, fam, num_classes)
                )
            except Exception as e:  # a phase that fails before its own rows: recorded, next phase runs
                rows.append(self.row(fam, phase.__name__, status=_fail(e)))
                self._log(rows[-1])
        del bb
        if self.cuda:
            torch.cuda.empty_cache()
        return rows
