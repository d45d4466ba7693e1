"""Draw noisefast's level distributions and curricula into docs/images/.

    python examples/plot_schedules.py [--out docs/images]

Writes level_distributions.png (probability of each level pair under the iCT log-normal, the
polynomial (Gokmen et al. 2024) and the uniform distributions, N = 161 Karras levels) and
curricula.png (N(k) over 400k steps for the iCT, sinusoidal and original CT curricula).
Needs matplotlib (pip install noisefast[plot]).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from noisefast import plot

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="output folder")
    parser.add_argument("--levels", type=int, default=161, help="number of Karras levels N")
    parser.add_argument("--total-steps", type=int, default=400_000, help="training length K")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    plot.level_distributions(args.levels, path=args.out / "level_distributions.png")
    plot.curriculum(args.total_steps, path=args.out / "curricula.png")
    for name in ("level_distributions.png", "curricula.png"):
        print("wrote", args.out / name)


if __name__ == "__main__":
    main()
