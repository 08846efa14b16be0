"""Training of one backbone inside a suite run: stage 1 (trainable tokenizer), latent extraction, stage 2
(generator with EMA), evaluation at the suite's epochs, resumable from per-epoch checkpoints.

Randomness is a pure function of (run seed, stage, epoch, step): the batch order of epoch e comes from a
generator seeded by (seed, stage, e) and the loss's draws (t, noise, label drop) from one seeded by
(seed, stage, e, step). A resumed run therefore continues exactly as an uninterrupted one."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict

import torch

from baselines.api import Backbone, build_backbone, sample_seed
from bench.checkpoints import checkpoint_ok, load_checkpoint, save_checkpoint
from bench.data import embedded_images, to_model_range
from bench.floors import tokenizer_floor
from bench.grids import record_evaluation
from bench.progress import Progress, log
from bench.store import RunStore


def _gen(seed: int, *key: int) -> torch.Generator:
    s = seed
    for k in key:
        s = sample_seed(s, k)
    return torch.Generator().manual_seed(s % (1 << 63))


def make_backbone(suite, name: str, seed: int) -> Backbone:
    torch.manual_seed(seed)  # model init is part of the run's randomness
    bb = build_backbone(
        name,
        suite.preset_for(name),
        num_classes=suite.num_classes,
        image_size=suite.image_size,
        **suite.options.get(name, {}),
    )
    bb.recipe = bb.recipe.replace(**suite.overrides.get(name, {}))
    return bb


def lr_at(recipe, step: int, total: int, base_lr: float) -> float:
    if recipe.warmup_steps and step < recipe.warmup_steps:
        return base_lr * (step + 1) / recipe.warmup_steps
    if recipe.lr_schedule == "cosine":
        p = (step - recipe.warmup_steps) / max(1, total - recipe.warmup_steps)
        return recipe.min_lr + 0.5 * (base_lr - recipe.min_lr) * (1 + math.cos(math.pi * min(1.0, p)))
    return base_lr


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1 - decay)


def _batches(n: int, batch: int, g: torch.Generator):
    perm = torch.randperm(n, generator=g)
    for s in range(0, n - batch + 1 if n >= batch else 1, batch):
        yield perm[s : s + batch]


def _log_epoch(store: RunStore, name: str, phase: str, sums: dict, count: int, **fields) -> dict:
    means = {k: v / max(1, count) for k, v in sums.items()}
    for k, v in means.items():
        store.log_metric(name, phase, k, v, **fields)
    return means


class BackboneRun:
    """Everything one backbone needs in a suite run; `run()` trains, evaluates and measures it."""

    def __init__(self, suite, name: str, store: RunStore, seed: int, device: str, reference, extractor):
        self.suite, self.name, self.store, self.seed, self.device = suite, name, store, seed, device
        self.reference, self.extractor = reference, extractor
        self.dir = store.backbone_dir(name)
        self.bb = make_backbone(suite, name, seed)
        self.bb.tokenizer.to(device)
        self.bb.generator.to(device)
        if self.bb.encoder is not None:
            self.bb.encoder.to(device)
        images, labels = embedded_images(
            suite.image_size, suite.n_train_per_class, "train", num_classes=suite.num_classes
        )
        self.x = to_model_range(images).to(device)
        self.y = torch.from_numpy(labels).to(device)
        self.done_rows = {
            (r["phase"], r["metric"], r["epoch"]) for r in store.metrics() if r["backbone"] == name
        }

    # --- stage 1 -------------------------------------------------------------------------------------
    def train_tokenizer(self) -> None:
        tok, r = self.bb.tokenizer, self.bb.recipe
        if not tok.trainable or r.stage1_epochs <= 0:
            return
        key = tok.shared_key
        ckpt = self.store.dir / "_shared" / f"{key}.pt" if key else self.dir / "stage1.pt"
        if ckpt.exists() and not checkpoint_ok(ckpt):  # torn or tampered: recomputed, never used
            log.info(f"[{self.name}] stage 1: {ckpt} fails its checksum; training it again")
        elif ckpt.exists():
            state = load_checkpoint(ckpt, map_location=self.device)
            tok.load_state_dict(state["tokenizer"])
            log.info(
                f"[{self.name}] stage 1: loaded {ckpt}"
                + (f" (shared tokenizer trained by {state['trained_by']})" if key else "")
            )
            return
        params = [p for p in tok.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=r.stage1_lr, betas=r.stage1_betas, weight_decay=0.0)
        n, bs = len(self.x), r.stage1_batch_size
        per_epoch = max(1, n // bs)
        tok.total_steps = r.stage1_epochs * per_epoch
        tok.train()
        step = 0
        with Progress(f"[{self.name}] stage 1 (tokenizer)", total=tok.total_steps * bs, unit="img") as prog:
            for epoch in range(1, r.stage1_epochs + 1):
                sums, count = {}, 0
                for idx in _batches(n, bs, _gen(self.seed, 1, epoch)):
                    xb = self.x[idx]
                    feats = self.bb.features(xb) if tok.needs_features else None
                    parts = tok.loss(xb, feats, step=step)
                    opt.zero_grad(set_to_none=True)
                    parts["loss"].backward()
                    if r.stage1_grad_clip:  # None: no clipping, as VA-VAE (issue #12)
                        torch.nn.utils.clip_grad_norm_(params, r.stage1_grad_clip)
                    opt.step()
                    step += 1
                    for k, v in parts.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach())
                    count += 1
                    prog.update(len(idx), loss=float(parts["loss"].detach()))
                means = _log_epoch(
                    self.store,
                    self.name,
                    "stage1",
                    sums,
                    count,
                    epoch=epoch,
                    step=step,
                    images_seen=step * bs,
                )
                log.info(
                    f"[{self.name}] stage 1 epoch {epoch}: "
                    + " ".join(f"{k}={v:.4g}" for k, v in means.items())
                )
        tok.eval()
        save_checkpoint(ckpt, {"tokenizer": tok.state_dict(), "trained_by": self.name})

    # --- latents --------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        tok = self.bb.tokenizer
        tok.eval()
        zs, fs = [], []
        need_f = self.bb.generator.needs_features
        for s in range(0, len(x), 256):
            xb = x[s : s + 256]
            f = self.bb.features(xb) if (tok.needs_features or need_f) else None
            zs.append(tok.encode(xb, f) if tok.needs_features else tok.encode(xb))
            if need_f:
                fs.append(f)
        return torch.cat(zs), (torch.cat(fs) if need_f else None)

    # --- stage 2 -------------------------------------------------------------------------------------
    def train_generator(self) -> None:
        bb, r, gen = self.bb, self.bb.recipe, self.bb.generator
        raw, feats = self.encode_all(self.x)
        bb.tokenizer.set_latent_stats(raw)
        lat = bb.tokenizer.normalize(raw)
        ema = copy.deepcopy(gen).eval().requires_grad_(False)
        params = [p for p in gen.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=r.lr, betas=r.betas, weight_decay=r.weight_decay)
        n, bs = len(lat), r.batch_size
        per_epoch = max(1, n // bs)
        total = r.epochs * per_epoch
        flops = 3.0 * gen.flops_per_image()  # forward + backward ~ 3x forward
        ckpt = self.dir / "stage2.pt"
        start = 0
        if ckpt.exists() and not checkpoint_ok(ckpt):  # torn or tampered: recomputed, never used
            log.info(f"[{self.name}] stage 2: {ckpt} fails its checksum; training from the start")
        elif ckpt.exists():
            state = load_checkpoint(ckpt, map_location=self.device)
            gen.load_state_dict(state["generator"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
            start = int(state["epoch"])
            log.info(f"[{self.name}] stage 2: resumed after epoch {start} from {ckpt}")
        self.ema = ema
        self.test_latents = None
        with Progress(
            f"[{self.name}] stage 2 (generator)", total=(total - start * per_epoch) * bs, unit="img"
        ) as prog:
            for epoch in range(start + 1, r.epochs + 1):
                gen.train()
                gen.apply_recipe(
                    r, epoch - 1
                )  # label dropout, t-sampling schedule: from the recipe (issue #12)
                sums, count = {}, 0
                for i, idx in enumerate(_batches(n, bs, _gen(self.seed, 2, epoch))):
                    step = (epoch - 1) * per_epoch + i
                    for group in opt.param_groups:
                        group["lr"] = lr_at(r, step, total, r.lr)
                    parts = gen.loss(
                        lat[idx],
                        self.y[idx],
                        None if feats is None else feats[idx],
                        generator=_gen(self.seed, 3, epoch, i),
                    )
                    if not torch.isfinite(parts["loss"]):
                        raise FloatingPointError(
                            f"[{self.name}] non-finite training loss at epoch {epoch} step {i}"
                        )
                    opt.zero_grad(set_to_none=True)
                    parts["loss"].backward()
                    if r.grad_clip:
                        torch.nn.utils.clip_grad_norm_(params, r.grad_clip)
                    opt.step()
                    ema_update(
                        ema, gen, min(r.ema_decay, (1 + step) / (10 + step)) if r.ema_warmup else r.ema_decay
                    )
                    for k, v in parts.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach())
                    count += 1
                    prog.update(len(idx), loss=float(parts["loss"].detach()))
                seen = epoch * per_epoch * bs
                means = _log_epoch(
                    self.store,
                    self.name,
                    "train",
                    sums,
                    count,
                    epoch=epoch,
                    step=epoch * per_epoch,
                    images_seen=seen,
                    train_flops=flops * seen,
                )
                log.info(
                    f"[{self.name}] epoch {epoch}/{r.epochs}: "
                    + " ".join(f"{k}={v:.4g}" for k, v in means.items())
                )
                if epoch in self.suite.eval_epochs or epoch == r.epochs:
                    self.evaluate(epoch, epoch * per_epoch, seen, flops * seen)
                save_checkpoint(
                    ckpt,
                    {
                        "generator": gen.state_dict(),
                        "ema": ema.state_dict(),
                        "opt": opt.state_dict(),
                        "epoch": epoch,
                    },
                )

    # --- evaluation ----------------------------------------------------------------------------------
    def _eval_backbone(self) -> Backbone:
        bb = copy.copy(self.bb)
        bb.generator = self.ema
        return bb

    def evaluate(self, epoch: int, step: int, seen: int, train_flops: float) -> None:
        from bench.evaluate import score
        from bench.sample import generate

        s, r = self.suite, self.bb.recipe
        nfe = self.bb.generator.nfe(r.sampler)
        # sampler name, steps, guidance scale (1 = off) in one convention for every family
        d = self.bb.generator.describe(r.sampler)
        fields = dict(epoch=epoch, step=step, images_seen=seen, train_flops=train_flops, n_samples=s.n_eval_samples,
                      sampler=d["sampler"], steps=d["steps"], nfe=nfe, guidance=d["guidance"])  # fmt: skip
        out = generate(self._eval_backbone(), s.n_eval_samples, s.num_classes, self.seed, s.image_size, batch_size=s.sample_batch_size,
                       device=self.device, desc=f"[{self.name}] sample epoch {epoch}")  # fmt: skip
        self.store.log_metric(self.name, "eval", "n_nonfinite", out["n_nonfinite"], **fields)
        record_evaluation(self, epoch, out)  # grid PNG + samples npz
        try:
            metrics = score(out["images"], self.reference, self.extractor, s.metrics, out["n_nonfinite"])
        except ValueError as e:
            log.info(f"[{self.name}] epoch {epoch}: {e}")
            metrics = {}
        for k, v in metrics.items():
            self.store.log_metric(self.name, "eval", k, v, extractor=self.extractor.name, **fields)
        extra = self.ema.eval_metrics(*self._test_set())
        for k, v in extra.items():
            self.store.log_metric(
                self.name, "eval", k, v, **{**fields, "n_samples": len(self._test_set()[0])}
            )
        shown = " ".join(f"{k}={v:.4g}" for k, v in {**metrics, **extra}.items())
        log.info(f"[{self.name}] eval epoch {epoch}: {shown} (nfe {nfe}, {out['seconds']:.1f}s sampling)")

    def _test_set(self):
        if self.test_latents is None:
            images, labels = embedded_images(
                self.suite.image_size,
                max(8, self.suite.n_ref_per_class // 4),
                "test",
                num_classes=self.suite.num_classes,
            )
            raw, _ = self.encode_all(to_model_range(images).to(self.device))
            self.test_latents = (self.bb.tokenizer.normalize(raw), torch.from_numpy(labels).to(self.device))
        return self.test_latents

    def linear_probes(self) -> None:
        """Linear-probe accuracy of the tokenizer latent (and of the frozen encoder's own features)."""
        from bench.linear_probe import linear_probe

        s = self.suite
        test_img, test_lab = embedded_images(
            s.image_size, s.n_ref_per_class, "test", num_classes=s.num_classes
        )
        xt = to_model_range(test_img).to(self.device)
        with torch.no_grad():
            z_tr, _ = self.encode_all(self.x)
            z_te, _ = self.encode_all(xt)
            probes = {"latent": (z_tr.flatten(1), z_te.flatten(1))}
            if self.bb.encoder is not None:
                probes["encoder_features"] = (
                    self.bb.features(self.x).flatten(1),
                    self.bb.features(xt).flatten(1),
                )
        for what, (a, b) in probes.items():
            acc = linear_probe(a.cpu(), self.y.cpu(), b.cpu(), torch.from_numpy(test_lab), seed=self.seed)
            self.store.log_metric(
                self.name,
                "eval",
                "linear_probe_acc",
                acc,
                extractor=f"{self.name}_{what}",
                n_samples=len(test_lab),
                epoch=self.bb.recipe.epochs,
            )
            log.info(f"[{self.name}] linear probe on {what}: {100 * acc:.1f}%")

    def run(self) -> None:
        t0 = time.perf_counter()
        self.train_tokenizer()
        tokenizer_floor(self)  # rFID/PSNR floor rows (bench/floors.py)
        self.train_generator()
        if (
            self.suite.linear_probe
            and ("eval", "linear_probe_acc", self.bb.recipe.epochs) not in self.done_rows
        ):
            self.linear_probes()
        if not any(p == "throughput" for p, _, _ in self.done_rows):
            from bench.throughput import measure_backbone

            measure_backbone(self.bb, self.store, self.name, self.suite, self.device, seed=self.seed)
        self.store.log_metric(
            self.name, "run", "wall_s", time.perf_counter() - t0, epoch=self.bb.recipe.epochs
        )


def recipe_dict(bb: Backbone) -> dict:
    d = asdict(bb.recipe)
    d["sampler"] = bb.sampler.as_dict()
    return d


def backbone_config(suite, name: str) -> dict:
    """The resolved configuration of one backbone in a suite (what config.json records)."""
    bb = make_backbone(suite, name, 0)
    return {"recipe": recipe_dict(bb), "notes": bb.notes, "family": bb.family,
            "params": {"tokenizer": sum(p.numel() for p in bb.tokenizer.parameters()), "generator": sum(p.numel() for p in bb.generator.parameters())}}  # fmt: skip
