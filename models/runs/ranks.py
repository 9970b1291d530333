"""The processes of a run: which one this is, which items it owns, and waiting for the others.

Started alone, a command is rank 0 of a world of 1 and nothing here touches ``torch.distributed``. Started by
``torchrun`` or ``accelerate launch`` (they set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...), each
process joins one process group. The group only carries control signals (barriers), never model tensors, so it is
always a gloo group: gloo works on every machine, with or without GPUs, and a barrier over it needs no device.

Ownership is a function of the item's key alone (a hash modulo the number of processes), so an item's result never
depends on how many processes ran or in which order the items were listed.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import signal
import threading
import time
from dataclasses import dataclass

from ..errors import InputError

# one process may finish its share hours before another; the closing barrier must outwait it
BARRIER_TIMEOUT = datetime.timedelta(days=7)
LAUNCHER_POLL_SECONDS = 1.0


def owner(key: str, world: int) -> int:
    """The rank (0..world-1) that owns the item with this key."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:12], 16) % world


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    joined: bool = False  # True when this process joined a torch.distributed group (and must leave it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, key: str) -> bool:
        return owner(key, self.world) == self.rank

    def barrier(self) -> None:
        """Wait until every process got here (a no-op alone)."""
        if self.joined:
            import torch.distributed as dist

            dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """True when ``ok`` is True in every process (a no-op alone); used so that an error in one process's
        planning stops every process instead of leaving the others waiting at a barrier."""
        if not self.joined:
            return ok
        import torch
        import torch.distributed as dist

        flag = torch.tensor([0 if ok else 1])
        dist.all_reduce(flag)
        return int(flag.item()) == 0

    def __enter__(self) -> "Ranks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.joined:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.joined = False


def join_ranks() -> Ranks:
    """This process's place in the run, from the launcher's environment variables (alone without them)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Ranks()
    import torch.distributed as dist

    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    if os.environ.get("TORCHELASTIC_RUN_ID"):  # torchrun, accelerate launch
        stop_when_launcher_dies()
    return Ranks(rank=rank, world=world, local_rank=local_rank, joined=True)


def stop_when_launcher_dies(poll_seconds: float = LAUNCHER_POLL_SECONDS) -> None:
    """torchrun starts each worker in a process group of its own, so a launcher killed outright (SIGKILL, the
    out-of-memory killer) leaves its workers running on, writing into the folder a rerun then works in. Each
    worker watches its parent, and once the launcher is gone stops as on SIGTERM: the files being written are
    finished and recorded, exit 130 (POSIX; a daemon thread)."""
    if os.name != "posix":
        return
    launcher = os.getppid()

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(poll_seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="sb-launcher-watch", daemon=True).start()


def device_name(requested: str | None, ranks: Ranks) -> str | None:
    """The device this process runs on: ``requested`` alone; under several processes, ``cuda:<LOCAL_RANK>`` when
    CUDA is available, else the CPU. An explicit device under several processes is refused: every process
    would load its models onto that one device."""
    if ranks.world <= 1:
        return requested
    if requested is not None:
        raise InputError(f"--device {requested!r} cannot be used with {ranks.world} processes: each process picks "
                         "its own (cuda:<LOCAL_RANK>, or the CPU without CUDA); leave --device out, or choose the "
                         "GPUs with CUDA_VISIBLE_DEVICES")
    import torch

    return f"cuda:{ranks.local_rank}" if torch.cuda.is_available() else "cpu"
