"""Benchmark: the run plan's estimate beside the run's actual wall time, per stage (issue 31).

`steerlab run CONFIG --out DIR` makes the plan (each stage's work counted on a stand-in of the
model, priced by a short calibration on this device and dtype), keeps it with the records and
runs stage one; this script runs that command, unless DIR already holds a finished run, then
reads the plan and the compute records and prints each stage's estimate against its actual
seconds. With --estimate-only it makes the plan alone (nothing runs). Target: the total within
±30% of the actual. Saves bench/results/run_plan-<config name>.json.
Run: .venv/bin/python bench/run_plan.py examples/quick.yaml [--out DIR] [--estimate-only]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from saving import machine, save


def finished(records: list[dict]) -> bool:
    """Whether a run's records hold a plan and an uninterrupted compute record of every stage."""
    stages = [r for r in records if r.get("task") == "compute"]
    return (any(r.get("task") == "plan" for r in records) and len(stages) >= 11
            and not any(r.get("interrupted") for r in stages))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--out", type=Path, help="the run directory (default: runs/<name>)")
    parser.add_argument("--estimate-only", action="store_true")
    args = parser.parse_args()

    from steerlab.experiment.config import load_config
    from steerlab.experiment.runs import RunDir
    from steerlab.progress import duration

    config = load_config(args.config)
    out = args.out or Path("runs") / config.name
    result: dict = {"config": str(args.config), "machine": machine(),
                    "date": time.strftime("%Y-%m-%d")}
    if args.estimate_only:
        from steerlab.experiment.plan import plan_run
        from steerlab.model.handle import load_model

        started = time.perf_counter()
        plan = plan_run(config, load_model(config.model.name, **config.model.options()))
        result.update(plan=plan.record(), planning_seconds=time.perf_counter() - started)
        for stage, seconds in plan.estimates().items():
            if seconds:
                print(f"{stage:18s} ≈ {duration(seconds)}")
        print(f"{'total':18s} ≈ {duration(plan.total())} (planning took "
              f"{result['planning_seconds']:.0f} s)")
    else:
        records = RunDir(out).records() if out.is_dir() else []
        if not finished(records):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "steerlab.cli", "run", str(args.config),
                            "--out", str(out)], check=True)
            result["command_seconds"] = time.perf_counter() - started
            records = RunDir(out).records()
        plan = next(r for r in records if r.get("task") == "plan")
        actual: dict[str, float] = {}
        for record in records:
            if record.get("task") == "compute":
                actual[record["stage"]] = actual.get(record["stage"], 0.0) + record["seconds"]
        rows = [{"stage": stage, "estimate": plan["estimates"].get(stage, 0.0),
                 "actual": seconds} for stage, seconds in actual.items()]
        total = sum(actual.values())
        result.update(stages=rows, estimate=plan["total"], actual=total,
                      ratio=total / plan["total"], rates=plan["rates"],
                      counting_seconds=plan["counting_seconds"],
                      peak_bytes=max(r.get("peak_bytes", 0) for r in records
                                     if r.get("task") == "compute"))
        print(f"{'stage':18s} {'estimate':>10s} {'actual':>10s}")
        for row in rows:
            if row["estimate"] or row["actual"] > 1:
                print(f"{row['stage']:18s} {row['estimate']:9.0f}s {row['actual']:9.0f}s")
        print(f"{'total':18s} {plan['total']:9.0f}s {total:9.0f}s  actual/estimate "
              f"{result['ratio']:.2f} (target 0.70-1.30)")
    print(f"saved {save(f'run_plan-{config.name}', result)}")


if __name__ == "__main__":
    main()
