from __future__ import annotations

import pytest

from varrl.schedule import ScaleSchedule

SIDES_128 = (1, 2, 3, 4, 6, 8, 11, 16)
NEXTFLOW_SIDES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 48, 64)


@pytest.fixture
def sched() -> ScaleSchedule:
    return ScaleSchedule.square(SIDES_128, 128)


def test_tokens_and_offsets(sched):
    assert sched.num_steps == 8
    assert sched.tokens_per_step == (1, 4, 9, 16, 36, 64, 121, 256)
    assert sched.offsets == (0, 1, 5, 14, 30, 66, 130, 251, 507)
    assert sched.total_tokens == 507
    assert sched.final_grid == (16, 16)


def test_resolution_per_step(sched):
    # 128 px / 16 cells = 8 px per final cell
    assert [sched.resolution(t) for t in range(1, 9)] == [8, 16, 24, 32, 48, 64, 88, 128]
    with pytest.raises(ValueError, match="outside 1..8"):
        sched.resolution(0)
    with pytest.raises(ValueError, match="outside 1..8"):
        sched.resolution(9)


def test_step_at_resolution(sched):
    assert sched.step_at_resolution(64) == 6
    assert sched.grids[6 - 1] == (8, 8)
    assert sched.step_at_resolution(8) == 1
    assert sched.step_at_resolution(128) == 8


def test_inexact_resolution_lists_resolutions(sched):
    with pytest.raises(ValueError) as e:
        sched.step_at_resolution(60)
    msg = str(e.value)
    assert "60px" in msg
    assert "[8, 16, 24, 32, 48, 64, 88, 128]" in msg
    with pytest.raises(ValueError, match="exceeds the final resolution 128px"):
        sched.step_at_resolution(256)


def test_resolve_step(sched):
    assert sched.resolve_step(3) == 3
    assert sched.resolve_step("3") == 3
    assert sched.resolve_step("64px") == 6
    assert sched.resolve_step(" 64PX ") == 6
    assert sched.resolve_step("8x8") == 6
    assert sched.resolve_step("16x16") == 8


@pytest.mark.parametrize("bad", ["abc", "64 px", "8x4", "5x5", "65px", "", "3.5"])
def test_resolve_step_bad_strings(sched, bad):
    with pytest.raises(ValueError):
        sched.resolve_step(bad)


@pytest.mark.parametrize("bad", [0, 9, -1, True])
def test_resolve_step_bad_ints(sched, bad):
    with pytest.raises(ValueError):
        sched.resolve_step(bad)


def test_invalid_schedules():
    with pytest.raises(ValueError, match="at least one grid"):
        ScaleSchedule((), 32)
    with pytest.raises(ValueError, match="coarse to fine"):
        ScaleSchedule.square((1, 4, 2), 32)
    with pytest.raises(ValueError, match="not a multiple"):
        ScaleSchedule.square((1, 2, 3), 32)


def test_nextflow_schedule():
    s = ScaleSchedule.square(NEXTFLOW_SIDES, 1024)
    assert s.num_steps == 18
    assert s.total_tokens == 10084
    assert s.step_at_resolution(256) == 12
    assert s.grids[11] == (16, 16)
    assert s.offsets[12] == 900
    assert sum(s.tokens_per_step[:12]) == 900
    assert s.resolve_step("256px") == 12
    assert s.resolution(18) == 1024
    assert s.resolution(1) == 16


def test_step_of_token():
    s = ScaleSchedule.square((1, 2, 3), 6)
    assert s.step_of_token() == [0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    big = ScaleSchedule.square(SIDES_128, 128)
    sot = big.step_of_token()
    assert len(sot) == 507
    for t in range(big.num_steps):
        lo, hi = big.offsets[t], big.offsets[t + 1]
        assert set(sot[lo:hi]) == {t}
