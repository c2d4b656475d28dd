"""posttrain.profiling: the profiled-step summary that the benchmarks and the GPU check report."""

import torch

from posttrain.profiling import summarize_profile

MIB = 2**20


def test_cpu_step_peak_is_the_high_water_of_tensors_allocated_during_the_profile():
    resident = torch.ones(4 * MIB // 4)  # live before profiling: not part of the step's peak
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        first = torch.ones(MIB // 4)
        second = torch.ones(MIB // 4)
        del first
        third = torch.ones(MIB // 8)
    summary = summarize_profile(profiler, wall_s=1.0)
    assert summary["cpu_step_peak_mib"] == 2.0
    assert summary["compute_op_counts"]["aten::fill_"] == 3  # torch.ones: an allocation, then a fill kernel
    del resident, second, third


def test_without_memory_profiling_no_peak_is_reported():
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        torch.ones(8).sum()
    assert "cpu_step_peak_mib" not in summarize_profile(profiler, wall_s=1.0)


def test_batch_search_doubles_until_out_of_memory_and_reports_the_last_fit():
    from posttrain.profiling import largest_fitting_batch

    def try_batch(n):
        if n > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"batch": n}

    found = largest_fitting_batch(try_batch, start=2, limit=64)
    assert found["largest"] == 8
    assert found["tried"] == {2: {"batch": 2}, 4: {"batch": 4}, 8: {"batch": 8}, 16: "out of memory"}


def test_batch_search_stops_at_the_limit_and_lets_other_errors_through():
    import pytest

    from posttrain.profiling import largest_fitting_batch

    assert largest_fitting_batch(lambda n: n, start=4, limit=16)["largest"] == 16

    def broken(n):
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError):
        largest_fitting_batch(broken, start=1, limit=4)
