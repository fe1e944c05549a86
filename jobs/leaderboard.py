"""Rebuild or merge leaderboards from sweep directories.

    python jobs/leaderboard.py SWEEP_DIR [SWEEP_DIR ...] [--out DIR]

Each task's leaderboard is rebuilt in its sweep directory; several sweeps of one task are pooled into
``<out>/<task>/``. ``<out>/overview.md`` / ``overview.csv``: task, best metric, best config, gain over
scratch (``--out`` defaults to the sweep directory if one is given, else ./leaderboards). The last printed
line is the overview's path.
"""

import argparse
import sys
from pathlib import Path

from rayssl.tune.leaderboard import merge_leaderboards

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="sweep directories printed by jobs/tune.py")
    parser.add_argument("--out", default=None, help="output directory (default: the sweep dir if one, else ./leaderboards)")
    args = parser.parse_args()
    out = args.out or (args.dirs[0] if len(args.dirs) == 1 else "leaderboards")
    try:
        path = merge_leaderboards(args.dirs, out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(Path(path).read_text())
    print(path)
