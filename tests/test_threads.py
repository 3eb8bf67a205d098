"""initcore.threads: one intra-op thread inside, the count restored after, also when the body raises."""

import pytest
import torch

from initcore.threads import one_thread


def test_one_thread_inside_and_the_count_restored():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="inside"), one_thread():
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
