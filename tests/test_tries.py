"""Tries on disk: a try is counted as it starts, taken back when the machine or a stop is to blame, and a try
shared with other items' counts against none of them but sends each to be tried alone."""

from __future__ import annotations

import pytest

from pipeline.engine.claims import Tries, release_in_flight
from pipeline.engine.failures import InfrastructureError
from pipeline.engine.journal import TryCount, read_tries


@pytest.fixture(autouse=True)
def nothing_left_in_flight():
    """The tries a test leaves in flight (as a dying worker would) are this process's until released."""
    yield
    release_in_flight()


def on_disk(path) -> dict[str, TryCount]:
    return read_tries(path)


def test_a_try_alone_counts_as_it_starts_and_a_death_stays_counted(tmp_path):
    path = tmp_path / ".s_tries.json"
    tries = Tries(path, max_tries=2)
    tries.begin("a")
    assert on_disk(path)["a"] == TryCount(tries=1, failures=1, machine=0, error=None)
    again = Tries(path, max_tries=2)  # the worker died: a fresh process reads what it left
    assert not again.clean("a") and again.verdict("a") is None
    again.begin("a")
    assert again.verdict("a") is not None and "died each time" in again.verdict("a")


def test_a_shared_try_counts_no_death_or_machine_error_but_its_own_error(tmp_path):
    path = tmp_path / ".s_tries.json"
    tries = Tries(path, max_tries=1)
    for key in "abc":
        tries.begin(key, shared=True)
    assert {k: (v.tries, v.failures, v.shared) for k, v in on_disk(path).items()} == \
        dict.fromkeys("abc", (1, 0, True))
    fresh = Tries(path, max_tries=1)  # the worker died while on all three
    assert [(fresh.clean(k), fresh.verdict(k)) for k in "abc"] == [(False, None)] * 3  # alone next, not given up

    tries.succeeded("a")
    tries.failed("b", ValueError("its own"))  # the shared work told the items apart: counted
    tries.abandon()  # c: taken back
    entries = on_disk(path)
    assert (entries["a"].failures, entries["a"].shared, tries.clean("a")) == (0, False, True)
    assert (entries["b"].failures, entries["b"].error) == (1, "ValueError: its own")
    assert "given up" not in str(tries.verdict("c")) and tries.verdict("c") is None
    assert (entries["c"].tries, entries["c"].failures, entries["c"].shared) == (0, 0, True)
    assert tries.verdict("b").startswith("gave up after 1 tries: ValueError: its own")


def test_machine_errors_and_stops_take_the_try_back(tmp_path):
    path = tmp_path / ".s_tries.json"
    tries = Tries(path, max_tries=3)
    tries.begin("alone")
    with pytest.raises(InfrastructureError):
        tries.failed("alone", MemoryError("out of host memory"))
    tries.begin("shared", shared=True)
    with pytest.raises(InfrastructureError):
        tries.failed("shared", MemoryError("out of host memory"))
    entries = on_disk(path)
    assert (entries["alone"].tries, entries["alone"].failures, entries["alone"].machine) == (0, 0, 1)
    assert (entries["shared"].tries, entries["shared"].failures, entries["shared"].machine) == (0, 0, 0)
    tries.begin("alone")
    tries.begin("shared", shared=True)
    assert release_in_flight() == 2  # a worker closing: both taken back, each as it was counted
    entries = on_disk(path)
    assert (entries["alone"].tries, entries["alone"].failures) == (0, 0)
    assert (entries["shared"].tries, entries["shared"].failures, entries["shared"].shared) == (0, 0, True)
