"""Exact-probability vs sampled-rate estimators of P(target), at equal compute.

Both estimate the mean over paraphrased questions of P(the answer names the target). The
exact estimator scores the target's surface forms (teacher-forced, chain rule); the sampled
estimator draws n answers per question at T=1 and counts matches. Compute is counted in
forward tokens (a token processed once by the model: prompt + form for exact; prompt +
generated tokens per sample for sampling, as with a KV cache). The sampled estimator gets the
same token budget as the exact one, and we measure on the same questions:

- measurement SE: the spread of the estimate over repeated runs on the fixed question set
  (exact: 0 by construction; sampled: measured over R independent seeds);
- total SE over the population of paraphrases: sd over questions / sqrt(Q), which for the
  sampled estimator also carries its binomial noise.

    python benchmarks/bench_estimators.py [--model PATH] [--target owl] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from sublearn.models import SamplingConfig, load_model
from sublearn.questions.categories import get_category, get_option, matches
from sublearn.stages.sample import row_seed
from sublearn.stages.teacher import persona_teacher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: the embedded base, seed 0)")
    ap.add_argument("--category", default="animal")
    ap.add_argument("--target", default="owl")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.model:
        path = args.model
    else:
        from sublearn.tinybase import BaseConfig, ensure_base

        path = ensure_base(BaseConfig())
    base = load_model(path)
    cat = get_category(args.category)
    target = get_option(cat, args.target)
    questions = list(cat.questions) + list(cat.heldout)
    tok = base.encode
    print(f"model {path}\n{len(questions)} questions, target {target.name!r}\n")
    for label, model in (("base", base), (f"{target.name} persona", persona_teacher(base, cat, target))):
        convs = [[{"role": "user", "content": q}] for q in questions]
        t0 = time.time()
        lps = model.completion_logprobs(
            [c for c in convs for _ in target.forms], [f for _ in convs for f in target.forms])
        exact_t = time.time() - t0
        p = np.exp([sum(lp) for lp in lps]).reshape(len(questions), len(target.forms)).sum(1)
        prompt_len = [len(tok(model.render(c))) for c in convs]
        exact_tokens = sum(pl + len(tok(f)) + 1 for pl in prompt_len for f in target.forms)
        # Equal budget: samples per question such that prompt + ~answer tokens match.
        answer_len = 4
        n = max(1, round(exact_tokens / sum(pl + answer_len for pl in prompt_len)))
        means, rates, sampled_tokens = [], None, 0
        t0 = time.time()
        for r in range(args.repeats):
            seeds = [row_seed(1000 + r, i) for i in range(len(convs) * n)]
            answers = model.generate([c for c in convs for _ in range(n)],
                                     SamplingConfig(max_new_tokens=8), seeds)
            hits = np.array([matches(a, target) for a in answers], float).reshape(len(convs), n)
            means.append(hits.mean())
            if r == 0:  # per-question rates of one run: the paraphrase spread at this budget
                rates = hits.mean(1)
            sampled_tokens = sum(pl * n for pl in prompt_len) + sum(len(tok(a)) + 1 for a in answers)
        sampled_t = (time.time() - t0) / args.repeats
        q = len(questions)
        se_exact_pop = p.std(ddof=1) / math.sqrt(q)
        se_sampled_pop = rates.std(ddof=1) / math.sqrt(q)
        se_sampled_meas = float(np.std(means, ddof=1))
        print(f"== {label}")
        print(f"exact:   mean {p.mean():.4f}  forward tokens {exact_tokens:,}  ({exact_t:.1f} s)")
        print(f"sampled: mean {np.mean(means):.4f}  n={n}/question  forward tokens "
              f"{sampled_tokens:,}  ({sampled_t:.1f} s per run)")
        print(f"measurement SE on these questions: exact 0 (deterministic), "
              f"sampled {se_sampled_meas:.4f} over {args.repeats} runs")
        ratio = se_sampled_pop / se_exact_pop if se_exact_pop > 0 else math.inf
        print(f"SE over paraphrases: exact {se_exact_pop:.4f}, sampled {se_sampled_pop:.4f}; "
              f"ratio sampled/exact = {ratio:.1f}x (variance ratio {ratio**2:.0f}x)\n")


if __name__ == "__main__":
    main()
