"""Training of one backbone inside a suite run: stage 1 (trainable tokenizer), latent extraction, stage 2
(generator with EMA), evaluation at the suite's epochs; step-based, data-parallel, resumable.

Both stages run through `bench.optimise.Loop` (global batch over ranks and micro-batches, DDP/FSDP, autocast,
EMA, every draw a function of (run seed, step, sample index)). Checkpoints (bench.checkpoints: atomic, rank 0,
weights_only) are written every `ckpt_every` steps and at every evaluation epoch; a rerun of the same run id
(or `--resume RUN_DIR`) continues from the last one and evaluates what the killed run had not."""

from __future__ import annotations

import copy
import inspect
import time
from dataclasses import asdict, dataclass

import torch

from baselines.api import Backbone, build_backbone, sample_generators
from bench import distributed as D
from bench.checkpoints import checkpoint_ok, load_checkpoint, save_checkpoint
from bench.data import to_model_range
from bench.errors import OptionError
from bench.evaluate import sampler_protocols
from bench.floors import tokenizer_floor
from bench.grids import record_evaluation
from bench.optimise import Loop, LoopConfig, split_batch, uniform
from bench.progress import Progress, log
from bench.step_loader import Keyed, StepFeed, StepImages, raise_bad, step_loader


@dataclass(frozen=True)
class RunOptions:
    """How a run executes (not what it computes, except `micro_batch`: the unit of the loss's random draws)."""

    device: str = "cpu"
    micro_batch: int | None = None
    ckpt_every: int = 0  # steps between checkpoints (0: only at evaluation epochs)
    precision: str = "recipe"  # recipe | no | bf16 | fp16
    compile: bool = False
    fsdp: bool = False
    labels: str = "equal"  # equal | random
    workers: int = 0  # DataLoader worker processes per rank (ImageNet stage 1 images, stage 2 cache)
    throughput: bool = True  # False in a bench.jobs worker: the parent measures speed after all workers
    stop_after: str | None = None  # "tokenizer": stage 1 and the floor rows, no generator (tokenizer studies)


def make_backbone(suite, name: str, seed: int) -> Backbone:
    torch.manual_seed(seed)  # model init is part of the run's randomness
    preset = suite.preset_for(name)
    options = suite.options.get(name, {})
    if suite.data == "imagenet" and preset != "tiny":  # paper size: the real SD-VAE / DINOv2 local files
        from bench.paper_inputs import paper_build_options

        options = {**paper_build_options(name), **options}
    bb = build_backbone(name, preset, num_classes=suite.num_classes, image_size=suite.image_size, **options)
    bb.recipe = bb.recipe.replace(**suite.overrides.get(name, {}))
    # the generator reads label_drop when it is built, before suite overrides: the recipe's value wins
    _apply_recipe(bb.generator, bb.recipe, 0.0)
    return bb


def _apply_recipe(gen, recipe, epoch: float) -> None:
    """The recipe's training-time settings (label dropout, t schedules) at `epoch` (fractional)."""
    if hasattr(gen, "apply_recipe"):
        gen.apply_recipe(recipe, epoch)
    elif hasattr(gen, "label_drop"):
        gen.label_drop = float(recipe.label_drop)


def _accepts(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


@torch.no_grad()
def posterior_moments(bb: Backbone, x: torch.Tensor, f: torch.Tensor | None):
    """(mean, std or None) of the tokenizer's posterior for images x (and encoder features f)."""
    tok = bb.tokenizer
    if hasattr(tok, "ae") and hasattr(tok.ae, "encode"):  # LDM AutoencoderKL (SD-VAE, VA-VAE, stand-ins)
        p = tok.ae.encode(x)
        return p.mean, p.std
    if hasattr(tok, "posterior") and f is not None:  # FAE: [B, T, C] -> [B, C, g, g]
        mean, logvar = tok.posterior(f)
        g = int(round(mean.shape[1] ** 0.5))
        to_grid = lambda t: t.transpose(1, 2).reshape(t.shape[0], -1, g, g)  # noqa: E731
        return to_grid(mean), to_grid(torch.exp(0.5 * logvar))
    return (tok.encode(x, f) if tok.needs_features else tok.encode(x)), None


class BackboneRun:
    """Everything one backbone needs in a suite run; `run()` trains, evaluates and measures it."""

    def __init__(self, suite, name: str, store, seed: int, opts: RunOptions, reference, extractor,
                 data, bb: Backbone | None = None):  # fmt: skip
        self.suite, self.name, self.store, self.seed, self.opts = suite, name, store, seed, opts
        self.device = opts.device
        self.reference, self.extractor, self.data = reference, extractor, data
        self.dir = store.backbone_dir(name)
        self.bb = bb if bb is not None else make_backbone(suite, name, seed)
        for m in (self.bb.tokenizer, self.bb.generator, self.bb.encoder):
            if m is not None:
                m.to(self.device)
        self._xy = None
        self.cache_ds = None
        self.done_rows = {
            (r["phase"], r["metric"], r["epoch"], r.get("protocol"))
            for r in store.metrics()
            if r["backbone"] == name
        }
        self.missing_fid: list[str] = []

    @property
    def x(self) -> torch.Tensor:
        """The training images [-1, 1] NCHW (stage 1, in-memory latents, probes); loaded on first use."""
        if self._xy is None:
            self._xy = self.data.train(self.device)
        return self._xy[0]

    @property
    def y(self) -> torch.Tensor:
        if self._xy is None:
            self._xy = self.data.train(self.device)
        return self._xy[1]

    def log_metric(self, *args, **kw) -> None:
        if D.is_main():
            self.store.log_metric(self.name, *args, **kw)

    def _save(self, path, state) -> None:
        if D.is_main():
            save_checkpoint(path, state)
        D.barrier()

    def _resume_state(self, path):
        if not checkpoint_ok(path):
            if path.exists():  # torn or tampered: never used (README's bad-input table)
                log.info(f"[{self.name}] {path} fails its checksum; training from the start")
            return None
        return load_checkpoint(path, map_location="cpu")

    # --- the loop shared by both stages ---------------------------------------------------------------
    def _optimise(self, loop: Loop, total: int, state_path, phase: str, on_epoch, extra_state=dict, desc=""):
        start, sums, count = 0, {}, 0
        state = self._resume_state(state_path)
        if state is not None:
            loop.load(state)
            start, sums, count = int(state["step"]), state["epoch_sums"], int(state["epoch_count"])
            log.info(f"[{self.name}] {phase}: resumed after epoch {start / loop.steps_per_epoch:g} (step {start}/{total}) from {state_path}")  # fmt: skip
            if start % loop.steps_per_epoch == 0 and start > 0:
                on_epoch(start // loop.steps_per_epoch, start, resumed=True)
        bs = loop.cfg.batch
        with Progress(f"[{self.name}] {desc}", total=(total - start) * bs, unit="img") as prog:
            t0 = time.perf_counter()
            for step in range(start, total):
                out = loop.step(step)
                for k, v in out.items():
                    if k != "lr":
                        sums[k] = sums.get(k, 0.0) + v
                count += 1
                prog.update(bs, loss=out["loss"])
                done = step + 1
                boundary = done % loop.steps_per_epoch == 0
                if boundary:
                    epoch = done // loop.steps_per_epoch
                    means = {k: v / max(1, count) for k, v in sums.items()}
                    rate = (done - start) * bs / max(1e-9, time.perf_counter() - t0)
                    self._log_epoch(phase, means, epoch, done, done * bs, rate)
                    sums, count = {}, 0
                # every epoch and every ckpt_every steps (an ImageNet epoch is thousands of steps)
                ckpt_now = (
                    boundary or (self.opts.ckpt_every and done % self.opts.ckpt_every == 0) or done == total
                )
                if boundary and on_epoch(done // loop.steps_per_epoch, done, check_only=True):
                    ckpt_now = True  # checkpoint before an evaluation: a crash there loses no training
                if ckpt_now:
                    self._save(state_path, {**loop.state(), "step": done, "epoch_sums": sums,
                                            "epoch_count": count, **extra_state()})  # fmt: skip
                if boundary:
                    on_epoch(done // loop.steps_per_epoch, done)
        return start

    def _log_epoch(self, phase: str, means: dict, epoch: int, step: int, seen: int, rate: float) -> None:
        fields = dict(epoch=epoch, step=step, images_seen=seen)
        if phase == "train":
            fields["train_flops"] = self.train_flops_per_image * seen
        for k, v in means.items():
            self.log_metric(phase, k, v, **fields)
        shown = " ".join(f"{k}={v:.4g}" for k, v in means.items())
        total = self.bb.recipe.epochs if phase == "train" else self.bb.recipe.stage1_epochs
        what = "epoch" if phase == "train" else f"{phase} epoch"
        log.info(f"[{self.name}] {what} {epoch}/{total}: {shown} ({rate:.1f} img/s)")

    # --- stage 1 -------------------------------------------------------------------------------------
    def train_tokenizer(self) -> None:
        tok, r = self.bb.tokenizer, self.bb.recipe
        if not tok.trainable or r.stage1_epochs <= 0:
            return
        key = tok.shared_key
        final = self.store.dir / "_shared" / f"{key}.pt" if key else self.dir / "stage1.pt"
        if final.exists() and not checkpoint_ok(final):  # torn or tampered: recomputed, never used
            log.info(f"[{self.name}] stage 1: {final} fails its checksum; training it again")
        elif checkpoint_ok(final):
            state = load_checkpoint(final, map_location=self.device)
            tok.load_state_dict(state["tokenizer"])
            log.info(f"[{self.name}] stage 1: loaded {final}" + (f" (shared tokenizer trained by {state['trained_by']})" if key else ""))  # fmt: skip
            return
        stream = self.streams_images
        n, world = (len(self.data.sources.train) if stream else len(self.x)), D.world()
        bs = self._global_batch(r.stage1_batch_size, n, "stage-1 batch")
        per_epoch = max(1, n // bs)
        total = r.stage1_epochs * per_epoch
        tok.total_steps = total
        params = [p for p in tok.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=r.stage1_lr, betas=r.stage1_betas, weight_decay=0.0)
        cfg = LoopConfig(stage=1, n=n, batch=bs, micro=split_batch(bs, self.opts.micro_batch, world, "stage-1 batch"),
                         total_steps=total, lr=r.stage1_lr, schedule=r.stage1_lr_schedule, warmup=r.stage1_warmup_steps,
                         min_lr=r.stage1_min_lr, grad_clip=r.stage1_grad_clip, mixed_precision=r.mixed_precision,
                         precision=self.opts.precision, compile=self.opts.compile, fsdp=self.opts.fsdp)  # fmt: skip
        pass_gen = _accepts(tok.loss, "generator")
        feed = None
        if stream:
            feed = self._feed(
                StepImages(self.data.sources.train, r.hflip, self.seed), lambda: loop, cfg.micro
            )
            log.info(f"[{self.name}] stage 1 streams {self.data.sources.train.describe()}: hflip {r.hflip:g}, "
                     f"{self.opts.workers} loader worker(s) per rank")  # fmt: skip

        def loss_fn(model, idx, g, step):
            if feed is not None:  # ImageNet: streamed from the folder (ADM crop, the recipe's flips)
                imgs, _, ok, msg = feed.get(idx, step)
                raise_bad(ok, msg)
                xb = to_model_range(imgs).to(self.device, non_blocking=True)
            else:  # embedded suites: the in-memory crops (no flips, as before)
                xb = self.x[idx.to(self.x.device)]
            feats = self.bb.features(xb) if tok.needs_features else None
            return model(xb, feats, step=step, **({"generator": g} if pass_gen else {}))

        tok.train()
        loop = Loop(cfg, tok, "loss", params, opt, self.seed, self.device, loss_fn)
        state_path = self.dir / "stage1_state.pt"
        self._optimise(loop, total, state_path, "stage1", lambda *a, **k: False,
                       desc="stage 1 (tokenizer)")  # fmt: skip
        if feed is not None:
            feed.close()
        tok.eval()
        self._save(final, {"tokenizer": tok.state_dict(), "trained_by": self.name})
        if D.is_main():  # the final checkpoint supersedes the loop's state
            for p in (state_path, state_path.with_name(state_path.name + ".sha256")):
                p.unlink(missing_ok=True)

    @property
    def streams_images(self) -> bool:
        """ImageNet suites: stage 1 streams the folder and stage 2 reads the latent cache, both through worker
        DataLoaders (bench.step_loader); embedded suites keep their images in memory."""
        return bool(getattr(self.data, "latent_cache", False))

    def _feed(self, dataset, loop_of, micro: int) -> StepFeed:
        """A StepFeed over `dataset` in the order of the loop `loop_of()` (made when the first batch is asked
        for: the loop exists by then, and a resumed run starts at its step)."""
        pin = str(self.device).startswith("cuda")

        def make(start: int):
            order = copy.copy(loop_of())  # its own permutation cache: the sampler runs ahead of the loop
            return step_loader(dataset, order.indices, start, order.cfg.total_steps, micro, rank=D.rank(),
                               world=D.world(), num_workers=self.opts.workers, pin_memory=pin)  # fmt: skip

        return StepFeed(make)

    def _global_batch(self, bs: int, n: int, what: str) -> int:
        if n < bs:
            raise OptionError(
                f"[{self.name}] the data set has {n} images, fewer than the {what} {bs}; use a larger data set"
            )
        return bs

    # --- latents --------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_all(self, x: torch.Tensor, moments: bool = False):
        """Raw posterior means of x (and, with moments, the std or None) + generator features (or None)."""
        tok = self.bb.tokenizer
        tok.eval()
        ms, ss, fs = [], [], []
        need_f = self.bb.generator.needs_features
        for s in range(0, len(x), 256):
            xb = x[s : s + 256]
            f = self.bb.features(xb) if (tok.needs_features or need_f) else None
            if moments:
                m, sd = posterior_moments(self.bb, xb, f)
                ss.append(sd)
            else:
                m = tok.encode(xb, f) if tok.needs_features else tok.encode(xb)
            ms.append(m)
            if need_f:
                fs.append(f)
        std = torch.cat(ss) if moments and ss and ss[0] is not None else None
        out = (torch.cat(ms), torch.cat(fs) if need_f else None)
        return (*out, std) if moments else out

    def prepare_latents(self) -> None:
        """Posterior moments of the training images and their flips (when the recipe flips), normalisation."""
        r, tok = self.bb.recipe, self.bb.tokenizer
        if r.posterior not in ("mean", "sample", "sample_once"):
            raise OptionError(f"unknown posterior {r.posterior!r}; known: mean, sample, sample_once")
        if self.data.latent_cache:
            return self._prepare_cache()
        self.mean, self.feats, self.std = self.encode_all(self.x, moments=True)
        self.mean_f = self.feats_f = self.std_f = None
        if r.hflip > 0:
            self.mean_f, self.feats_f, self.std_f = self.encode_all(self.x.flip(-1), moments=True)
        if r.posterior != "mean" and self.std is None:
            log.info(
                f"[{self.name}] posterior={r.posterior!r}: tokenizer has no posterior std; using the mean"
            )
        if r.posterior == "sample_once" and self.std is not None:  # one draw per image, as at extraction
            idx = torch.arange(len(self.mean))
            self.mean = self._sample(self.mean, self.std, idx, 0, stream=6)
            if self.mean_f is not None:
                self.mean_f = self._sample(self.mean_f, self.std_f, idx, 0, stream=7)
            self.std = self.std_f = None
        self._normalise_latents(lambda: tok.set_latent_stats(self.mean))

    def _prepare_cache(self) -> None:
        """ImageNet: the shared latent cache (bench.latent_cache: posterior mean + std of every image and its
        flip, sharded over ranks, resumable) and a LatentDataset whose draws are keyed by (seed, step, index)."""
        from bench.latent_cache import (
            build_latent_cache,
            cache_needs_images,
            default_cache_root,
            needs_features,
        )
        from bench.latent_dataset import LatentDataset

        r, tok = self.bb.recipe, self.bb.tokenizer
        with_images = cache_needs_images(self.bb)
        cache = build_latent_cache(self.data.sources.train, tok, default_cache_root(self.store.dir.parent.parent),
                                   features=self.bb.features if needs_features(tok) else None,
                                   with_images=with_images, device=self.device)  # fmt: skip
        self.cache_ds = LatentDataset(cache, posterior=r.posterior, hflip=r.hflip, seed=self.seed, with_images=with_images)  # fmt: skip
        self.n_train = cache.n

        def per_channel():
            mean, std = cache.stats("mean" if r.posterior == "mean" else "sample")
            tok.latent_mean, tok.latent_std = mean.to(self.device), std.clamp_min(1e-6).to(self.device)

        self._normalise_latents(per_channel)

    def _normalise_latents(self, per_channel) -> None:
        """The recipe's latent normalisation; `per_channel()` sets the statistics (in-memory or the cache's)."""
        r, tok = self.bb.recipe, self.bb.tokenizer
        if r.latent_norm == "per_channel":
            per_channel()
        elif r.latent_norm == "scale":
            tok.latent_mean, tok.latent_std = torch.zeros(0), torch.zeros(0)
        elif r.latent_norm == "released":
            if tok.latent_mean.numel() == 0 and tok.latent_scale == 1.0:
                raise OptionError(
                    f"[{self.name}] latent_norm='released' but the tokenizer has no released statistics"
                )
        else:
            raise OptionError(f"unknown latent_norm {r.latent_norm!r}; known: per_channel, scale, released")

    def _cache_batch(self, feed: StepFeed, idx: torch.Tensor, step: int):
        """The micro-batch `idx` of `step` from the cache loader: latents (flip and posterior draw per (seed, step,
        index), bench.latent_dataset), labels, and the frozen encoder's features of the cached images (REPA)."""
        z, y, *img = feed.get(idx, step)
        z, y = z.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        f = None
        if self.cache_ds.with_images:
            f = self.bb.features(img[0].to(self.device, non_blocking=True).float().div(127.5).sub(1.0))
        return self.bb.tokenizer.normalize(z), y, f

    def _sample(self, mean, std, idx, step: int, stream: int) -> torch.Tensor:
        gens = sample_generators(self.seed * 1_000_003 + stream * 7919 + step, idx.tolist())
        eps = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in gens]).to(mean)
        return mean[idx.to(mean.device)] + std[idx.to(std.device)] * eps

    def batch_latents(self, idx: torch.Tensor, step: int):
        """Normalised latents (+ features) of samples idx at `step`: flip and posterior draw per sample."""
        r = self.bb.recipe
        flip = torch.zeros(len(idx), dtype=torch.bool)
        if self.mean_f is not None:
            flip = torch.tensor([uniform(self.seed, 5, step, int(i)) < r.hflip for i in idx])
        dev = self.mean.device
        z = self.mean[idx.to(dev)]
        if r.posterior == "sample" and self.std is not None:
            z = self._sample(self.mean, self.std, idx, step, stream=4)
        f = None if self.feats is None else self.feats[idx.to(dev)]
        if flip.any():
            fi = idx[flip]
            zf = self.mean_f[fi.to(dev)]
            if r.posterior == "sample" and self.std_f is not None:
                zf = self._sample(self.mean_f, self.std_f, fi, step, stream=4)
            z = z.clone()
            z[flip.to(dev)] = zf
            if f is not None:
                f = f.clone()
                f[flip.to(dev)] = self.feats_f[fi.to(dev)]
        return self.bb.tokenizer.normalize(z), f

    # --- stage 2 -------------------------------------------------------------------------------------
    def train_generator(self) -> None:
        r, gen = self.bb.recipe, self.bb.generator
        self.prepare_latents()
        n, world = (self.n_train if self.cache_ds is not None else len(self.mean)), D.world()
        bs = self._global_batch(r.batch_size, n, "batch")
        per_epoch = max(1, n // bs)
        total = r.epochs * per_epoch
        self.steps_per_epoch = per_epoch
        self.train_flops_per_image = 3.0 * gen.flops_per_image()  # forward + backward ~ 3x forward
        params = [p for p in gen.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=r.lr, betas=r.betas, weight_decay=r.weight_decay)
        cfg = LoopConfig(stage=2, n=n, batch=bs, micro=split_batch(bs, self.opts.micro_batch, world),
                         total_steps=total, lr=r.lr, schedule=r.lr_schedule,
                         warmup=r.warmup_steps + round(r.warmup_epochs * per_epoch), min_lr=r.min_lr,
                         grad_clip=r.grad_clip, mixed_precision=r.mixed_precision, precision=self.opts.precision,
                         compile=self.opts.compile, fsdp=self.opts.fsdp, ema_decay=r.ema_decay,
                         ema_warmup=r.ema_warmup)  # fmt: skip

        feed = None
        if self.cache_ds is not None:
            feed = self._feed(Keyed(self.cache_ds), lambda: self.loop, cfg.micro)
            log.info(f"[{self.name}] stage 2 reads the latent cache {self.cache_ds.cache.dir}: posterior "
                     f"{r.posterior}, hflip {r.hflip:g}, {self.opts.workers} loader worker(s) per rank")  # fmt: skip

        def loss_fn(model, idx, g, step):
            _apply_recipe(gen, r, step / per_epoch)
            if feed is not None:
                z, y, f = self._cache_batch(feed, idx, step)
                return model(z, y, f, generator=g)
            z, f = self.batch_latents(idx, step)
            return model(z, self.y[idx.to(self.y.device)], f, generator=g)

        gen.train()
        self.loop = Loop(cfg, gen, "loss", params, opt, self.seed, self.device, loss_fn)
        self.ema = self.loop.ema
        self.test_latents = None
        tok = self.bb.tokenizer
        extra = lambda: {"latent_mean": tok.latent_mean, "latent_std": tok.latent_std}  # noqa: E731

        def on_epoch(epoch, step, check_only=False, resumed=False):
            due = epoch in self.suite.eval_epochs or epoch == r.epochs
            if check_only or not due:
                return due
            pending = [p for p in self.protocols if ("eval", "fid", epoch, p) not in self.done_rows]
            if resumed and not pending:
                return due
            self.evaluate(epoch, step, step * bs, self.train_flops_per_image * step * bs)
            gen.train()
            return due

        self.protocols = self.suite.protocols
        self._optimise(
            self.loop, total, self.dir / "stage2.pt", "train", on_epoch, extra, "stage 2 (generator)"
        )
        if feed is not None:
            feed.close()

    # --- evaluation ----------------------------------------------------------------------------------
    def _eval_backbone(self) -> Backbone:
        bb = copy.copy(self.bb)
        bb.generator = self.loop.eval_model()
        self.ema = bb.generator
        return bb

    def evaluate(self, epoch: int, step: int, seen: int, train_flops: float) -> None:
        from bench.evaluate import score
        from bench.metrics import NonFiniteSamplesError
        from bench.sample import generate

        s = self.suite
        ebb = self._eval_backbone()
        for protocol, (overrides, desc) in sampler_protocols(
            ebb, self.protocols, self.suite.sample_steps
        ).items():
            if ("eval", "fid", epoch, protocol) in self.done_rows:
                continue
            fields = dict(epoch=epoch, step=step, images_seen=seen, train_flops=train_flops, n_samples=s.n_eval_samples,
                          protocol=protocol, labels=self.opts.labels, **desc)  # fmt: skip
            # paper scale (imagenet suites): checksummed, resumable ADM npz shards merged into samples.npz
            shards = self.dir / "samples" / f"epoch{epoch:04d}_{protocol}" if s.data == "imagenet" else None
            out = generate(ebb, s.n_eval_samples, s.num_classes, self.seed, s.image_size, out_dir=shards,
                           batch_size=s.sample_batch_size, device=self.device, labels=self.opts.labels,
                           desc=f"[{self.name}] sample epoch {epoch}" + (f" ({protocol})" if len(self.protocols) > 1 else ""), **overrides)  # fmt: skip
            self.log_metric("eval", "n_nonfinite", out["n_nonfinite"], **fields)
            record_evaluation(
                self, epoch, out, protocol, first=protocol == self.protocols[0]
            )  # grid PNG + npz
            metrics = {}
            if D.is_main():
                samples = out["path"] if shards is not None else out["images"]
                try:
                    metrics = score(
                        samples,
                        self.reference,
                        self.extractor,
                        s.metrics,
                        out["n_nonfinite"],
                        s.n_eval_samples,
                    )
                except NonFiniteSamplesError as e:  # recorded above; the family ends with it (no FID), exit 2
                    log.info(f"[{self.name}] epoch {epoch} ({protocol}): {e}")
                    self.missing_fid.append(
                        f"epoch {epoch} {protocol} ({e.n_nonfinite} of {e.n_samples} samples NaN/Inf)"
                    )
            for k, v in metrics.items():
                self.log_metric("eval", k, v, extractor=self.extractor.name, **fields)
            extra = (
                self.ema.eval_metrics(*self._test_set())
                if protocol == self.protocols[0] and self.data.has_test
                else {}
            )
            for k, v in extra.items():
                self.log_metric("eval", k, v, **{**fields, "n_samples": len(self._test_set()[0])})
            shown = " ".join(f"{k}={v:.4g}" for k, v in {**metrics, **extra}.items())
            log.info(f"[{self.name}] eval epoch {epoch} ({protocol}): {shown} (nfe {desc['nfe']}, {out['seconds']:.1f}s sampling)")  # fmt: skip
            D.barrier()

    def _test_set(self):
        if self.test_latents is None:
            xt, yt = self.data.test(self.device)
            raw, _ = self.encode_all(xt)
            self.test_latents = (self.bb.tokenizer.normalize(raw), yt)
        return self.test_latents

    def linear_probes(self) -> None:
        """Linear-probe accuracy of the tokenizer latent (and of the frozen encoder's own features)."""
        from bench.linear_probe import linear_probe

        xt, yt = self.data.probe(self.device)
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
            acc = linear_probe(a.cpu(), self.y.cpu(), b.cpu(), yt.cpu(), seed=self.seed)
            self.log_metric("eval", "linear_probe_acc", acc, extractor=f"{self.name}_{what}", n_samples=len(yt),
                            epoch=self.bb.recipe.epochs)  # fmt: skip
            log.info(f"[{self.name}] linear probe on {what}: {100 * acc:.1f}%")

    def run(self) -> None:
        t0 = time.perf_counter()
        self.train_tokenizer()
        tokenizer_floor(self)  # rFID/PSNR floor rows (bench/floors.py)
        # no 'run' row: the same run without the option continues from here
        if self.opts.stop_after == "tokenizer":
            return
        self.train_generator()
        if D.is_main():
            if (
                self.suite.linear_probe
                and ("eval", "linear_probe_acc", self.bb.recipe.epochs, None) not in self.done_rows
            ):
                self.linear_probes()
            if self.opts.throughput and self.suite.throughput_batch_sizes and not any(
                p == "throughput" for p, _, _, _ in self.done_rows
            ):
                from bench.throughput import measure_backbone

                measure_backbone(self.bb, self.store, self.name, self.suite, self.device, seed=self.seed)
        D.barrier()
        self.check_fids()
        self.log_metric("run", "wall_s", time.perf_counter() - t0, epoch=self.bb.recipe.epochs)

    def check_fids(self) -> None:
        """NaN/Inf samples are a bad result, not a bug: a UserError (one line, exit 2; bench.runner lets the other
        families finish first). The family's other rows stay in the store; it has no 'run' row, so it reruns."""
        if self.missing_fid:
            from bench.metrics import NonFiniteSamplesError

            raise NonFiniteSamplesError(f"{self.name}: no FID for {'; '.join(self.missing_fid)}")


class ReleaseRun(BackboneRun):
    """A released checkpoint (bench.release.load_release): no training, the paper/common evaluation once."""

    def __init__(self, suite, name, store, seed, opts, reference, extractor, data, bb):
        self.suite, self.name, self.store, self.seed, self.opts = suite, name, store, seed, opts
        self.device, self.reference, self.extractor, self.data, self.bb = (
            opts.device,
            reference,
            extractor,
            data,
            bb,
        )
        self.dir = store.backbone_dir(name)
        self.done_rows = {(r["phase"], r["metric"], r["epoch"], r.get("protocol")) for r in store.metrics()
                          if r["backbone"] == name}  # fmt: skip
        self.missing_fid, self.protocols = [], suite.protocols

    def _eval_backbone(self) -> Backbone:
        self.ema = self.bb.generator
        return self.bb

    def run(self) -> None:
        t0 = time.perf_counter()
        self.evaluate(0, 0, 0, 0.0)  # epoch 0: the release as published
        self.check_fids()
        self.log_metric("run", "wall_s", time.perf_counter() - t0, epoch=0)


def recipe_dict(bb: Backbone) -> dict:
    d = asdict(bb.recipe)
    d["sampler"] = bb.sampler.as_dict()
    return d


def backbone_config(bb: Backbone) -> dict:
    """The resolved configuration of one built backbone (what config.json records)."""
    return {"recipe": recipe_dict(bb), "notes": bb.notes, "family": bb.family,
            "params": {"tokenizer": sum(p.numel() for p in bb.tokenizer.parameters()), "generator": sum(p.numel() for p in bb.generator.parameters())}}  # fmt: skip
