"""torch.distributed for the harness: one process per device, started by torchrun.

`invoke bench --nproc N` re-invokes the same bench through `torch.distributed.run` (torchrun); each process then
calls `init()`, which reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and starts
the process group: NCCL on CUDA (one GPU per process, chosen by LOCAL_RANK), gloo on CPU. Without torchrun's
environment everything runs in one process and the helpers below are no-ops."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from bench.errors import OptionError


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def init(device: str) -> str:
    """Start the process group when launched by torchrun; returns this process's device ("cuda:<local rank>"
    on CUDA). Idempotent."""
    if not launched_by_torchrun() or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not is_dist():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=60))
    if not device.startswith("cuda"):
        # processes share the CPU cores: split them instead of oversubscribing
        per = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world())))
        torch.set_num_threads(min(torch.get_num_threads(), per))
    return device


def shutdown() -> None:
    if is_dist():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_dist():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj) -> list:
    if not is_dist():
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def torchrun_command(nproc: int, module_args: list[str]) -> list[str]:
    """The single-node torchrun command that re-runs `python -m bench.runner ARGS` in `nproc` processes.
    Multi-node: run torchrun yourself on every node with --nnodes/--node-rank/--rdzv-endpoint (README).
    bench.torchrun is torchrun passing on the failed rank's exit code (2: a bad input) without its own traceback."""
    return [
        sys.executable,
        "-m",
        "bench.torchrun",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "bench.runner",
        *module_args,
    ]


def launch(nproc: int, module_args: list[str]) -> int:
    """Run the bench in `nproc` local processes through torchrun; returns its exit code."""
    if nproc < 1:
        raise OptionError(f"--nproc must be >= 1, got {nproc}")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(torchrun_command(nproc, module_args), env=env)


# --- FSDP2 ------------------------------------------------------------------------------------------------
def _sharded(module: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def apply_fsdp(module: torch.nn.Module, device: str) -> torch.nn.Module:
    """FSDP2: shard every block of every ModuleList (the transformer stacks), then the root, over all ranks.
    Parameters, gradients and optimizer state then take 1/world of the memory each."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    kind = "cuda" if device.startswith("cuda") else "cpu"
    mesh = init_device_mesh(kind, (world(),))
    for m in list(module.modules()):
        if isinstance(m, torch.nn.ModuleList):
            for block in m:
                if any(p.requires_grad for p in block.parameters()):
                    fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module


def full_state_dict(module: torch.nn.Module, all_ranks: bool = False) -> dict:
    """The whole (unsharded) state dict; under FSDP every rank takes part and rank 0's copy (on CPU) is complete,
    or, with all_ranks, every rank gets it (on its device)."""
    if not _sharded(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=not all_ranks)
    return get_model_state_dict(module, options=opts)


def full_optim_state_dict(module: torch.nn.Module, opt) -> dict:
    if not _sharded(module):
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        module, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_full_state_dict(module: torch.nn.Module, state: dict) -> None:
    if not _sharded(module):
        module.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))


def load_full_optim_state_dict(module: torch.nn.Module, opt, state: dict) -> None:
    if not _sharded(module):
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, opt, state, options=StateDictOptions(full_state_dict=True))
