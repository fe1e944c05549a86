"""Time to the first loss line of ``python jobs/pretrain.py`` (the embedded default), phase by phase.

    python benchmarks/first_step.py [--repeats 2] [--cold]

Runs the job (``max_steps=1``) and stamps each line as it arrives on its standard output: the job's start,
Ray up, the training run launched (the volumes preprocess while its worker starts), the DeepSpeed engine
built, the first loss line. ``--cold`` first removes what the first run on a new machine has to build (the
synthetic phantoms, DeepSpeed's compiled operators); the warm runs follow. Prints each phase's time from the command's start, medians over the
warm repeats; the last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = {  # phase -> the start of the job's line that ends it
    "Ray up": "[rayssl] Ray up",
    "training launched": "[rayssl] pre-training",  # the volumes preprocess meanwhile
    "engine built": "[rayssl] mae engine built",
    "first loss line": "[rayssl] epoch 0 step 1/",
}


def run_once(workdir: Path) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "jobs" / "pretrain.py"), "max_steps=1", f"run.storage_path={workdir}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=workdir)
    seen: dict[str, float] = {}
    lines = 0
    for line in proc.stdout:
        lines += 1
        text = line.split(")", 1)[-1].strip() if line.startswith(("(", "\x1b")) else line.strip()
        for phase, start in PHASES.items():
            if phase not in seen and text.startswith(start):
                seen[phase] = time.perf_counter() - t0
    proc.wait()
    seen["exit"] = time.perf_counter() - t0
    seen["output_lines"] = lines
    if proc.returncode:
        raise SystemExit(f"the job failed ({proc.returncode}): {' '.join(cmd)}")
    return seen


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cold", action="store_true", help="first clear the phantom and compiled-op caches")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rayssl-first-step-"))
    try:
        out = {}
        if args.cold:
            for cache in (Path.home() / ".cache" / "rayssl" / "synthetic", Path.home() / ".cache" / "torch_extensions"):
                shutil.rmtree(cache, ignore_errors=True)
            out["cold"] = run_once(work)
        warm = [run_once(work) for _ in range(args.repeats)]
        out["warm_median"] = {k: statistics.median(r[k] for r in warm if k in r) for k in warm[0]}
        for name, row in out.items():
            print(f"{name}: " + ", ".join(f"{k} {v:.1f} s" if k != "output_lines" else f"{v:g} output lines"
                                          for k, v in row.items()))
        print(json.dumps(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
