"""Link rows (attachments) named in cascades as ``"<left uuid>:<right uuid>"`` strings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def pair_ids(pairs: Iterable[tuple[str, str]]) -> list[str]:
    return [f"{left}:{right}" for left, right in pairs]


def split_pairs(ids: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for link_id in ids:
        left, _, right = link_id.partition(":")
        pairs.append((left, right))
    return pairs
