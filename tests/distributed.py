"""Run a function on N spawned processes joined in a gloo process group, for the scale-out tests.

    results = run_distributed(2, check_something, arg1, arg2)   # [rank 0's return, rank 1's return]

Each process imports this module's caller by its module name, so ``fn`` must be a module-level
function of a test module (spawned processes cannot receive closures). Every rank runs
``fn(rank, world_size, *args)`` after ``torch.distributed.init_process_group("gloo")`` through a
file store in a fresh temporary directory, with one CPU thread (the machines running CI have two
cores, shared by every rank); the return values come back through a queue, so they must pickle
(tensors are fine). A rank that raises fails the call with that rank's traceback; a rank that hangs
(a collective another rank never reaches) fails it after ``timeout`` seconds and the processes are
killed. Starting a process costs about two seconds (importing torch), so a test module runs many
checks inside one call rather than one call per check.
"""
from __future__ import annotations

import datetime
import os
import pickle
import queue
import tempfile
import traceback
from typing import Any, Callable, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world_size: int, store_path: str, results, fn: Callable, args: tuple) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        store = dist.FileStore(store_path, world_size)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=60))
        try:
            # Pickled here, by value: the queue would share a tensor's memory through a file
            # descriptor that this process serves, and it may exit before the parent fetches it.
            results.put((rank, "ok", pickle.dumps(fn(rank, world_size, *args))))
        finally:
            dist.destroy_process_group()
    except BaseException:  # report every failure, KeyboardInterrupt included, to the parent
        results.put((rank, "error", traceback.format_exc()))


def run_distributed(world_size: int, fn: Callable, *args: Any, timeout: float = 120.0) -> List[Any]:
    """``[fn(rank, world_size, *args) for rank in range(world_size)]``, each on its own spawned
    process in one gloo group; raises ``AssertionError`` with the failing rank's traceback."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="noisefast-dist-") as tmp:
        store_path = os.path.join(tmp, "store")
        procs = [ctx.Process(target=_worker, args=(rank, world_size, store_path, results, fn, args), daemon=True)
                 for rank in range(world_size)]
        for p in procs:
            p.start()
        out: dict = {}
        errors = []
        try:
            while len(out) + len(errors) < world_size:
                try:
                    rank, status, value = results.get(timeout=timeout)
                except queue.Empty:
                    missing = sorted(set(range(world_size)) - set(out) - {r for r, _ in errors})
                    raise AssertionError(f"ranks {missing} of {world_size} did not finish {fn.__name__} "
                                         f"within {timeout} s") from None
                if status == "ok":
                    out[rank] = pickle.loads(value)
                else:
                    errors.append((rank, value))
                    break  # the other ranks may be stuck in a collective: stop waiting for them
        finally:
            for p in procs:
                p.join(timeout=5 if not errors else 0.5)
                if p.is_alive():
                    p.kill()
                    p.join()
        if errors:
            rank, tb = errors[0]
            raise AssertionError(f"rank {rank} of {world_size} failed in {fn.__name__}:\n{tb}")
        return [out[r] for r in range(world_size)]
