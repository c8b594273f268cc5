"""IPv4 address arithmetic, IP range rules and IP allocation strategies: pure logic, standard
library only, shared by the API schema (``schema.api.network_ipam`` validates ranges with it) and
the allocator, so that validation and allocation agree.

The database side (``mgmt.services.network.ipam``) loads an L3 network's ranges and used
addresses, asks a strategy for a candidate, and INSERTs it under a unique constraint; this module
only decides which addresses are allocatable and which one to try.

An address is allocatable in a range when it lies in ``[start, end]`` and is neither the subnet's
network address, its broadcast address nor the gateway. Range validation already keeps those out
of a range; the allocator excludes them again so no bad range (old data, a future import) can make
it hand them out.

Strategies are pluggable (``register_strategy``); the built-in ones are ZStack's
``FirstAvailableIpAllocatorStrategy`` and ``RandomIpAllocatorStrategy`` (the default, as in
ZStack: random picks rarely collide when several transactions allocate at once).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError
from typing import Protocol

# A range needs a network address, a gateway, at least one address and a broadcast address.
MIN_PREFIX = 1
MAX_PREFIX = 30

# Blocks no range may touch (ZStack refuses multicast, class E and link-local; we add the
# "this network" and loopback blocks, which no NIC can use either).
RESERVED_BLOCKS: tuple[IPv4Network, ...] = (
    IPv4Network("0.0.0.0/8"),
    IPv4Network("127.0.0.0/8"),
    IPv4Network("169.254.0.0/16"),
    IPv4Network("224.0.0.0/4"),
    IPv4Network("240.0.0.0/4"),
)


# ------------------------------------------------------------------ parsing


def parse_ipv4(text: str) -> IPv4Address:
    """An IPv4 address in dotted-quad form; ValueError (with a readable message) otherwise."""
    try:
        return IPv4Address(text)
    except AddressValueError:
        raise ValueError(f"{text!r} is not an IPv4 address") from None


def to_int(ip: str) -> int:
    return int(parse_ipv4(ip))


def to_str(value: int) -> str:
    return str(IPv4Address(value))


def netmask_prefix(netmask: str) -> int:
    """The prefix length of a dotted netmask such as ``255.255.255.0``."""
    parse_ipv4(netmask)
    try:
        net = IPv4Network(f"0.0.0.0/{netmask}")
    except (NetmaskValueError, ValueError):
        raise ValueError(f"{netmask!r} is not a netmask (its one bits must be contiguous)") from None
    # ipaddress also reads "0.0.0.255" as a host mask; a netmask must be written as one.
    if str(net.netmask) != netmask:
        raise ValueError(f"{netmask!r} is not a netmask (its one bits must be contiguous)")
    return net.prefixlen


def check_prefix(prefix: int) -> None:
    if not MIN_PREFIX <= prefix <= MAX_PREFIX:
        raise ValueError(
            f"a /{prefix} network has no room for a gateway and addresses; "
            f"use a prefix from /{MIN_PREFIX} to /{MAX_PREFIX}"
        )


def reserved_block_hit(start: int, end: int) -> IPv4Network | None:
    """The first reserved block that ``[start, end]`` overlaps, if any."""
    for block in RESERVED_BLOCKS:
        if start <= int(block.broadcast_address) and int(block.network_address) <= end:
            return block
    return None


# ------------------------------------------------------------------ subnets and ranges


@dataclass(frozen=True, slots=True)
class Subnet:
    network: int
    prefix: int

    @classmethod
    def of(cls, ip: int, prefix: int) -> Subnet:
        mask = netmask_int(prefix)
        return cls(ip & mask, prefix)

    @property
    def broadcast(self) -> int:
        return self.network | (~netmask_int(self.prefix) & 0xFFFFFFFF)

    @property
    def netmask(self) -> str:
        return to_str(netmask_int(self.prefix))

    @property
    def cidr(self) -> str:
        return f"{to_str(self.network)}/{self.prefix}"

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, int) and self.network <= ip <= self.broadcast


def netmask_int(prefix: int) -> int:
    return (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class RangeSpec:
    """An IP range as integers; ``uuid`` names the stored range (empty for a proposed one)."""

    start: int
    end: int
    gateway: int
    prefix: int
    uuid: str = ""

    @property
    def subnet(self) -> Subnet:
        return Subnet.of(self.start, self.prefix)

    @property
    def lo(self) -> int:
        """The lowest address that may be allocatable (network address excluded)."""
        return max(self.start, self.subnet.network + 1)

    @property
    def hi(self) -> int:
        """The highest address that may be allocatable (broadcast address excluded)."""
        return min(self.end, self.subnet.broadcast - 1)

    def contains(self, ip: int) -> bool:
        return self.start <= ip <= self.end

    def allocatable(self, ip: int) -> bool:
        return self.lo <= ip <= self.hi and ip != self.gateway

    def capacity(self) -> int:
        """How many addresses this range can hand out in all."""
        if self.hi < self.lo:
            return 0
        return self.hi - self.lo + 1 - (1 if self.lo <= self.gateway <= self.hi else 0)

    def addresses(self, first: int | None = None) -> Iterator[int]:
        """Allocatable addresses in ascending order, from ``first`` on."""
        ip = self.lo if first is None else max(self.lo, first)
        while ip <= self.hi:
            if ip != self.gateway:
                yield ip
            ip += 1

    def overlaps(self, start: int, end: int) -> bool:
        return self.start <= end and start <= self.end


# Checks of a proposed range, one per field in the order AddIpRange declares them, so each error
# names the field at fault. Each raises ValueError.


def check_bounds(start: int, end: int) -> None:
    if end < start:
        raise ValueError(f"endIp {to_str(end)} is before startIp {to_str(start)}")
    block = reserved_block_hit(start, end)
    if block is not None:
        raise ValueError(f"the range {to_str(start)}-{to_str(end)} overlaps the reserved block {block}")


def check_netmask(start: int, end: int, prefix: int) -> None:
    check_prefix(prefix)
    subnet = Subnet.of(start, prefix)
    if end not in subnet:
        raise ValueError(
            f"startIp {to_str(start)} and endIp {to_str(end)} are not in one network {subnet.cidr}"
        )
    if start == subnet.network:
        raise ValueError(f"startIp {to_str(start)} is the network address of {subnet.cidr}")
    if end == subnet.broadcast:
        raise ValueError(f"endIp {to_str(end)} is the broadcast address of {subnet.cidr}")


def check_gateway(start: int, end: int, prefix: int, gateway: int) -> None:
    subnet = Subnet.of(start, prefix)
    if gateway not in subnet:
        raise ValueError(f"gateway {to_str(gateway)} is not in the network {subnet.cidr}")
    if gateway in (subnet.network, subnet.broadcast):
        raise ValueError(f"gateway {to_str(gateway)} is the network or broadcast address of {subnet.cidr}")
    if start <= gateway <= end:
        # ZStack's rule: the gateway is never handed out, so it may not be part of a range.
        raise ValueError(f"gateway {to_str(gateway)} is inside the range {to_str(start)}-{to_str(end)}")


def range_from_cidr(cidr: str) -> RangeSpec:
    """ZStack's AddIpRangeByNetworkCidr: the gateway is the first usable address, the range the rest."""
    net = parse_cidr(cidr)
    network = int(net.network_address)
    broadcast = int(net.broadcast_address)
    return RangeSpec(start=network + 2, end=broadcast - 1, gateway=network + 1, prefix=net.prefixlen)


def parse_cidr(cidr: str) -> IPv4Network:
    """A network in CIDR form whose host bits are zero, of an allowed size and not reserved."""
    address, slash, prefix_text = cidr.partition("/")
    if not slash or not prefix_text.isdigit() or int(prefix_text) > 32:
        raise ValueError(f"{cidr!r} is not a network CIDR such as 192.168.0.0/24")
    parse_ipv4(address)
    check_prefix(int(prefix_text))
    net = IPv4Network(cidr, strict=False)
    if str(net.network_address) != address:
        raise ValueError(f"{cidr!r} has host bits set; did you mean {net}?")
    block = reserved_block_hit(int(net.network_address), int(net.broadcast_address))
    if block is not None:
        raise ValueError(f"{cidr} overlaps the reserved block {block}")
    return net


def locate(ranges: Sequence[RangeSpec], ip: int) -> RangeSpec | None:
    """The range whose ``[start, end]`` holds ``ip``."""
    for spec in ranges:
        if spec.contains(ip):
            return spec
    return None


def free_addresses(
    ranges: Sequence[RangeSpec], taken: AbstractSet[int], *, first: int | None = None, limit: int
) -> list[tuple[RangeSpec, int]]:
    """Up to ``limit`` free allocatable addresses, ascending, from ``first`` on."""
    found: list[tuple[RangeSpec, int]] = []
    for spec in sorted(ranges, key=lambda r: r.start):
        for ip in spec.addresses(first):
            if len(found) >= limit:
                return found
            if ip not in taken:
                found.append((spec, ip))
    return found


def free_count(spec: RangeSpec, taken: AbstractSet[int]) -> int:
    return spec.capacity() - sum(1 for ip in taken if spec.allocatable(ip))


# ------------------------------------------------------------------ strategies


class AllocationStrategy(Protocol):
    """Picks a candidate address; ``taken`` holds used addresses and ones that just collided."""

    name: str

    def pick(self, ranges: Sequence[RangeSpec], taken: AbstractSet[int]) -> tuple[RangeSpec, int] | None: ...


class FirstAvailable:
    """The lowest free address of the lowest range (ZStack's FirstAvailableIpAllocatorStrategy)."""

    name = "FirstAvailableIpAllocatorStrategy"

    def pick(self, ranges: Sequence[RangeSpec], taken: AbstractSet[int]) -> tuple[RangeSpec, int] | None:
        found = free_addresses(ranges, taken, limit=1)
        return found[0] if found else None


class RandomPick:
    """A uniformly random free address (ZStack's RandomIpAllocatorStrategy).

    A range is chosen with weight equal to its free count, then random probes find a free
    address in it; a nearly full range falls back to listing its free addresses.
    """

    name = "RandomIpAllocatorStrategy"
    probes = 32

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def pick(self, ranges: Sequence[RangeSpec], taken: AbstractSet[int]) -> tuple[RangeSpec, int] | None:
        weights = [free_count(spec, taken) for spec in ranges]
        if sum(weights) <= 0:
            return None
        spec = self.rng.choices(list(ranges), weights=weights)[0]
        for _ in range(self.probes):
            ip = self.rng.randint(spec.lo, spec.hi)
            if spec.allocatable(ip) and ip not in taken:
                return spec, ip
        free = [ip for ip in spec.addresses() if ip not in taken]
        return (spec, self.rng.choice(free)) if free else None


FIRST_AVAILABLE = FirstAvailable.name
RANDOM = RandomPick.name
DEFAULT_STRATEGY = RANDOM

_STRATEGIES: dict[str, AllocationStrategy] = {FIRST_AVAILABLE: FirstAvailable(), RANDOM: RandomPick()}


def register_strategy(strategy: AllocationStrategy) -> None:
    """Make a strategy selectable by its name (plugins call this at import time)."""
    _STRATEGIES[strategy.name] = strategy


def strategy_names() -> list[str]:
    return sorted(_STRATEGIES)


def get_strategy(name: str | None) -> AllocationStrategy:
    key = DEFAULT_STRATEGY if name is None else name
    try:
        return _STRATEGIES[key]
    except KeyError:
        raise ValueError(
            f"unknown IP allocator strategy {key!r}; known: {', '.join(strategy_names())}"
        ) from None
