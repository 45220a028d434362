"""benchmarks/e2e.py still runs, and every implementation's clients get every token."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.servers import python

pytestmark = pytest.mark.slow


def test_the_end_to_end_benchmark_runs_and_verifies_every_implementation() -> None:
    args = [python(), "benchmarks/e2e.py", "--loads", "100x2", "--repeats", "1"]
    args += ["--duration", "1", "--json"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=True)
    figures = json.loads(done.stdout[done.stdout.index("\n{") :])["100x2"]
    producers = figures.pop("producers")
    assert producers["cpu_seconds"] > 0
    assert {"sf", "sf0", "sf-plain", "bare", "broadcaster", "socketio"} == set(figures)
    for impl, summary in figures.items():
        assert summary["verified"], impl
        assert summary["tokens"] == 100 * 2 * 50, impl
