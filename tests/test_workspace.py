"""megzoo.train.cpu_engine.workspace: host buffers reused from one training step to the next."""
import numpy as np
import pytest

from megzoo.train.cpu_engine.workspace import Workspace

MB = 1 << 20


def test_a_given_back_buffer_serves_the_next_request_of_any_shape_that_fits():
    ws = Workspace()
    a = ws.take((512, 1024))  # 2 MB float32
    assert a.shape == (512, 1024) and a.dtype == np.float32 and a.flags.c_contiguous
    address = a.__array_interface__["data"][0]
    b = ws.take((1024, 300), np.float64)  # 2.34 MB
    ws.give(a, b)
    c = ws.take((256, 1024))  # 1 MB fits the 2 MB buffer (at most twice its size)
    assert c.__array_interface__["data"][0] == address and ws.allocations == 2
    assert ws.lent_bytes == 2 * MB and ws.free_bytes == 1024 * 300 * 8  # the whole buffer is lent


def test_a_view_of_a_lent_array_gives_it_back_and_a_second_give_raises():
    ws = Workspace()
    a = ws.take((4, 1024, 1024))
    ws.give(a.reshape(-1, 1024).T)  # a view leads back to its buffer
    assert ws.lent_bytes == 0 and ws.free_bytes == 16 * MB
    with pytest.raises(ValueError, match="not lent from this workspace .or was given back already"):
        ws.give(a)
    with pytest.raises(ValueError, match="not lent from this workspace"):
        ws.give(np.empty((4, MB), np.float32))


def test_small_arrays_and_none_bypass_the_pool():
    ws = Workspace()
    small = ws.take((16, 16))
    ws.give(small, None)
    assert ws.allocations == 0 and ws.free_bytes == 0 and ws.peak_bytes == 0


def test_zeros_are_zero_even_in_a_reused_buffer():
    ws = Workspace()
    a = ws.take((MB,))
    a.fill(7)
    ws.give(a)
    z = ws.zeros((MB,))
    assert z.__array_interface__["data"][0] == a.__array_interface__["data"][0]
    assert not z.any()


def test_free_buffers_beyond_one_and_a_half_times_the_peak_are_dropped_oldest_first():
    ws = Workspace()
    first = ws.take((2 * MB,), np.uint8)  # lent at once: peak 4 MB
    second = ws.take((2 * MB,), np.uint8)
    ws.give(first, second)
    assert ws.peak_bytes == 4 * MB and ws.free_bytes == 4 * MB
    third = ws.take((3 * MB,), np.uint8)  # no free buffer fits: a new one
    ws.give(third)  # 7 MB free > 6 MB: the oldest (first) goes
    assert ws.free_bytes == 5 * MB and ws.allocations == 3
    again = ws.take((2 * MB,), np.uint8)
    assert again.__array_interface__["data"][0] == second.__array_interface__["data"][0]
    ws.clear()
    assert ws.free_bytes == 0 and ws.peak_bytes == 2 * MB  # the lent one still counts


def test_a_lost_array_is_not_counted_as_lent():
    ws = Workspace()
    ws.take((2 * MB,), np.uint8)  # never given back, dropped at once
    assert ws.lent_bytes == 0 and ws.peak_bytes == 2 * MB
