"""Peak memory of the whole process tree of one `approximate` run (issue 15).

Writes a synthetic ``random_target(SIZES, bias=True, seed=0)`` and runs
``CLI approximate --target T --weight-eps TAU --solver mitm --workers W ...`` as a child process,
sampling the summed resident set size of the child and all its descendants every 0.1 s with
psutil (shared pages of the spawned workers count once per process, so this is an upper bound
on the tree's footprint). ``--cli`` picks the executable, so one checkout can be measured
against another on the same machine in the same session (the baseline is the ratio's
denominator, never a constant).

    python experiments/peak_memory.py --sizes 784-1000-10 [--cli /path/to/subsetsum-lth] [-- --store compact]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tree_rss(proc) -> tuple[int, int]:
    """(sum, max) RSS in bytes over ``proc`` and its descendants."""
    import psutil
    total = peak = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0, 0
    for p in procs:
        try:
            r = p.memory_info().rss
        except psutil.Error:
            continue
        total += r
        peak = max(peak, r)
    return total, peak


def measure(cmd: list[str], interval: float = 0.1) -> dict:
    import psutil
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc = psutil.Process(child.pid)
    peak_sum = peak_one = 0
    while child.poll() is None:
        s, m = tree_rss(proc)
        peak_sum, peak_one = max(peak_sum, s), max(peak_one, m)
        time.sleep(interval)
    err = child.stderr.read()
    return {"rc": child.returncode, "wall_s": time.perf_counter() - t0, "peak_tree_rss_mb": peak_sum / 2**20,
            "peak_process_rss_mb": peak_one / 2**20, "stderr_tail": err[-600:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="784-1000-10")
    ap.add_argument("--cli", default=str(Path(sys.executable).with_name("subsetsum-lth")))
    ap.add_argument("--weight-eps", default="0.01")
    ap.add_argument("--workers", default="1")
    ap.add_argument("--keep", type=Path, default=None, help="write the run folder here (default: a temporary one)")
    ap.add_argument("extra", nargs="*", help="more approximate arguments (after --)")
    args = ap.parse_args(argv)
    from subsetsum_lth.target import random_target, save_target
    sizes = tuple(int(s) for s in args.sizes.split("-"))
    with tempfile.TemporaryDirectory() as tmp:
        tfile = Path(tmp) / "target.safetensors"
        save_target(random_target(sizes, bias=True, seed=0), tfile)
        out = args.keep or Path(tmp) / "run"
        cmd = [args.cli, "approximate", "--target", str(tfile), "--out", str(out), "--weight-eps", args.weight_eps,
               "--solver", "mitm", "--workers", args.workers, "--no-plots", "--no-progress", "--samples", "64",
               "--steps", "10", "--allow-infeasible", *args.extra]
        res = measure(cmd)
        res.update({"sizes": args.sizes, "cli": args.cli, "args": args.extra})
        rep = Path(out) / "report.json"
        if rep.exists():
            r = json.loads(rep.read_text())
            res.update({k: r.get(k) for k in ("store", "peak_memory_mb", "total_parameters", "kept_parameters",
                                              "certified_bound", "infeasible_count", "wall_seconds", "timings")})
            res["files_mb"] = {p.name: round(p.stat().st_size / 2**20, 1) for p in Path(out).iterdir() if p.is_file()}
    print(json.dumps(res, indent=1))
    return 0 if res["rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
