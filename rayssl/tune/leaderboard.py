"""Leaderboards from sweep directories: one CSV / Markdown / PNG per task, and an overview of tasks.

Built from files only (no Ray needed): ``sweep.json``, Tune's per-trial ``params.json`` and
``result.json`` (one JSON line per validation), the trial's ``trial.json`` and, for trials that ran
to the end, the fine-tuning ``finetune/result.json`` with the test metric. ASHA-stopped trials have no
test metric; their checkpoint is the last one they reported.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from rayssl.train.layout import RunDir
from rayssl.tune.layout import BASELINE_DIR, FINETUNE_DIR, SWEEP_FILE, TRIAL_FILE, TUNE_RESULT

FIXED = ("rank", "trial_id")
TAIL = ("val_metric", "test_metric", "epochs", "status", "pretrain", "encoder", "wall_time_s", "checkpoint")


def _json_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut off by a killed driver
                continue
    return out


def _finite(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def load_trial(trial_dir: Path, searched: list[str]) -> dict | None:
    """One leaderboard row from a Tune trial directory (``None`` if it is not a trial of this sweep)."""
    params_file = trial_dir / "params.json"
    if not params_file.is_file():
        return None
    params = json.loads(params_file.read_text())
    reports = [r for r in _json_lines(trial_dir / TUNE_RESULT) if _finite(r.get("val_metric")) is not None]
    info = json.loads((trial_dir / TRIAL_FILE).read_text()) if (trial_dir / TRIAL_FILE).is_file() else {}
    final_file = trial_dir / FINETUNE_DIR / RunDir.RESULT
    final = json.loads(final_file.read_text()) if final_file.is_file() else None
    row = {"trial_id": trial_dir.name, **{k: params.get(k) for k in searched}}
    vals = [r["val_metric"] for r in reports]
    row["val_metric"] = max(vals) if vals else None
    row["epochs"] = max((r.get("epoch", 0) for r in reports), default=0)
    pre = info.get("pretrain")
    row["pretrain"] = "" if pre is None else ("reused" if pre.get("reused") else "trained")
    row["encoder"] = "" if pre is None else pre.get("key", "")  # names the bucketed mask ratio actually used
    if final is not None:
        metric = final["metric"]
        row.update(status="completed", metric_name=metric, test_metric=_finite(final["test"].get(metric)),
                   val_metric=_finite(final.get("best_val_metric")) or row["val_metric"],
                   epochs=final.get("epochs") or row["epochs"],
                   wall_time_s=info.get("wall_time_s") or final.get("wall_time_s"),
                   checkpoint=str(trial_dir / FINETUNE_DIR / RunDir.BEST))
    else:
        status = "error" if (trial_dir / "error.txt").is_file() else ("stopped" if reports else "unfinished")
        row.update(status=status, test_metric=None,
                   wall_time_s=reports[-1].get("time_total_s") if reports else None,
                   checkpoint=next((r["checkpoint_path"] for r in reversed(reports) if r.get("checkpoint_path")), ""))
    return row


def load_sweep(sweep_dir: str | Path) -> dict:
    """``{"task", "metric", "searched", "rows", "baseline", "sweep_dir"}`` of one sweep directory.

    Raises:
        ValueError: ``sweep_dir`` has no ``sweep.json`` (not a sweep directory).
    """
    root = Path(sweep_dir)
    meta_file = root / SWEEP_FILE
    if not meta_file.is_file():
        raise ValueError(f"{root} is not a sweep directory (no {SWEEP_FILE}); pass the directory jobs/tune.py printed")
    meta = json.loads(meta_file.read_text())
    searched = list(meta["searched"])
    rows = [r for d in sorted(p for p in root.iterdir() if p.is_dir()) if (r := load_trial(d, searched))]
    baseline = None
    base_file = root / BASELINE_DIR / RunDir.RESULT
    if base_file.is_file():
        res = json.loads(base_file.read_text())
        metric = res["metric"]
        defaults = meta.get("defaults", {})
        baseline = {"trial_id": "scratch", **{k: (None if k == "mask_ratio" else defaults.get(k)) for k in searched},
                    "val_metric": _finite(res.get("best_val_metric")) or _finite(res["val"].get(metric)),
                    "test_metric": _finite(res["test"].get(metric)), "epochs": res.get("epochs"),
                    "status": "baseline", "pretrain": "none", "wall_time_s": res.get("wall_time_s"),
                    "checkpoint": str(root / BASELINE_DIR / RunDir.BEST)}
        meta["metric_name"] = metric
    names = [r["metric_name"] for r in rows if r.get("metric_name")]
    metric = meta.get("metric_name") or (names[0] if names else meta["metric"])
    return {"task": meta["task"], "metric": metric, "searched": searched,
            "rows": rows, "baseline": baseline, "sweep_dir": str(root)}


def rank_rows(rows: list[dict]) -> list[dict]:
    """Rows sorted by validation metric (best first, missing last; ties by trial id), ``rank`` from 1."""
    ordered = sorted(rows, key=lambda r: (r.get("val_metric") is None, -(r.get("val_metric") or 0.0), str(r["trial_id"])))
    return [{**r, "rank": i + 1} for i, r in enumerate(ordered)]


def _fmt(x) -> str:
    if x is None or x == "":
        return "—"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _config_text(row: dict, searched: list[str]) -> str:
    return ", ".join(f"{k}={_fmt(row.get(k))}" for k in searched)


def write_board(out_dir: str | Path, task: str, metric: str, searched: list[str], rows: list[dict],
                baseline: dict | None) -> dict:
    """Write ``leaderboard.csv``, ``leaderboard.md`` and ``leaderboard.png`` for one task.

    Args:
        out_dir: where the files go.
        task: task name (title).
        metric: the validation / test metric's name (e.g. ``mean_dice``).
        searched: searched parameter names (one column each).
        rows: trial rows (see :func:`load_trial`).
        baseline: the from-scratch reference row or ``None``.

    Returns:
        The overview row of the task: best trial, its config, test metric and gain over scratch.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ranked = rank_rows(rows)
    best = ranked[0] if ranked and ranked[0].get("val_metric") is not None else None
    columns = [*FIXED, *searched, *TAIL, "best"]
    with (out / "leaderboard.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in ranked:
            w.writerow({**{k: r.get(k) for k in columns}, "best": r is best})
        if baseline:
            w.writerow({**{k: baseline.get(k) for k in columns}, "rank": "ref", "best": False})

    gain = (best["test_metric"] - baseline["test_metric"]
            if best and baseline and best.get("test_metric") is not None and baseline.get("test_metric") is not None
            else None)
    lines = [f"# Leaderboard: {task}", "",
             f"Ranked by validation {metric} (higher is better); {len(ranked)} trials, "
             f"{sum(r['status'] == 'stopped' for r in ranked)} stopped early by ASHA.", ""]
    if best:
        test = (f"**test {metric} = {_fmt(best['test_metric'])}**" if best.get("test_metric") is not None
                else "no test result (the trial did not run to the end)")
        lines.append(f"**Best configuration** (trial {best['trial_id']}): {_config_text(best, searched)}; "
                     f"validation {metric} = {_fmt(best['val_metric'])}, {test}.")
        if baseline:
            lines.append(f"From scratch, same budget: validation {_fmt(baseline['val_metric'])}, "
                         f"test {_fmt(baseline['test_metric'])}; gain on test {'—' if gain is None else f'{gain:+.4g}'}.")
        lines.append("")
    head = [*FIXED, *searched, f"val {metric}", f"test {metric}", "epochs", "status", "pre-training", "encoder", "wall s", "checkpoint"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in ranked + ([{**baseline, "rank": "ref (scratch)"}] if baseline else []):
        cells = [_fmt(r.get(k)) for k in (*FIXED, *searched, *TAIL)]
        cells[-2] = _fmt(round(r["wall_time_s"], 1) if r.get("wall_time_s") is not None else None)
        cells[-1] = f"`{r['checkpoint']}`" if r.get("checkpoint") else "—"
        if r is best:
            cells = [f"**{c}**" for c in cells]
            cells[0] = "**1 (best)**"
            cells[len(FIXED) + len(searched) + 1] = f"**{_fmt(r.get('test_metric'))} ← best config's test**"
        lines.append("| " + " | ".join(cells) + " |")
    (out / "leaderboard.md").write_text("\n".join(lines) + "\n")
    plot_board(out / "leaderboard.png", task, metric, ranked, baseline)
    return {"task": task, "metric": metric, "trials": len(ranked),
            "stopped_early": sum(r["status"] == "stopped" for r in ranked),
            "best_trial": best["trial_id"] if best else None,
            "best_val": best["val_metric"] if best else None, "best_test": best.get("test_metric") if best else None,
            "best_config": _config_text(best, searched) if best else "",
            "scratch_val": baseline["val_metric"] if baseline else None,
            "scratch_test": baseline["test_metric"] if baseline else None, "gain_over_scratch": gain}


def plot_board(path: Path, task: str, metric: str, rows: list[dict], baseline: dict | None) -> None:
    """Validation metric against mask ratio and against layer-wise lr decay, one point per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, param, label in zip(axes, ("mask_ratio", "layer_decay"), ("mask ratio", "layer-wise lr decay")):
        for status, style in (("completed", dict(marker="o", color="tab:blue")),
                              ("stopped", dict(marker="x", color="tab:gray"))):
            pts = [(r[param], r["val_metric"]) for r in rows
                   if r["status"] == status and r.get(param) is not None and r.get("val_metric") is not None]
            if pts:
                ax.scatter(*zip(*pts), label=f"{status} ({len(pts)})", **style)
        best = rows[0] if rows and rows[0].get(param) is not None and rows[0].get("val_metric") is not None else None
        if best:
            ax.scatter([best[param]], [best["val_metric"]], marker="*", s=200, color="tab:orange", label="best", zorder=3)
        if baseline and baseline.get("val_metric") is not None:
            ax.axhline(baseline["val_metric"], ls="--", color="tab:red", label="from scratch")
        if not any(r.get(param) is not None for r in rows):
            ax.text(0.5, 0.5, f"{label} not searched", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(label)
        ax.margins(x=0.12, y=0.15)  # markers (the large best star too) stay inside the axes
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"validation {metric}")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{task}: validation {metric} per trial")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_leaderboard(sweep_dir: str | Path) -> dict:
    """Rebuild the leaderboard files of one sweep in its directory; return its overview row."""
    s = load_sweep(sweep_dir)
    return write_board(s["sweep_dir"], s["task"], s["metric"], s["searched"], s["rows"], s["baseline"])


def merge_leaderboards(sweep_dirs: list[str | Path], out_dir: str | Path) -> Path:
    """Rebuild each task's leaderboard and write an overview of all tasks to ``out_dir``.

    A task with one sweep gets its leaderboard rebuilt in that sweep directory; sweeps of the same task
    are pooled into ``<out_dir>/<task>/`` (trial ids prefixed with the sweep name), with the baseline of
    the sweep that holds the best trial (else the first one found) as the reference row.

    Returns:
        The path of ``overview.md`` (``overview.csv`` next to it): task, best metric, best config,
        gain over scratch.
    """
    if not sweep_dirs:
        raise ValueError("merge_leaderboards: no sweep directories given")
    sweeps = [load_sweep(d) for d in sweep_dirs]
    out = Path(out_dir)
    overview = []
    for task in dict.fromkeys(s["task"] for s in sweeps):
        group = [s for s in sweeps if s["task"] == task]
        metrics = {s["metric"] for s in group}
        if len(metrics) > 1:
            raise ValueError(f"task {task!r}: sweeps report different metrics {sorted(metrics)}; they cannot share a leaderboard")
        searched = list(dict.fromkeys(k for s in group for k in s["searched"]))
        rows = []
        for s in group:
            prefix = f"{Path(s['sweep_dir']).name}/" if len(group) > 1 else ""
            rows += [{**r, "trial_id": prefix + r["trial_id"], "_sweep": s["sweep_dir"]} for r in s["rows"]]
        ranked = rank_rows(rows)
        home = ranked[0]["_sweep"] if ranked else None
        baseline = next((s["baseline"] for s in group if s["sweep_dir"] == home and s["baseline"]), None)
        baseline = baseline or next((s["baseline"] for s in group if s["baseline"]), None)
        where = Path(group[0]["sweep_dir"]) if len(group) == 1 else out / task
        overview.append({**write_board(where, task, group[0]["metric"], searched, rows, baseline),
                         "sweeps": len(group)})
    out.mkdir(parents=True, exist_ok=True)
    columns = ["task", "metric", "best_val", "best_test", "best_config", "scratch_test", "gain_over_scratch",
               "best_trial", "trials", "stopped_early", "sweeps"]
    with (out / "overview.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(overview)
    head = ["task", "metric", "best val", "best test", "best config", "scratch test", "gain over scratch", "trials"]
    lines = ["# Leaderboards: overview", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for o in overview:
        lines.append("| " + " | ".join(_fmt(o[k]) for k in ("task", "metric", "best_val", "best_test", "best_config",
                                                              "scratch_test", "gain_over_scratch", "trials")) + " |")
    (out / "overview.md").write_text("\n".join(lines) + "\n")
    return out / "overview.md"
