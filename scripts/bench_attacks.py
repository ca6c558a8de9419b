"""Time fitting and scoring the reference-model attacks at paper scale on random logits.

    python scripts/bench_attacks.py --models 64 --examples 50000 --queries 2 [--device cuda]

Prints seconds per attack (fit on M-1 references + score one target) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mia_torch.attacks import RMIA, GapAttack, LabelOnlyAttack, LiRA, PopulationAttack, ShokriAttack, ThresholdAttack
from mia_torch.attacks.base import ReferenceSignals
from mia_torch.settings.load import resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=64)
    parser.add_argument("--examples", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=2)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="write the timings as JSON here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(args.models, args.examples, args.queries, args.classes, generator=gen)).to(device)
    labels = torch.randint(0, args.classes, (args.examples,), generator=gen).to(device)
    keep = (torch.rand(args.models, args.examples, generator=gen) < 0.5).to(device)
    reference = ReferenceSignals(logits=logits[1:], keep=keep[1:], labels=labels)
    attacks = {
        "loss": ThresholdAttack("loss"),
        "population": PopulationAttack(),
        "lira_online": LiRA(online=True),
        "lira_online_per_example": LiRA(online=True, variance="per_example"),
        "lira_offline": LiRA(online=False),
        "rmia_fixed_a_T": RMIA(online=False, a=0.3, temperature=2.0),
        "rmia": RMIA(online=False),  # a and the temperature chosen on the references (the default)
        "rmia_online": RMIA(online=True),
        "shokri": ShokriAttack(),
        "gap": GapAttack(),
        "label_only": LabelOnlyAttack(),
    }
    timings = {}
    print(f"{args.models} models x {args.examples} examples x {args.queries} queries on {device}")
    for name, attack in attacks.items():
        _sync(device)
        start = time.perf_counter()
        attack.fit(reference)
        attack.score(logits[0], labels)
        _sync(device)
        timings[name] = time.perf_counter() - start
        print(f"  {name:<26} {timings[name]:8.2f} s")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"device": str(device), "shape": list(logits.shape), "seconds": timings}, fh, indent=2)


if __name__ == "__main__":
    main()
