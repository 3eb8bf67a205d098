"""Ranks on demand: N processes joined in one torch.distributed process group, kept and handed tasks.

Starting processes is the slow part of a distributed check (a spawned rank imports torch anew: ~3 s of
CPU each), so a ``RankGroup`` is started once per world size and reused: ``group(4).run(fn, ...)`` runs
``fn`` on all four ranks and returns what each returned. On the CPU the ranks are forked from the
calling process (torch is already imported); CUDA ranks are spawned (CUDA does not survive a fork).
Every rank computes on one torch thread, as under torchrun (see ``_rank_main``).

Ports: rank 0 opens the rendezvous store on port 0, so the OS picks a free port, and tells the
others which; no port is chosen and then bound later, so parallel test workers (pytest-xdist) cannot
race for one. Failures are bounded: a task that raises, a rank that dies and a rank that does not
answer within the timeout each raise ``RankFailure`` naming the rank, and the group is torn down (its
other ranks may be blocked in a collective); the next ``group(N)`` starts a fresh one.
"""

from __future__ import annotations

import atexit
import importlib
import io
import os
import pickle
import queue
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

BACKENDS = {"gloo": "cpu", "nccl": "cuda"}  # backend -> the device its ranks compute on
HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0  # forked ranks are up in well under a second; a spawned one imports torch first
TASK_TIMEOUT_S = 300.0  # default bound on one task; checks of small models take seconds
POLL_S = 0.05


# Imported once in the calling process before ranks are forked from it, so that no rank imports them on its
# own: torch._dynamo alone is ~2 s of CPU, and every rank needs it (DTensor's constructor imports it).
FORK_PRELOAD = ("torch._dynamo", "torch.distributed.fsdp", "torch.distributed.tensor",
                "torch.distributed.tensor._utils", "torch.distributed.tensor.parallel", "torch.distributed.device_mesh")


class RankFailure(RuntimeError):
    """A rank raised, died or did not answer in time; the message names the rank(s) and the task."""


def _dumps(obj: Any) -> bytes:
    # torch.save, not the queue's own pickling: tensors then travel as bytes through the pipe, with no
    # shared-memory file descriptors or sharing threads left behind in either process.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _loads(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=False)


# --- inside a rank ---------------------------------------------------------------------------------------

_MESH = None


def world_mesh():
    """In a rank: the 1-D ``DeviceMesh`` over the whole group, made once per process."""
    global _MESH
    if _MESH is None:
        from torch.distributed.device_mesh import init_device_mesh

        _MESH = init_device_mesh(device(), (dist.get_world_size(),))
    return _MESH


def device() -> str:
    """In a rank: where it computes, ``"cpu"`` (gloo) or ``"cuda"`` (nccl)."""
    return BACKENDS[dist.get_backend()]


def _get(tasks: mp.Queue, parent: int) -> Any:
    """The next message for this rank; None once the calling process is gone (killed, say), so that no
    rank outlives it waiting for work."""
    while True:
        try:
            return tasks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                return None


def _follow(path: list[str]) -> None:
    """Put the calling process's import path into this rank's (a rank forked before a user's folder became
    importable must still find the recipe defined there), and forget what the finders cached of it."""
    added = [p for p in path if p not in sys.path]
    if added:
        sys.path[:0] = added
    importlib.invalidate_caches()


def _rank_main(rank: int, world_size: int, backend: str, pg_timeout_s: float, tasks: mp.Queue,
               results: mp.Queue) -> None:
    # One torch thread per rank, as torchrun's OMP_NUM_THREADS=1: OpenMP does not survive a fork with its
    # threads, ranks share the cores anyway, and numbers that depend on the thread count (a QR's
    # rounding) are then those of one process on one thread.
    torch.set_num_threads(1)
    parent = os.getppid()
    # A rank is not a test: a forked one would inherit whatever filters were active when it was forked
    # (pytest's "error" inside a test, other filters at collection). Python's defaults, whenever forked.
    warnings.resetwarnings()
    warnings.simplefilter("default")
    if backend == "nccl":
        torch.cuda.set_device(rank)
    timeout = timedelta(seconds=pg_timeout_s)
    try:
        if rank == 0:
            store = dist.TCPStore(HOST, 0, world_size, is_master=True, timeout=timeout, wait_for_workers=False)
            results.put((0, "port", store.port))
        else:
            port = _get(tasks, parent)
            if port is None:
                return
            store = dist.TCPStore(HOST, port, world_size, is_master=False, timeout=timeout)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
        dist.barrier()
    except BaseException:
        results.put((rank, "ready", ("error", traceback.format_exc())))
        return
    results.put((rank, "ready", ("ok", None)))
    while True:
        message = _get(tasks, parent)
        if message is None:
            break
        call, path, task = message
        try:
            _follow(path)
            fn, args, kwargs = pickle.loads(task)
            answer = ("ok", _dumps(fn(*args, **kwargs)))
        except BaseException:
            answer = ("error", traceback.format_exc())
        results.put((rank, call, answer))
    dist.destroy_process_group()


# --- in the calling process -------------------------------------------------------------------------------


def _describe(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


class RankGroup:
    """``world_size`` processes in one process group (``backend``), running the tasks ``run`` hands them.

    Args:
        world_size: number of ranks.
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (one CUDA device per rank).
        start_method: ``"fork"`` or ``"spawn"``; by default fork for gloo, spawn for nccl.
        timeout_s: default bound on a task (``run`` takes its own); also the process group's own timeout.

    Raises:
        ValueError: a world size below 1, an unknown backend, nccl with fewer CUDA devices than ranks.
        RankFailure: a rank that did not come up, naming it.
    """

    def __init__(self, world_size: int, backend: str = "gloo", *, start_method: str | None = None,
                 timeout_s: float = TASK_TIMEOUT_S) -> None:
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        if backend == "nccl" and torch.cuda.device_count() < world_size:
            raise ValueError(f"nccl with {world_size} ranks needs {world_size} CUDA devices; "
                             f"{torch.cuda.device_count()} are available")
        start_method = start_method or ("fork" if backend == "gloo" else "spawn")
        if start_method not in ("fork", "spawn"):
            raise ValueError(f"unknown start_method {start_method!r}; valid: fork, spawn")
        self.world_size, self.backend, self.timeout_s = world_size, backend, timeout_s
        self.port: int | None = None  # of the rendezvous store, which rank 0 opened on a port the OS chose
        self._calls = 0
        context = mp.get_context(start_method)
        if start_method == "fork":
            for module in FORK_PRELOAD:
                importlib.import_module(module)
        self._results = context.Queue()
        self._tasks = [context.Queue() for _ in range(world_size)]
        self._procs = [context.Process(target=_rank_main, name=f"initcore-rank{r}-of-{world_size}", daemon=True,
                                       args=(r, world_size, backend, timeout_s, self._tasks[r],
                                             self._results))
                       for r in range(world_size)]
        for p in self._procs:
            p.start()
        try:
            self.port = port = self._wait({0}, "port", START_TIMEOUT_S, "starting the group (opening the store)")[0]
            for r in range(1, world_size):
                self._tasks[r].put(port)
            started = self._wait(set(range(world_size)), "ready", START_TIMEOUT_S, "joining the process group")
            for r, (status, detail) in sorted(started.items()):
                if status == "error":
                    raise RankFailure(f"rank {r} of {world_size} failed to join the process group:\n{detail}")
        except BaseException:
            self.close(graceful=False)
            raise

    @property
    def alive(self) -> bool:
        """Whether every rank is still running (a failed group is closed, not alive)."""
        return bool(self._procs) and all(p.is_alive() for p in self._procs)

    def run(self, fn: Callable[..., Any], *args: Any, timeout_s: float | None = None, **kwargs: Any) -> list[Any]:
        """Run ``fn(*args, **kwargs)`` on every rank at once; return each rank's result, by rank.

        ``fn`` must be importable by name (a module-level function or a picklable object): the ranks
        unpickle it. Results travel back through ``torch.save``, so tensors are fine.

        Raises:
            RankFailure: ``fn`` raised on a rank (with its traceback), a rank died (with its exit code),
                or a rank did not answer within ``timeout_s`` (default: the group's). The group is closed.
        """
        if not self.alive:
            raise RankFailure(f"the group of {self.world_size} ranks is closed (a rank failed before); "
                              "start a new one with initcore.distributed.group()")
        self._calls += 1
        call = self._calls
        what = f"running {_describe(fn)}"
        try:
            # pickled here, unpickled by the rank once it has this process's import path (see _follow): a
            # function it cannot import is then an error it reports, not a crash of its queue's reader
            task = pickle.dumps((fn, args, kwargs))
            for q in self._tasks:
                q.put((call, list(sys.path), task))
            answers = self._wait(set(range(self.world_size)), call, timeout_s or self.timeout_s, what)
        except BaseException:
            self.close(graceful=False)
            raise
        errors = {r: detail for r, (status, detail) in answers.items() if status == "error"}
        if errors:
            self.close(graceful=False)
            r = min(errors)
            others = f" (ranks {sorted(errors)} raised)" if len(errors) > 1 else ""
            raise RankFailure(f"rank {r} of {self.world_size} raised while {what}{others}:\n{errors[r]}")
        return [_loads(answers[r][1]) for r in range(self.world_size)]

    def _wait(self, ranks: set[int], tag: object, timeout_s: float, what: str) -> dict[int, Any]:
        """Collect ``(rank, tag, payload)`` from ``ranks``; raise RankFailure on a death, an error or the timeout.

        A rank that raised is reported once the others have answered, died or a short grace period has
        passed: if another rank died meanwhile, the death is named first, since it is the likelier cause.
        """
        got: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        grace_end = None
        while len(got) < len(ranks):
            try:
                rank, got_tag, payload = self._results.get(timeout=POLL_S)
            except queue.Empty:
                pass
            else:
                if got_tag == tag:
                    got[rank] = payload
                    if isinstance(payload, tuple) and payload and payload[0] == "error" and grace_end is None:
                        grace_end = time.monotonic() + 1.0
                continue
            dead = {r: p.exitcode for r, p in enumerate(self._procs) if r in ranks - set(got) and not p.is_alive()}
            if dead:
                r = min(dead)
                raise RankFailure(f"rank {r} of {self.world_size} died (exit code {dead[r]}) while {what}"
                                  + (f"; ranks {sorted(dead)} are gone" if len(dead) > 1 else ""))
            now = time.monotonic()
            if grace_end is not None and now > grace_end:
                break  # a rank raised and the others are (likely) blocked in a collective with it
            if now > deadline:
                missing = sorted(ranks - set(got))
                names = ", ".join(str(r) for r in missing)
                raise RankFailure(f"rank{'s' if len(missing) > 1 else ''} {names} of {self.world_size} did not "
                                  f"answer within {timeout_s:g} s while {what} (hung?)")
        return got

    def close(self, graceful: bool = True) -> None:
        """Stop the ranks: ask them to leave the group (``graceful``), then terminate what is left."""
        if graceful and self.alive:
            for q in self._tasks:
                q.put(None)
            for p in self._procs:
                p.join(timeout=5)
        for p in self._procs:
            if p.is_alive():
                p.terminate()
        for p in self._procs:
            p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join()
        for q in (*self._tasks, self._results):
            q.cancel_join_thread()
            q.close()
        self._procs = []


_GROUPS: dict[tuple[int, str], RankGroup] = {}


def group(world_size: int, backend: str = "gloo") -> RankGroup:
    """The process's ``RankGroup`` of ``world_size`` ranks on ``backend``: started on first use, reused
    after, started afresh when the previous one failed; all are closed when the process exits."""
    key = (world_size, backend)
    current = _GROUPS.get(key)
    if current is None or not current.alive:
        if current is not None:
            current.close(graceful=False)
        _GROUPS[key] = current = RankGroup(world_size, backend)
    return current


@atexit.register
def close_all() -> None:
    """Close every group ``group`` started (also run at exit)."""
    while _GROUPS:
        _, g = _GROUPS.popitem()
        g.close()


def pids(g: RankGroup) -> list[int]:
    """The process ids of ``g``'s ranks, by rank (empty once closed)."""
    return [p.pid for p in g._procs]


__all__ = ["BACKENDS", "RankFailure", "RankGroup", "close_all", "device", "group", "pids", "world_mesh"]
