"""Sharded replicas for real (issue 17, item 3): three ``canarist run --shards`` processes, one killed.

The short seeded version of ``python -m bench.shards`` (controller/sandbox/chaos/shardsoak.py):
24 rollouts of live traffic scraped by a real Prometheus, three controller processes on 16 shard
Leases of the local API stand-in, and SIGKILL for the replica holding the most shards once the
rollouts are under way. Every write is judged as it is stored: a replica writes a rollout or its
routes only while the Lease of the rollout's shard names it and its term is not over, and a shard
changes hands only after its holder's term. Every rollout must succeed, the dead replica's ones
finished by the others.
"""

from __future__ import annotations

from pathlib import Path

from controller.sandbox.chaos.shardsoak import ShardSoakConfig, run_shard_soak


def test_three_sharded_replicas_one_killed_finish_every_rollout_and_never_share_one(tmp_path: Path) -> None:
    config = ShardSoakConfig(rollouts=24, replicas=3, shards=16, kill_after_s=12.0, deadline_s=240.0, seed=0)
    result = run_shard_soak(config, tmp_path)
    logs = "\n".join(f"--- {who}\n{text[-2000:]}" for who, text in result.logs.items())
    assert result.violations == [], logs
    assert result.phases == {"Succeeded": config.rollouts}, (result.summary(), logs)
    assert result.killed and result.shards_of_killed > 0
    assert result.taken_over > 0  # the dead replica's rollouts were finished by the others
    assert result.shard_transitions >= result.shards_of_killed
    assert len(result.writes_by_replica) == config.replicas and result.judged_writes > 3 * config.rollouts


def test_the_checker_sees_replicas_that_do_not_shard_drive_the_same_rollouts(tmp_path: Path) -> None:
    """The negative control: the same world with two replicas that do not shard (each drives every
    rollout, no Lease at all): their writes are caught as written without the shard's Lease."""
    config = ShardSoakConfig(rollouts=6, replicas=2, kill_after_s=1e9, deadline_s=60.0, sharded=False)
    result = run_shard_soak(config, tmp_path)
    assert any(v.startswith("write-without-lease") for v in result.violations), result.summary()
