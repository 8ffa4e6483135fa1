"""Regenerate the user guide's figures (docs/figures/*.png) from a run of the demo.

Run:  python examples/make_doc_figures.py [--quick]

The figures in the user guide are the demo's own: this runs ``glacierxr demo`` into a scratch
folder and copies its PNGs next to the docs.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from glacierxr.demo import run_demo

FIGURES = ("composites.png", "alignment.png", "flow.png", "velocity.png", "learning_curve.png", "forecast.png",
           "skill.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--docs", default=str(Path(__file__).resolve().parents[1] / "docs" / "figures"))
    args = parser.parse_args()
    target = Path(args.docs)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        report = run_demo(Path(scratch) / "demo", quick=args.quick)
        for name in FIGURES:
            shutil.copy2(report.parent / name, target / name)
            print(target / name)


if __name__ == "__main__":
    main()
