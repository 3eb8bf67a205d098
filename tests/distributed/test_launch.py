"""Ranks on demand: one process group per world size, reused; failures name the rank and never hang.

The tasks below are module-level functions, as ``RankGroup.run`` requires: ranks forked after this
module was imported find them by name.
"""

from __future__ import annotations

import os
import sys
import time

import pytest
import torch
import torch.distributed as dist

from initcore.distributed import launch
from initcore.distributed.launch import RankFailure, RankGroup, group, pids

# A generous bound for tasks that should answer at once; the tests below that expect a failure show
# that it came from what they provoke (a death, a timeout), not from this bound.
SLOW_S = 120.0


def whoami() -> tuple[int, int, str, float]:
    total = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(total)  # a collective: the ranks really are one group
    return dist.get_rank(), dist.get_world_size(), dist.get_backend(), float(total)


def ones_times_rank(n: int) -> torch.Tensor:
    return torch.ones(n) * dist.get_rank()


def raise_on(rank: int) -> None:
    if dist.get_rank() == rank:
        raise ValueError(f"boom on rank {rank}")
    dist.barrier()  # the other ranks wait in a collective for the one that raised


def exit_on(rank: int, code: int) -> None:
    if dist.get_rank() == rank:
        os._exit(code)
    dist.barrier()


def hang_on(rank: int) -> str:
    if dist.get_rank() == rank:
        time.sleep(3600)
    return "answered"


def mesh_size() -> int:
    return launch.world_mesh().size()


def test_every_rank_runs_the_task_in_one_process_group():
    assert group(2).run(whoami, timeout_s=SLOW_S) == [(0, 2, "gloo", 1.0), (1, 2, "gloo", 1.0)]
    assert group(2).run(mesh_size, timeout_s=SLOW_S) == [2, 2]


def test_a_group_is_reused_across_calls_and_results_carry_tensors():
    g = group(2)
    before = pids(g)
    out = g.run(ones_times_rank, 3, timeout_s=SLOW_S)
    assert group(2) is g and pids(g) == before
    torch.testing.assert_close(out[1], torch.ones(3))
    torch.testing.assert_close(out[0], torch.zeros(3))


def _assert_closed(g: RankGroup, old_pids: list[int]) -> None:
    assert not g.alive and pids(g) == []
    for pid in old_pids:  # terminated and reaped: no process left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_rank_that_raises_is_named_with_its_traceback():
    g = RankGroup(2)
    started = pids(g)
    with pytest.raises(RankFailure, match=r"(?s)rank 1 of 2 raised while running .*raise_on.*ValueError: boom on rank"):
        g.run(raise_on, 1, timeout_s=SLOW_S)
    _assert_closed(g, started)


def test_a_rank_that_dies_is_named_with_its_exit_code():
    g = RankGroup(2)
    started = pids(g)
    with pytest.raises(RankFailure, match=r"rank 1 of 2 died \(exit code 3\) while running .*exit_on"):
        g.run(exit_on, 1, 3, timeout_s=SLOW_S)  # "died", not "did not answer": found before the bound
    _assert_closed(g, started)


def test_a_rank_that_hangs_is_named_when_the_timeout_passes():
    g = RankGroup(2)
    started = pids(g)
    with pytest.raises(RankFailure, match=r"^rank 1 of 2 did not answer within 1.5 s while running .*hang_on"):
        g.run(hang_on, 1, timeout_s=1.5)  # rank 0 answers at once: only rank 1 is named
    _assert_closed(g, started)
    with pytest.raises(RankFailure, match="is closed"):
        g.run(whoami)


def test_a_failed_cached_group_is_replaced_by_a_fresh_one():
    first = group(3)
    with pytest.raises(RankFailure, match="rank 2 of 3 raised"):
        first.run(raise_on, 2, timeout_s=SLOW_S)
    second = group(3)
    assert second is not first and second.alive
    assert [r[0] for r in second.run(whoami, timeout_s=SLOW_S)] == [0, 1, 2]
    second.close()


def test_the_os_chooses_each_groups_port_so_groups_side_by_side_do_not_collide():
    # rank 0 binds port 0 and reports the port it got: nothing is chosen first and bound later, so
    # groups of parallel test workers (pytest-xdist) cannot race for a port
    a, b = RankGroup(2), RankGroup(2)
    try:
        assert a.port != b.port and a.port > 0 and b.port > 0
        assert a.run(whoami, timeout_s=SLOW_S)[1][3] == b.run(whoami, timeout_s=SLOW_S)[1][3] == 1.0
    finally:
        a.close()
        b.close()
    assert not a.alive and not b.alive


@pytest.mark.parametrize("kwargs, match", [
    ({"world_size": 0}, "world_size must be a positive integer, got 0"),
    ({"world_size": True}, "world_size must be a positive integer"),
    ({"world_size": 2, "backend": "mpi"}, "unknown backend 'mpi'; valid: gloo, nccl"),
    ({"world_size": 2, "start_method": "forkserver"}, "unknown start_method 'forkserver'; valid: fork, spawn"),
])
def test_bad_input_names_what_is_valid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RankGroup(**kwargs)


@pytest.mark.skipif(torch.cuda.device_count() >= 64, reason="needs fewer CUDA devices than ranks asked for")
def test_nccl_with_too_few_devices_says_how_many_there_are():
    with pytest.raises(ValueError, match=f"nccl with 64 ranks needs 64 CUDA devices; {torch.cuda.device_count()} are"):
        RankGroup(64, "nccl")


def test_spawned_ranks_work_as_forked_ones():
    # CUDA ranks are spawned (CUDA does not survive a fork): the same path, on the CPU, with one rank
    # (a spawned rank imports torch anew, seconds of CPU)
    g = RankGroup(1, start_method="spawn")
    try:
        assert g.run(dist.get_world_size, timeout_s=SLOW_S) == [1]
        assert g.run(dist.get_backend, timeout_s=SLOW_S) == ["gloo"]
    finally:
        g.close()


def test_ranks_do_not_outlive_a_killed_caller():
    # a caller killed without closing its group (a test run stopped by a timeout): its ranks notice the
    # parent is gone within a second of waiting for work, and leave
    import subprocess
    import sys

    script = ("import os, sys; from initcore.distributed import group, launch; "
              "print(*launch.pids(group(2)), flush=True); os._exit(9)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=SLOW_S)
    ranks = [int(pid) for pid in out.stdout.split()]
    assert len(ranks) == 2, out.stderr
    deadline = time.monotonic() + 30  # a bound, not a timing: each rank checks once a second
    while time.monotonic() < deadline and any(_alive(pid) for pid in ranks):
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in ranks)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper is gone too
        return f.read().split(") ")[-1][0] != "Z"


def test_ranks_started_before_a_folder_was_importable_run_a_function_defined_there(tmp_path, monkeypatch):
    """A notebook or a test suite starts its ranks once; a user's recipe may come from a folder put on the
    import path later. The ranks follow the caller's import path; what they still cannot import is reported
    as the rank's error, not as a death."""
    g = group(2)
    g.run(whoami, timeout_s=SLOW_S)  # started before the folders exist
    source = "import torch.distributed as dist\n\ndef rank():\n    return dist.get_rank()\n"
    name = f"late_recipe_{os.getpid()}_{abs(hash(str(tmp_path))) % 10**6}"
    for folder in ("found", "hidden"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{name}_{folder}.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path / folder))
    found, hidden = __import__(f"{name}_found"), __import__(f"{name}_hidden")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path / "hidden")])  # imported, then gone
    assert g.run(found.rank, timeout_s=SLOW_S) == [0, 1]
    assert g.alive
    with pytest.raises(RankFailure, match=rf"(?s)rank 0 of 2 raised.*No module named '{name}_hidden'"):
        g.run(hidden.rank, timeout_s=SLOW_S)
