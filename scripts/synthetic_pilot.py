#!/usr/bin/env python3
"""Pilot for the synthetic (App. A.3) default: prepare one dataset, train one run on it, print per-level answer
accuracy at the last checkpoints and the training time.

Usage: scripts/synthetic_pilot.py --p 7 --l-max 6 --steps 1500 --preset dense-tiny [--lr 3e-3 --batch-size 64]
(run from the repository root with the project's venv; results under --out, default /tmp/synthetic-pilot/).
"""

import argparse
import time
from pathlib import Path

from tokenscale.synthetic import arithmetic as sy
from tokenscale.config import RunConfig
from tokenscale.evaluation.evaluate import scored_predictions
from tokenscale.synthetic.levels import answer_levels
from tokenscale.training.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--p", type=int, default=7, help="modulus")
    ap.add_argument("--l-max", type=int, default=6, help="largest number of operations")
    ap.add_argument("--distribution", default="uniform", choices=sy.DISTRIBUTIONS, help="level distribution")
    ap.add_argument("--steps", type=int, default=1500, help="training steps")
    ap.add_argument("--preset", default="dense-tiny", help="model preset")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (constant after 5%% warmup)")
    ap.add_argument("--batch-size", type=int, default=64, help="examples per step")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", default="/tmp/synthetic-pilot", help="output folder")
    a = ap.parse_args()
    T = max(8, 2 * a.l_max + 3)
    d = Path(a.out) / f"p{a.p}-L{a.l_max}-{a.distribution}-{a.steps}-{a.preset}-lr{a.lr:g}-b{a.batch_size}"
    sy.prepare(dict(name="pilot", p=a.p, l_max=a.l_max, distribution=a.distribution, exponent=2.0, seq_len=T, seed=0,
                    train_examples=a.steps * a.batch_size, valid_examples=500, level_examples=100), d / "data")
    run = RunConfig.from_dict(dict(name="pilot", axis="T", model={"preset": a.preset}, lr=a.lr,
                                   tokens=a.steps * a.batch_size * T, batch_size=a.batch_size,
                                   schedule={"kind": "constant", "warmup_frac": 0.05},
                                   checkpoints={"count": 12, "first_step": 10}, in_loop_validation=False,
                                   synthetic="pilot"), T)
    t0 = time.time()
    Trainer(run, d / "data", d / "run", threads=a.threads, progress=False).train()
    seconds = time.time() - t0
    level = answer_levels(d / "data" / "levels_tokens.h5")
    for s in run.checkpoint_steps()[-4:]:
        _, correct = scored_predictions(d / "run" / "checkpoints" / f"step{s:08d}", d / "data" / "levels_tokens.h5")
        print(f"step {s:6d}  " + " ".join(f"L{L}:{correct[level == L].mean():.2f}" for L in range(1, a.l_max + 1)))
    print(f"{d.name}: trained {a.steps} steps in {seconds:.1f} s (chance accuracy 1/p = {1 / a.p:.2f})")


if __name__ == "__main__":
    main()
