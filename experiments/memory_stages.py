"""Peak memory of every stage of `approximate` except the subset-sum search itself, at sizes
whose solve does not fit a shared 2-core machine (issue 15: 784-2000-2000-10 at τ = 0.01).

The stages are the library's own: ``build_construction`` (the support of g), ``build_instances``,
one slice of a layer's coefficient matrix as ``layer_solve.solve_layer`` builds it, masks from
selections (``compact_masks_from_selections``), ``support_layer_maps`` + ``certified_bound``, the
empirical bound through ``SupportNet`` (float64), and writing the compact files. The selections
are NOT solver output: each instance keeps a random half of its live units — the masks' shape
and density are what memory depends on, not which subset is kept — so the certificate's value
printed here means nothing; only the memory figures do. ru_maxrss of this process is printed
after each stage (the solver's own working memory is per batch: --batch-size instances).

    python experiments/memory_stages.py --sizes 784-2000-2000-10 --weight-eps 0.01
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="784-2000-2000-10")
    ap.add_argument("--weight-eps", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch
    from subsetsum_lth import gstore
    from subsetsum_lth.certify import certified_bound, empirical_bound_fast
    from subsetsum_lth.construction import ConstructionConfig, build_construction
    from subsetsum_lth.layer_instances import compact_masks_from_selections
    from subsetsum_lth.layer_solve import SLICE_BYTES, build_instances
    from subsetsum_lth.target import random_target

    rows = []

    def stage(name, t0):
        rows.append({"stage": name, "seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(rss_mb())})
        print(json.dumps(rows[-1]), flush=True)

    t = time.perf_counter()
    sizes = tuple(int(s) for s in args.sizes.split("-"))
    target = random_target(sizes, bias=True, seed=0)
    stage("start (python, torch, target)", t)
    t = time.perf_counter()
    c = build_construction(target, ConstructionConfig(seed=args.seed, eps=args.weight_eps,
                                                      input_domain="nonnegative", width="auto"))
    stage(f"construction: support of g ({gstore.dense_entries(c.plans):,} dense entries)", t)
    t = time.perf_counter()
    layers = build_instances(target, c)
    stage(f"instances ({sum(len(i) for i in layers):,}), coefficients not built", t)
    rng = np.random.default_rng(0)
    cmasks = []
    for inst in layers:
        t = time.perf_counter()
        k, w = len(inst), inst.width
        step = max(inst.q, SLICE_BYTES // (8 * max(w, 1)) // inst.q * inst.q)
        b = inst.batch_of(np.arange(min(k, step)), args.weight_eps, "error")
        del b
        sel = rng.integers(0, 2, (k, w), dtype=np.uint8).view(bool) & (np.arange(w)[None, :] < inst.counts[:, None])
        cmasks.append(compact_masks_from_selections(inst, sel))
        del sel
        stage(f"layer {inst.plan.index}: one slice of coefficients ({min(k, step):,} of {k:,} instances, "
              f"width {w}) + selections + masks", t)
    t = time.perf_counter()
    maps = gstore.support_layer_maps(c.pairs, cmasks)
    cert = certified_bound(target, maps, 1.0, "nonnegative")
    stage("support layer maps + certificate", t)
    t = time.perf_counter()
    g64 = gstore.SupportNet(c.pairs, cmasks, torch.float64)
    emp = empirical_bound_fast(target, maps, g64, 1.0, "nonnegative", samples=64, steps=10, seed=0)
    stage("empirical bound on ĝ (SupportNet, float64)", t)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        gstore.write_compact(Path(tmp), c.pairs, cmasks, {"format": "run", "seed": args.seed, "depth": target.depth},
                             gstore.generator_spec(args.seed, "uniform", c.plans))
        sizes_mb = {p.name: round(p.stat().st_size / 2**20, 1) for p in Path(tmp).iterdir()}
        stage(f"write compact files {sizes_mb}", t)
    print(json.dumps({"sizes": args.sizes, "peak_rss_mb": round(rss_mb()), "dense_entries": gstore.dense_entries(c.plans),
                      "hidden": [pl.hidden for pl in c.plans], "block_width": [pl.m for pl in c.plans],
                      "meaningless_certificate": cert.bound, "meaningless_empirical": emp["empirical_bound"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
