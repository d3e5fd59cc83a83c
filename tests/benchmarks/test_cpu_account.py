"""The replication benchmark's per-process CPU account (benchmarks/cpu_account.py): the
/proc parsers and the utilisation arithmetic, on fixed texts and on this test's own process."""

import os

import pytest

from benchmarks import cpu_account

# a walsender's line as the kernel writes it, the name with spaces and parentheses
STAT = ("4242 (postgres: (wal) sender) S 1 4242 4242 0 -1 4194560 120 0 0 0 "
        "250 37 0 0 20 0 1 0 99 123456 789 18446744073709551615")


def test_stat_line_utime_plus_stime_from_after_the_name():
    assert cpu_account.stat_cpu_seconds(STAT, clk_tck=100) == pytest.approx(2.87)


def test_schedstat_on_cpu_and_waiting():
    assert cpu_account.schedstat_seconds("1500000000 250000000 42\n") == (1.5, 0.25)


def test_own_process_is_read_and_a_missing_one_is_none():
    busy = sum(i * i for i in range(300_000))  # some CPU of our own to read back
    assert busy > 0
    assert cpu_account.cpu_seconds(os.getpid()) > 0
    assert cpu_account.backend_cpu_seconds(os.getpid()) > 0
    assert cpu_account.runqueue_wait_seconds(os.getpid()) >= 0
    gone = 2 ** 22 + 1  # above pid_max's default ceiling: no such process
    assert cpu_account.cpu_seconds(gone) is None
    assert cpu_account.runqueue_wait_seconds(gone) is None


def test_utilisation_adds_a_labels_processes_and_counts_new_ones_from_zero():
    before = {("walsender", 1): 10.0, ("target backends", 2): 1.0, ("target backends", 9): 5.0}
    after = {("walsender", 1): 12.0, ("target backends", 2): 1.5, ("target backends", 3): 0.5}
    use = cpu_account.utilisation(before, after, wall=2.0)
    # pid 9 exited inside the phase: not counted; pid 3 started inside it: all of it counts
    assert use == {"walsender": pytest.approx(1.0), "target backends": pytest.approx(0.5)}
    with pytest.raises(ValueError):
        cpu_account.utilisation(before, after, wall=0)


def test_format_joins_each_process_with_its_wait():
    text = cpu_account.format_utilisation({"walsender": 0.98, "sidecar": 0.4,
                                           "walsender waited": 0.02})
    assert text == "walsender 98% (+2% wait), sidecar 40%"
