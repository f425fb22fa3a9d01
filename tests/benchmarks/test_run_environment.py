"""The benchmark workers' environment: thread counts and the OpenMP wait policy (``--omp-wait-policy``)."""

import pytest

from benchmarks.run import WAIT_POLICIES, build_parser, worker_environment


def test_threads_and_policy_reach_the_worker():
    env = worker_environment(2, "ACTIVE")
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"], env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"]) == ("2",) * 3
    assert env["OMP_WAIT_POLICY"] == "ACTIVE"


def test_unset_leaves_the_runtime_default(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # the harness's own setting must not leak into the worker
    assert "OMP_WAIT_POLICY" not in worker_environment(1, "unset")


def test_parser_defaults_to_passive_and_rejects_other_values(monkeypatch, capsys):
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert build_parser().parse_args([]).omp_wait_policy == "PASSIVE"
    assert build_parser().parse_args(["--omp-wait-policy", "unset"]).omp_wait_policy == "unset"
    assert set(WAIT_POLICIES) == {"PASSIVE", "ACTIVE", "unset"}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--omp-wait-policy", "spin"])
    assert "invalid choice" in capsys.readouterr().err
