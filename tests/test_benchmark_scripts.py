"""The prepared benchmark scripts name files that exist: a test or benchmark moved without them would
fail only on the rare machine that runs them (``benchmarks/gpu_check.sh`` runs where a GPU is lent)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_and_benchmark_the_scripts_name_exists():
    sources = sorted((ROOT / "benchmarks").glob("*.sh")) + [ROOT / "benchmarks" / "README.md"]
    named = {(source.name, path) for source in sources
             for path in re.findall(r"\b((?:tests|benchmarks)/[\w/.-]+\.(?:py|sh))\b", source.read_text())}
    assert {path for _, path in named} >= {"tests/test_cuda.py", "benchmarks/bench_index.py"}
    missing = sorted(f"{source}: {path}" for source, path in named if not (ROOT / path).is_file())
    assert not missing, missing
