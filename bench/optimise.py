"""One step-based optimisation loop for every stage of every family: global batch split across ranks and
micro-batches (gradient accumulation), DDP, autocast + GradScaler, grad clipping, lr schedule, EMA, resumable.

Determinism. A global step's batch is a slice of the epoch's permutation (seeded by (run seed, stage, epoch)).
It is cut into micro-batches of `micro` samples; micro-batch j's loss draws (t, noise, label drop, posterior
samples) come from a generator seeded by (run seed, stage, step, j), and rank r computes micro-batches
j = r, r + world, ...  The gradient is the mean over the global batch whatever the number of processes, and
every draw is a function of (seed, step, sample index): N processes reproduce the 1-process run for the same
`micro` (within float32 summation order), and a resumed run continues exactly."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from baselines.api import sample_seed
from bench import distributed as D
from bench.errors import OptionError


def seeded(seed: int, *key: int) -> torch.Generator:
    """A CPU generator seeded by a fixed mix of (seed, *key)."""
    s = seed
    for k in key:
        s = sample_seed(s, k)
    return torch.Generator().manual_seed(s % (1 << 63))


def uniform(seed: int, *key: int) -> float:
    """A uniform [0, 1) number that is a pure function of (seed, *key) (no generator state)."""
    s = seed
    for k in key:
        s = sample_seed(s, k)
    return (s >> 11) / float(1 << 53)


def lr_at(step: int, total: int, base: float, schedule: str, warmup: int, min_lr: float) -> float:
    """Linear warmup over `warmup` steps, then constant or cosine decay to min_lr at `total`."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "cosine":
        p = (step - warmup) / max(1, total - warmup)
        return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * min(1.0, p)))
    if schedule != "constant":
        raise OptionError(f"unknown lr schedule {schedule!r}; known: constant, cosine")
    return base


def split_batch(batch: int, micro: int | None, nproc: int, what: str = "global batch") -> int:
    """Micro-batch size for a global batch on nproc processes; raises OptionError when it does not split."""
    m = batch if micro is None else min(int(micro), batch)
    if m < 1 or batch % m:
        raise OptionError(f"--micro-batch {micro} does not divide the {what} {batch}")
    if (batch // m) % nproc:
        raise OptionError(
            f"the {what} {batch} in micro-batches of {m} gives {batch // m} micro-batch(es), which do not split "
            f"evenly over {nproc} processes; pass --micro-batch {batch // nproc} (or a divisor of it)"
        )
    return m


def autocast_for(device: str, mixed_precision: str, precision: str = "recipe"):
    """The autocast context for a recipe's mixed_precision ("no"|"bf16"|"fp16"). On CPU it is a no-op unless
    the run asks for bf16 explicitly (precision="bf16"); `precision` other than "recipe" overrides the recipe."""
    mp = mixed_precision if precision == "recipe" else precision
    if mp not in ("no", "bf16", "fp16"):
        raise OptionError(f"unknown mixed precision {mp!r}; known: no, bf16, fp16")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    if mp == "no" or (kind == "cpu" and (precision != "bf16" or mp == "fp16")):
        return contextlib.nullcontext(), None
    dtype = torch.bfloat16 if mp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if mp == "fp16" else None
    return torch.autocast(kind, dtype=dtype), scaler


class CallModule(nn.Module):
    """`forward` = one method of the wrapped module (e.g. `loss`), so DDP/FSDP/compile see a forward."""

    def __init__(self, inner: nn.Module, method: str):
        super().__init__()
        self.inner, self.method = inner, method

    def forward(self, *args, **kwargs):
        return getattr(self.inner, self.method)(*args, **kwargs)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach().to(pe.dtype), 1 - decay)


@dataclass
class LoopConfig:
    stage: int  # 1 = tokenizer, 2 = generator (part of every seed)
    n: int  # data set size (the permutation's length)
    batch: int  # global batch
    micro: int
    total_steps: int
    lr: float
    schedule: str
    warmup: int
    min_lr: float
    grad_clip: float | None
    mixed_precision: str
    precision: str = "recipe"
    compile: bool = False
    fsdp: bool = False
    ema_decay: float | None = None  # None: no EMA
    ema_warmup: bool = False


class Loop:
    """`loss_fn(model, indices, generator, step) -> dict(loss=..., parts...)` on one micro-batch; `model` is the
    wrapped (DDP / FSDP / compiled) module whose forward is `module.<method>`."""

    def __init__(self, cfg: LoopConfig, module: nn.Module, method: str, params: list, opt, seed: int,
                 device: str, loss_fn: Callable[..., dict]):  # fmt: skip
        self.cfg, self.module, self.params, self.opt, self.seed = cfg, module, params, opt, seed
        self.device, self.loss_fn = device, loss_fn
        self.steps_per_epoch = max(1, cfg.n // cfg.batch)
        self.autocast, self.scaler = autocast_for(device, cfg.mixed_precision, cfg.precision)
        self.ema = self._template = None
        if cfg.ema_decay is not None:
            self.ema = copy.deepcopy(module).eval().requires_grad_(False)
        wrapped: nn.Module = CallModule(module, method)
        if cfg.fsdp:
            if D.world() < 2:
                raise OptionError("--fsdp shards over processes: run it with --nproc 2 or more")
            self._template = copy.deepcopy(module).to("meta")  # for unsharded copies (evaluation)
            before = list(module.parameters())
            D.apply_fsdp(wrapped, device)
            # fully_shard replaces the parameters by sharded DTensors: the (fresh) optimizer must hold the new ones
            new_of = {id(a): b for a, b in zip(before, module.parameters())}
            for group in opt.param_groups:
                group["params"] = [new_of[id(p)] for p in group["params"]]
            self.params = [new_of[id(p)] for p in self.params]
            if self.ema is not None:  # the EMA is sharded the same way, so its update stays local
                D.apply_fsdp(CallModule(self.ema, method), device)
        elif D.world() > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            dev = [torch.device(device).index] if device.startswith("cuda") else None
            # some parameters sit out some steps (GAN discriminator before its start, frozen parts)
            wrapped = DDP(wrapped, device_ids=dev, find_unused_parameters=True)
        self.model = torch.compile(wrapped) if cfg.compile else wrapped
        self._perm_epoch, self._perm = None, None

    # --- data order ------------------------------------------------------------------------------------
    def indices(self, step: int) -> torch.Tensor:
        """Global sample indices of `step` (drop-last epochs over a per-epoch permutation)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if self._perm_epoch != epoch:
            self._perm = torch.randperm(self.cfg.n, generator=seeded(self.seed, self.cfg.stage, epoch + 1))
            self._perm_epoch = epoch
        b = self.cfg.batch
        return self._perm[i * b : (i + 1) * b]

    def ema_decay(self, step: int) -> float:
        d = float(self.cfg.ema_decay)
        return min(d, (1 + step) / (10 + step)) if self.cfg.ema_warmup else d

    # --- one global step -------------------------------------------------------------------------------
    def step(self, step: int) -> dict[str, float]:
        cfg, rank, world = self.cfg, D.rank(), D.world()
        idx = self.indices(step)
        chunks = [idx[s : s + cfg.micro] for s in range(0, len(idx), cfg.micro)]
        mine = list(range(rank, len(chunks), world))
        lr = lr_at(step, cfg.total_steps, cfg.lr, cfg.schedule, cfg.warmup, cfg.min_lr)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for k, j in enumerate(mine):
            c = chunks[j]
            last = k == len(mine) - 1
            sync = (
                contextlib.nullcontext()
                if last or not hasattr(self.model, "no_sync")
                else self.model.no_sync()
            )
            with sync:
                with self.autocast:
                    parts = self.loss_fn(self.model, c, seeded(self.seed, cfg.stage, step, j), step)
                # DDP averages over ranks: weight so the sum over all micro-batches is the global-batch mean
                w = len(c) / len(idx)
                loss = parts["loss"].float() * (w * world)
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            for name, v in parts.items():
                sums[name] = sums.get(name, 0.0) + v.detach().float() * w
        names = sorted(sums)
        vec = torch.stack([torch.as_tensor(sums[k], device=self.device).reshape(()) for k in names])
        vec = D.all_reduce_sum(vec).cpu()
        out = dict(zip(names, vec.tolist()))
        if not math.isfinite(out["loss"]):
            raise FloatingPointError(f"non-finite training loss at step {step} (stage {cfg.stage})")
        if self.scaler:
            self.scaler.unscale_(self.opt)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        if self.ema is not None:
            ema_update(self.ema, self.module, self.ema_decay(step))
        out["lr"] = lr
        return out

    # --- checkpoint state ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        s = {"model": D.full_state_dict(self.module), "opt": D.full_optim_state_dict(self.module, self.opt)}
        if self.ema is not None:
            s["ema"] = D.full_state_dict(self.ema)
        if self.scaler is not None:
            s["scaler"] = self.scaler.state_dict()
        return s

    def load(self, state: dict[str, Any]) -> None:
        D.load_full_state_dict(self.module, state["model"])
        D.load_full_optim_state_dict(self.module, self.opt, state["opt"])
        if self.ema is not None:
            D.load_full_state_dict(self.ema, state["ema"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def eval_model(self) -> nn.Module:
        """The EMA (or the model without EMA) as a plain module on every rank: under FSDP an unsharded copy, so
        that ranks sample their own indices without collectives."""
        src = self.ema if self.ema is not None else self.module
        if self._template is None:
            return src
        full = D.full_state_dict(src, all_ranks=True)
        plain = copy.deepcopy(self._template).to_empty(device=self.device)
        plain.load_state_dict(full)
        bufs = dict(
            src.named_buffers()
        )  # FSDP shards parameters only: non-persistent buffers come as they are
        for name, b in plain.named_buffers():
            if name in bufs:
                b.copy_(bufs[name])
        return plain.eval().requires_grad_(False)
