"""Benchmark of `sublearn auxlogit`: wall time of the default run and peak memory at MNIST scale.

    python benchmarks/bench_auxlogit.py                  # the acceptance figures (minutes)
    python benchmarks/bench_auxlogit.py --preset strong  # the same for --preset strong
    python benchmarks/bench_auxlogit.py --quick          # 10 models, one seed: a smoke test
    python benchmarks/bench_auxlogit.py --seeds ""       # only the MNIST-scale memory run

1. Wall time of the default run, once per seed (0, 1, 2 unless --seeds): 100 models per arm
   on sklearn's digits, all six arms, as `sublearn auxlogit` runs it (minus printing), with
   the population split over --workers threads (default: one per available core). Prints
   each run and the range over seeds of the wall time and of every arm's mean accuracy.
2. Peak memory (the process's maximum resident set size) of a run at MNIST scale: synthetic
   inputs of MNIST's shape (60,000 x 784 training images, 10,000 test images), 100 models,
   MNIST's batch of 1,024 and every arm, but 1 teacher and 1 student epoch and a noise set of
   4 batches to keep it short. Peak memory comes from the first steps of each phase, so the
   shortened schedule does not lower it. Target: at most 2 GB.

Each measurement runs in a fresh subprocess so that its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

TARGET_BYTES = 2e9  # 2 GB


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child_default(args: argparse.Namespace) -> dict[str, object]:
    from sublearn.auxlogit import experiment
    from sublearn.auxlogit.config import AuxLogitConfig
    from sublearn.auxlogit.train import resolve_precision

    cfg = AuxLogitConfig.build(args.preset, n_models=args.n_models, seed=args.seed)
    with tempfile.TemporaryDirectory() as out:
        start, cpu = time.perf_counter(), time.process_time()
        results = experiment.run(cfg, out=out, show=False, workers=args.workers)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    means = {arm: round(a.interval.mean, 3) for arm, a in results.arms.items()}
    # CPU time (all threads) next to wall time: on a shared machine the wall time grows
    # with other people's load, the CPU time much less.
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss": _peak_rss_bytes(), "means": means,
            "precision": resolve_precision(cfg)}


def child_mnist(args: argparse.Namespace) -> dict[str, object]:
    import torch

    from sublearn.auxlogit import experiment
    from sublearn.auxlogit.config import AuxLogitConfig
    from sublearn.auxlogit.data import Dataset

    baseline = _peak_rss_bytes()  # python + torch + sublearn before any data or model
    gen = torch.Generator().manual_seed(0)
    data = Dataset(
        "synthetic-mnist-shape",
        torch.rand(60_000, 784, generator=gen) * 2 - 1, torch.randint(0, 10, (60_000,)),
        torch.rand(10_000, 784, generator=gen) * 2 - 1, torch.randint(0, 10, (10_000,)),
    )
    cfg = AuxLogitConfig.build(
        "paper", dataset="mnist", n_models=args.n_models, teacher_epochs=1, student_epochs=1,
        noise_size=4 * 1024,
    )
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        experiment.run(cfg, out=out, show=False, data=data, workers=args.workers)
        wall = time.perf_counter() - start
    return {"wall_s": wall, "peak_rss": _peak_rss_bytes(), "baseline_rss": baseline,
            "batch_size": cfg.batch_size}


def _in_subprocess(which: str, args: argparse.Namespace, **extra: object) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--child", which, "--preset", args.preset,
           "--workers", str(args.workers)]
    for key, value in {"n_models": args.n_models, "threads": args.threads, **extra}.items():
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _range(values: list[float], digits: int) -> str:
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 models and one seed")
    ap.add_argument("--preset", default="paper", help="paper (default) or strong")
    ap.add_argument("--seeds", default="0,1,2",
                    help="seeds of the default run (default 0,1,2; \"\" for the MNIST run only)")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ap.add_argument("--workers", type=int, default=cores,
                    help="threads sharing the models (default: one per available core)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per worker (default 1, as `sublearn` runs it)")
    ap.add_argument("--no-mnist", action="store_true", help="skip the MNIST-scale memory run")
    ap.add_argument("--child", choices=["default", "mnist"], help=argparse.SUPPRESS)
    ap.add_argument("--n-models", type=int, default=100, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        run = child_default if args.child == "default" else child_mnist
        print(json.dumps({**run(args), "threads": torch.get_num_threads()}))
        return

    args.n_models = 10 if args.quick else 100
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",") if s.strip()]
    gb = 1e9
    print(f"bench_auxlogit: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
          f"(other work on the machine slows every figure below)"
          + ("; --quick: 10 models, NOT the acceptance figures" if args.quick else ""))
    runs = []
    for seed in seeds:
        d = _in_subprocess("default", args, seed=seed)
        runs.append(d)
        print(f"default run (digits, {args.preset} preset, seed {seed}, {args.n_models} models "
              f"per arm, 6 arms, {args.workers} workers x {d['threads']} threads, "
              f"{d['precision']}): wall {d['wall_s']:.1f} s (CPU {d['cpu_s']:.0f} s), peak RSS "
              f"{d['peak_rss'] / gb:.2f} GB, load average {os.getloadavg()[0]:.1f}")
        print("  mean test accuracy: " + ", ".join(f"{k} {v}" for k, v in d["means"].items()))
    if len(runs) > 1:
        print(f"range over seeds {args.seeds}: wall {_range([r['wall_s'] for r in runs], 1)} s; "
              + ", ".join(f"{arm} {_range([r['means'][arm] for r in runs], 3)}"
                          for arm in runs[0]["means"]))
    if args.no_mnist:
        return
    m = _in_subprocess("mnist", args)
    verdict = "within" if m["peak_rss"] <= TARGET_BYTES else "OVER"
    print(f"MNIST scale (synthetic 60000x784 train + 10000x784 test, {args.n_models} models, "
          f"batch {m['batch_size']}, 1 teacher + 1 student epoch, 4096 noise images, 6 arms, "
          f"{args.workers} workers): peak RSS {m['peak_rss'] / gb:.2f} GB ({verdict} the 2 GB "
          f"target; {m['baseline_rss'] / gb:.2f} GB of it is python+torch before any data), "
          f"wall {m['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
