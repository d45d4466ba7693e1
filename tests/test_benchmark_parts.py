"""`python -m benchmarks.run --part noise` and `--part training` together run every benchmark file once."""
import pathlib

from benchmarks.run import PARTS


def test_every_benchmark_file_is_in_exactly_one_part():
    files = sorted(p.name for p in (pathlib.Path(__file__).resolve().parent.parent / "benchmarks").glob("bench_*.py"))
    listed = sorted(f for part in PARTS.values() for f in part)
    assert listed == files
