"""The attack stage split over jobs: ``stage=attack`` scores a shard of the targets into the store,
``stage=report`` merges every shard's scores and writes the run's report.

A shard's scores are a store artifact (``attack_scores/<key>``) keyed by everything they
depend on: every model's signal key (data, model, training, keep row, queries), the served
output, the attack configs, the targets (the shard's and all of them), the calibration, the
seed and the code that computes them. A merge recomputes each shard's key from its own
config, so it finds exactly the scores that config produces, or names the shards to run.
"""
from __future__ import annotations

import logging

from mia_torch.fingerprint import code_digest
from mia_torch.stages.attacks import AttackOutputs
from mia_torch.stages.context import Context, key_of, signal_key
from mia_torch.store import digest

__all__ = ["KIND", "missing_shards", "load_shards", "save_shard", "shard_targets", "shards_missing"]

log = logging.getLogger(__name__)

#: The store kind of a shard's scores.
KIND = "attack_scores"


def shard_targets(ctx: Context, shard: int) -> list[int]:
    """The targets shard ``shard`` scores: positions ``i`` of ``target_ids`` with ``i % num_shards == shard``."""
    s = ctx.settings
    return [t for i, t in enumerate(s.target_ids) if i % s.num_shards == shard]


def shard_key(ctx: Context, shard: int) -> str:
    """Content key of shard ``shard``'s scores (see the module docstring)."""
    s = ctx.settings
    return digest({
        "signals": [signal_key(s, key_of(ctx, m)) for m in range(s.num_models)],
        "output": s.output.describe(),
        "attacks": s.attacks,
        "targets": shard_targets(ctx, shard),
        "all_targets": list(s.target_ids),
        "calibration": s.calibration,
        "threat_model": s.threat_model,
        "sanity_check": s.sanity_check,
        "seed": s.seed,
        "device": s.device.type,
        "code": code_digest(KIND),
    })


def save_shard(ctx: Context, outputs: AttackOutputs) -> None:
    """Store this job's shard of scores (``shard`` of ``num_shards``)."""
    s = ctx.settings
    targets = shard_targets(ctx, s.shard)
    ctx.store.save(KIND, shard_key(ctx, s.shard), outputs.to_bytes(),
                   {"shard": s.shard, "num_shards": s.num_shards, "targets": targets})
    log.info("shard %d/%d: scored targets %s", s.shard, s.num_shards, targets)


def missing_shards(ctx: Context) -> list[int]:
    """The shards whose scores are not in the store (unverified: :func:`load_shards` verifies)."""
    s = ctx.settings
    return [k for k in range(s.num_shards) if not ctx.store.contains(KIND, shard_key(ctx, k))]


def load_shards(ctx: Context) -> AttackOutputs:
    """Every shard's scores, merged in the order of ``target_ids``; names the shards to (re)run if any is missing."""
    s = ctx.settings
    parts, missing = [], []
    for k in range(s.num_shards):
        found = ctx.store.load(KIND, shard_key(ctx, k), decode=AttackOutputs.from_bytes)  # None: absent or corrupt
        if found is None:
            missing.append(k)
        else:
            parts.append(found[0])
    if missing:
        raise shards_missing(ctx, missing)
    return AttackOutputs.merge(parts, s.target_ids)


def shards_missing(ctx: Context, missing: list[int]) -> FileNotFoundError:
    """The error that names the shards ``missing`` from the store and the command that scores them."""
    s = ctx.settings
    shards = ",".join(str(k) for k in sorted(set(missing)))
    return FileNotFoundError(
        f"stage=report needs the scores of every attack shard, but shard(s) {shards} of num_shards={s.num_shards} "
        f"are not in the store {ctx.store.root}: run `mia-run <same config> stage=attack shard={shards} "
        f"num_shards={s.num_shards}` (with -m for several) first"
    )
