"""DDP switched on by the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK).

Without those variables everything runs in one process and the collectives below are no-ops,
so train.py has a single code path.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from config import ConfigError
from engine.checkpoint import tensors_hash


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool  # rank 0: the only process that logs, draws progress bars and saves

    @property
    def distributed(self) -> bool:
        """Launched by torchrun (even with one process: DDP and the collectives run as on many)."""
        return dist.is_available() and dist.is_initialized()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise RuntimeError(f"environment variable {name}={raw!r} is not an integer (it is set by torchrun)") from None


def setup_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistEnv:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA) and pick the device.

    ``device``: "auto" (CUDA when available), "cpu" or "cuda". ``timeout_s`` bounds every collective,
    so when one worker dies the others fail with an error instead of waiting forever.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA GPU (use device 'cpu')")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    launched = world_size > 1 or {"RANK", "MASTER_ADDR", "MASTER_PORT"} <= os.environ.keys()  # torchrun
    if launched and not dist.is_initialized():
        if use_cuda:
            # Surface a dead peer as an error in the NCCL watchdog rather than a silent hang.
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if use_cuda else None,
        )
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, is_main=rank == 0)


def restart_store_problem() -> str | None:
    """Why torchrun's restarts of this run will fail to connect, or None.

    By default torchrun lends its rendezvous store to the workers (TORCHELASTIC_USE_AGENT_STORE)
    and keeps it across restarts: a restarted group then reads the addresses the dead group
    published there (torch 2.14; pytorch/pytorch#167288). TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in
    torchrun's environment gives every group a fresh store.
    """
    restarts = _env_int("TORCHELASTIC_MAX_RESTARTS", 0)
    if restarts and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return (
            f"torchrun --max-restarts={restarts} runs with its shared rendezvous store: a restart will fail to "
            f"connect (the new workers read the dead ones' addresses). Export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
            f"before torchrun (docs/distributed.md)"
        )
    return None


def wrap_ddp(model: nn.Module, env: DistEnv, *, static_graph: bool = False) -> DDP:
    """DDP over the trainable parameters of ``model``; the frozen ones (requires_grad False) stay out.

    DDP buckets and all-reduces only parameters that require grad, but at construction it broadcasts
    every parameter from rank 0, a frozen trunk included: 0.3 GB for a ViT-B, 28 GB for a 7B trunk
    in float32, across the network between machines. Every rank reads the same frozen weights from
    its files instead, so they are left out of DDP altogether (its ignore list), once a hash of them
    (:func:`engine.checkpoint.tensors_hash`) is found equal on every rank. Gradients are views into
    the all-reduce buckets (no second copy of them). ``static_graph``: DDP learns the graph in the
    first step; only for runs that use every trainable parameter in every step, and never with
    gradient accumulation (``no_sync``), which it breaks in torch 2.14.
    """
    frozen = {name: p for name, p in model.named_parameters() if not p.requires_grad}
    hashes = all_gather_objects(tensors_hash(frozen))
    if len(set(hashes)) > 1:
        raise ConfigError(
            f"config key 'model.encoder.pretrained_path': the frozen weights differ between processes "
            f"(hash by rank: {', '.join(hashes)}): every machine must hold the same encoder there"
        )
    DDP._set_params_and_buffers_to_ignore_for_model(model, sorted(frozen))
    devices = [env.local_rank] if env.device.type == "cuda" else None
    return DDP(model, device_ids=devices, gradient_as_bucket_view=True, static_graph=static_graph)


def finish_collectives() -> None:
    """Wait until every rank has finished its collectives: the last statement of a run's normal path,
    before :func:`cleanup_distributed`. A rank that tears its gloo group down while a peer still
    completes an operation with it can die in gloo's threads at exit (SIGABRT, "terminate called
    without an active exception"). Not on an error path: a peer that failed never arrives."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup_distributed() -> None:
    """Leave the process group (every rank, also after an error)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (just ``[obj]`` in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj: Any) -> list[Any] | None:
    """``[obj of rank 0, obj of rank 1, ...]`` on rank 0, None on the other ranks (``[obj]`` in a
    single process). Collective: every rank calls it."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def interleave(shards: list[list[Any]]) -> list[Any]:
    """Back to dataset order: rank r held items r, r + W, r + 2W, ... of W ranks (the evaluation
    sharding, ``datasets.loader.ShardSampler``)."""
    return [shard[i] for i in range(max(map(len, shards), default=0)) for shard in shards if i < len(shard)]
