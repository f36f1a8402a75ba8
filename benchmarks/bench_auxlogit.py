"""Benchmark of `sublearn auxlogit`: wall time of the default run and peak memory at MNIST scale.

    python benchmarks/bench_auxlogit.py            # the acceptance figures (minutes on 2 cores)
    python benchmarks/bench_auxlogit.py --quick    # 10 models instead of 100: a smoke test

1. Wall time of the default run: 100 models per arm on sklearn's digits, paper preset, all
   six arms, as `sublearn auxlogit` runs it (minus printing).
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


def child_default(n_models: int) -> dict[str, object]:
    from sublearn.auxlogit import experiment
    from sublearn.auxlogit.config import AuxLogitConfig

    cfg = AuxLogitConfig.build("paper", n_models=n_models)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        results = experiment.run(cfg, out=out, show=False)
        wall = time.perf_counter() - start
    means = {arm: round(v["interval"]["mean"], 3) for arm, v in results["arms"].items()}
    return {"wall_s": wall, "peak_rss": _peak_rss_bytes(), "means": means}


def child_mnist(n_models: int) -> dict[str, object]:
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
        "paper", dataset="mnist", n_models=n_models, teacher_epochs=1, student_epochs=1,
        noise_size=4 * 1024,
    )
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        experiment.run(cfg, out=out, show=False, data=data)
        wall = time.perf_counter() - start
    return {"wall_s": wall, "peak_rss": _peak_rss_bytes(), "baseline_rss": baseline,
            "batch_size": cfg.batch_size}


def _in_subprocess(which: str, n_models: int, threads: int | None) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--child", which, "--n-models", str(n_models)]
    if threads:
        cmd += ["--threads", str(threads)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 models instead of 100")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--child", choices=["default", "mnist"], help=argparse.SUPPRESS)
    ap.add_argument("--n-models", type=int, default=100, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        run = child_default if args.child == "default" else child_mnist
        print(json.dumps({**run(args.n_models), "threads": torch.get_num_threads()}))
        return

    n_models = 10 if args.quick else 100
    gb = 1e9
    print(f"bench_auxlogit: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
          f"(other work on the machine slows every figure below)"
          + ("; --quick: 10 models, NOT the acceptance figures" if args.quick else ""))
    d = _in_subprocess("default", n_models, args.threads)
    print(f"default run (digits, paper preset, {n_models} models per arm, 6 arms, "
          f"{d['threads']} threads): wall {d['wall_s']:.1f} s, peak RSS {d['peak_rss'] / gb:.2f} "
          f"GB")
    print("  mean test accuracy: " + ", ".join(f"{k} {v}" for k, v in d["means"].items()))
    m = _in_subprocess("mnist", n_models, args.threads)
    verdict = "within" if m["peak_rss"] <= TARGET_BYTES else "OVER"
    print(f"MNIST scale (synthetic 60000x784 train + 10000x784 test, {n_models} models, batch "
          f"{m['batch_size']}, 1 teacher + 1 student epoch, 4096 noise images, 6 arms): "
          f"peak RSS {m['peak_rss'] / gb:.2f} GB ({verdict} the 2 GB target; "
          f"{m['baseline_rss'] / gb:.2f} GB of it is python+torch before any data), "
          f"wall {m['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
