"""Samples depend only on (run seed, index): not on batch size, not on the number of processes."""

import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.sample import generate

N, SEED, SAMPLER = 10, 11, dict(mode="sde", steps=3, guidance=1.8, guidance_interval=(0.0, 0.7))


def _backbone():
    from baselines.backbones.repa import build_backbone

    torch.manual_seed(0)  # identical weights in every process
    return build_backbone("tiny", num_classes=4, image_size=32)


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        res = generate(_backbone(), N, 4, SEED, 32, batch_size=3, **SAMPLER)
        if rank == 0:
            np.save(os.path.join(out_dir, "images.npy"), res["images"])
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_same_samples_as_one():
    torch.set_num_threads(1)
    one = generate(_backbone(), N, 4, SEED, 32, batch_size=N, **SAMPLER)
    small_batches = generate(_backbone(), N, 4, SEED, 32, batch_size=4, **SAMPLER)
    assert (
        np.abs(one["images"].astype(int) - small_batches["images"].astype(int)).max() <= 1
    )  # last-bit rounding only
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(2, os.path.join(d, "init"), d), nprocs=2, join=True)
        two = np.load(os.path.join(d, "images.npy"))
    assert two.shape == one["images"].shape
    assert np.abs(two.astype(int) - one["images"].astype(int)).max() <= 1
    assert (one["labels"] == np.arange(N) % 4).all()


# --- one DDP training step == the single-process step on the full batch ----------------------------------
B, LAT = 8, (4, 8, 8)


def _step_model_and_loop(micro: int, fsdp: bool = False, adam: bool = False):
    from baselines.api import sample_generators
    from bench.optimise import Loop, LoopConfig

    bb = _backbone()
    gen = bb.generator
    gen.train()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # off the adaLN-zero init, so that every block gets a gradient
        for p in gen.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    data = torch.randn(B, *LAT, generator=torch.Generator().manual_seed(5))
    labels = torch.arange(B) % 4

    def loss_fn(model, idx, g, step):
        # per-sample draws (seeded by the sample's index), so any split of the batch sees the same numbers
        gens = sample_generators(99, idx.tolist())
        t = torch.stack([torch.rand((), generator=q) for q in gens])
        eps = torch.stack([torch.randn(LAT, generator=q) for q in gens])
        x0 = data[idx]
        x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
        v, _ = model(x_t, t, labels[idx], return_zs=True)
        return {"loss": (v - (eps - x0)).pow(2).mean()}

    params = [p for p in gen.parameters() if p.requires_grad]
    if adam:  # AdamW, clipping and EMA, two steps (over sharded parameters with fsdp)
        opt = torch.optim.AdamW(params, lr=1e-3)
        cfg = LoopConfig(stage=2, n=B, batch=B, micro=micro, total_steps=2, lr=1e-3, schedule="constant", warmup=0,
                         min_lr=0.0, grad_clip=1.0, mixed_precision="no", fsdp=fsdp, ema_decay=0.9)  # fmt: skip
        loop = Loop(cfg, gen, "velocity", params, opt, seed=0, device="cpu", loss_fn=loss_fn)
        losses = [loop.step(0)["loss"], loop.step(1)["loss"]]
        return loop.state(), loop.eval_model(), losses
    opt = torch.optim.SGD(params, lr=0.5)
    cfg = LoopConfig(stage=2, n=B, batch=B, micro=micro, total_steps=1, lr=0.5, schedule="constant", warmup=0,
                     min_lr=0.0, grad_clip=None, mixed_precision="no")  # fmt: skip
    loop = Loop(cfg, gen, "velocity", params, opt, seed=0, device="cpu", loss_fn=loss_fn)
    loop.step(0)
    return gen, params


def _ddp_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        gen, params = _step_model_and_loop(micro=B // world)
        if rank == 0:
            torch.save({"params": [p.detach() for p in params], "grads": [p.grad for p in params]},
                       os.path.join(out_dir, "step.pt"))  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_one_ddp_step_equals_the_single_process_full_batch_step():
    torch.set_num_threads(1)
    _, full = _step_model_and_loop(micro=B)  # one process, the whole batch in one call
    _, accumulated = _step_model_and_loop(micro=2)  # one process, 4 accumulated micro-batches
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_ddp_worker, args=(2, os.path.join(d, "init"), d), nprocs=2, join=True)
        ddp = torch.load(os.path.join(d, "step.pt"), weights_only=True)
    for p, q, g in zip(full, ddp["params"], ddp["grads"]):
        torch.testing.assert_close(q, p.detach(), rtol=1e-5, atol=1e-6)
        assert (g is None) == (p.grad is None)
        if g is not None:
            torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)
    for p, q in zip(full, accumulated):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6)
    assert sum(p.grad is not None and float(p.grad.abs().max()) > 1e-4 for p in full) > 10  # a real step


def _fsdp_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        state, ema, losses = _step_model_and_loop(micro=B // world, fsdp=True, adam=True)
        if (
            rank == 1
        ):  # the unsharded evaluation copy exists on every rank, the full checkpoint state on rank 0
            torch.save({"ema_eval": ema.state_dict(), "losses": losses}, os.path.join(out_dir, "r1.pt"))
        if rank == 0:
            torch.save({"model": state["model"], "ema": state["ema"]}, os.path.join(out_dir, "r0.pt"))
    finally:
        dist.destroy_process_group()


def test_fsdp_steps_equal_the_single_process_steps():
    """FSDP2 (fully_shard over 2 gloo processes): losses, weights, EMA and the gathered evaluation copy equal a
    single-process run of the same two AdamW steps (grad clipping and EMA included)."""
    torch.set_num_threads(1)
    state, ema, losses = _step_model_and_loop(micro=B // 2, adam=True)
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_fsdp_worker, args=(2, os.path.join(d, "init"), d), nprocs=2, join=True)
        r0 = torch.load(os.path.join(d, "r0.pt"), weights_only=True)
        r1 = torch.load(os.path.join(d, "r1.pt"), weights_only=True)
    assert r1["losses"] == pytest.approx(losses, rel=1e-6)
    # AdamW normalises each gradient element: a float32 summation-order difference in a near-zero gradient moves
    # that weight by up to lr (1e-3), so the tolerance is a small fraction of lr
    for k, v in state["model"].items():
        torch.testing.assert_close(r0["model"][k], v, rtol=1e-4, atol=5e-5)
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(r0["ema"][k], v, rtol=1e-4, atol=5e-5)
        torch.testing.assert_close(
            r1["ema_eval"][k], r0["ema"][k], rtol=0, atol=0
        )  # the gathered copy, exactly
