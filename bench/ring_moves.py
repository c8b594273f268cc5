"""How many resources change owner when a management node joins or leaves, and how even the load is.

Method
------
Pure computation with ``bus.ring.Ring`` (256 partitions, 160 virtual nodes per member: the
defaults the nodes use); no broker, database or process. For n = 1..8 members (random uuids, as
nodes have), ``--keys`` random resource uuids (default 100,000) are placed on:

* the ring of the n members and the ring after a new member **joins** (n+1 members). The ideal
  fraction of keys that move is 1/(n+1): the newcomer's fair share, all moving to it;
* the ring of the n members and the ring after one of them (chosen at random) **leaves** (n-1
  members, so only for n >= 2). The ideal is 1/n: exactly the leaver's keys.

For each n the whole thing is repeated ``--trials`` times (default 20) with fresh member uuids,
and the mean and worst fractions are reported. The table also says whether every key that moved
went to the newcomer (join) or came from the leaver (leave), which is what consistent hashing
promises, and gives the load balance of the n-member ring: the most loaded member's keys divided
by the least loaded member's, mean and worst over the trials (1.0 is perfect), and the same for
partitions.

Resources are placed a partition at a time (``partition_of`` then the partition's owner), so the
fractions move in steps of about 1/256 and the balance reflects both the virtual nodes and the
partition granularity.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import uuid as uuidlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):  # run as ``python bench/x.py``: make the repository importable, as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bus.ring import DEFAULT_PARTITIONS, DEFAULT_VNODES, Ring, partition_of

MAX_NODES: Final = 8


@dataclass(frozen=True, slots=True)
class Keys:
    """Random resource uuids, counted per partition (all that placement depends on)."""

    count: int
    per_partition: tuple[int, ...]

    @classmethod
    def random(cls, count: int, partitions: int, rng: random.Random) -> Keys:
        counts = Counter(
            partition_of(uuidlib.UUID(int=rng.getrandbits(128), version=4).hex, partitions)
            for _ in range(count)
        )
        return cls(count, tuple(counts.get(p, 0) for p in range(partitions)))


def moved(before: Ring, after: Ring, keys: Keys) -> tuple[float, bool]:
    """Fraction of keys whose owner differs, and whether every move involved only the changed member."""
    changed = set(before.members) ^ set(after.members)
    count, minimal = 0, True
    for p, n in enumerate(keys.per_partition):
        old, new = before.owner_of_partition(p), after.owner_of_partition(p)
        if old != new:
            count += n
            minimal = minimal and (old in changed or new in changed)
    return count / keys.count, minimal


def balance(ring: Ring, keys: Keys) -> tuple[float, float]:
    """Max/min load across members: in keys, and in partitions."""
    key_load = Counter({m: 0 for m in ring.members})
    part_load = Counter({m: 0 for m in ring.members})
    for p, n in enumerate(keys.per_partition):
        owner = ring.owner_of_partition(p)
        assert owner is not None
        key_load[owner] += n
        part_load[owner] += 1

    def ratio(load: Counter[Any]) -> float:
        low = min(load.values())
        return float("inf") if low == 0 else max(load.values()) / low

    return ratio(key_load), ratio(part_load)


def new_member(rng: random.Random) -> str:
    return uuidlib.UUID(int=rng.getrandbits(128), version=4).hex


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 4), "worst": round(max(values), 4)}


def run(keys_count: int, trials: int, seed: int, partitions: int, vnodes: int) -> dict[str, Any]:
    rng = random.Random(seed)
    started = time.perf_counter()
    keys = Keys.random(keys_count, partitions, rng)
    rows = []
    for n in range(1, MAX_NODES + 1):
        join: list[float] = []
        leave: list[float] = []
        key_ratio: list[float] = []
        part_ratio: list[float] = []
        join_minimal = leave_minimal = True
        for _ in range(trials):
            members = [new_member(rng) for _ in range(n)]
            ring = Ring.build(1, members, partitions, vnodes)
            joined = Ring.build(2, [*members, new_member(rng)], partitions, vnodes)
            fraction, minimal = moved(ring, joined, keys)
            join.append(fraction)
            join_minimal = join_minimal and minimal
            if n >= 2:
                leaver = rng.choice(members)
                left = Ring.build(2, [m for m in members if m != leaver], partitions, vnodes)
                fraction, minimal = moved(ring, left, keys)
                leave.append(fraction)
                leave_minimal = leave_minimal and minimal
            k, p = balance(ring, keys)
            key_ratio.append(k)
            part_ratio.append(p)
        rows.append(
            {
                "nodes": n,
                "join": {**summary(join), "ideal": round(1 / (n + 1), 4), "only_to_newcomer": join_minimal},
                "leave": {**summary(leave), "ideal": round(1 / n, 4), "only_from_leaver": leave_minimal}
                if leave
                else None,
                "max_min_keys": summary(key_ratio),
                "max_min_partitions": summary(part_ratio),
            }
        )
    return {
        "config": {
            "keys": keys_count,
            "trials": trials,
            "seed": seed,
            "partitions": partitions,
            "vnodes": vnodes,
            "seconds": round(time.perf_counter() - started, 2),
        },
        "results": rows,
    }


def table(data: dict[str, Any]) -> str:
    cfg = data["config"]
    lines = [
        f"{cfg['keys']:,} keys, {cfg['partitions']} partitions, {cfg['vnodes']} vnodes per member, "
        f"{cfg['trials']} trials per row (mean / worst)",
        "",
        f"{'n':>2} | {'join: moved':>13} {'ideal':>6} {'minimal':>7} | {'leave: moved':>13} {'ideal':>6} "
        f"{'minimal':>7} | {'max/min keys':>13} {'max/min parts':>13}",
        "-" * 98,
    ]
    for r in data["results"]:
        j, lv, k, p = r["join"], r["leave"], r["max_min_keys"], r["max_min_partitions"]
        join = f"{j['mean']:.3f}/{j['worst']:.3f}"
        if lv is None:
            leave = f"{'-':>13} {'-':>6} {'-':>7}"
        else:
            moved = f"{lv['mean']:.3f}/{lv['worst']:.3f}"
            leave = f"{moved:>13} {lv['ideal']:>6.3f} {str(lv['only_from_leaver']).lower():>7}"
        keys = f"{k['mean']:.2f}/{k['worst']:.2f}"
        parts = f"{p['mean']:.2f}/{p['worst']:.2f}"
        lines.append(
            f"{r['nodes']:>2} | {join:>13} {j['ideal']:>6.3f} {str(j['only_to_newcomer']).lower():>7} | "
            f"{leave} | {keys:>13} {parts:>13}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ring_moves", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--keys", type=int, default=100_000, help="random resource uuids (default: %(default)s)"
    )
    parser.add_argument("--trials", type=int, default=20, help="member sets per n (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    parser.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS, help="(default: %(default)s)")
    parser.add_argument("--vnodes", type=int, default=DEFAULT_VNODES, help="(default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if not 1 <= args.keys <= 10_000_000:
        parser.error("--keys must be between 1 and 10,000,000")
    if not 1 <= args.trials <= 1000:
        parser.error("--trials must be between 1 and 1000")
    if args.partitions < 1 or args.vnodes < 1:
        parser.error("--partitions and --vnodes must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = run(args.keys, args.trials, args.seed, args.partitions, args.vnodes)
    print(json.dumps(data) if args.json else table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
