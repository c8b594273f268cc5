"""IPv4 arithmetic and allocation strategies (schema.ipv4): pure logic, no database."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from schema import ipv4 as ipam
from schema.ipv4 import RangeSpec

ip = ipam.to_int


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("mask", "prefix"),
    [
        ("128.0.0.0", 1),
        ("255.0.0.0", 8),
        ("255.255.255.0", 24),
        ("255.255.255.252", 30),
        ("255.255.255.255", 32),
    ],
)
def test_netmask_prefix(mask: str, prefix: int) -> None:
    assert ipam.netmask_prefix(mask) == prefix


@pytest.mark.parametrize(
    ("mask", "needle"),
    [
        ("255.0.255.0", "contiguous"),
        ("0.0.0.255", "contiguous"),  # a host mask, which ipaddress would otherwise accept
        ("255.255.255.256", "not an IPv4 address"),
        ("255.255.255", "not an IPv4 address"),
        ("mask", "not an IPv4 address"),
    ],
)
def test_bad_netmasks(mask: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        ipam.netmask_prefix(mask)


@pytest.mark.parametrize("prefix", [0, 31, 32])
def test_prefixes_without_room_are_refused(prefix: int) -> None:
    with pytest.raises(ValueError, match="no room"):
        ipam.check_prefix(prefix)


def test_round_trip_and_leading_zeros() -> None:
    assert ipam.to_str(ip("10.1.2.3")) == "10.1.2.3"
    with pytest.raises(ValueError, match="not an IPv4 address"):
        ipam.to_int("010.1.2.3")
    with pytest.raises(ValueError, match="not an IPv4 address"):
        ipam.to_int("::1")


def test_subnet_arithmetic() -> None:
    subnet = ipam.Subnet.of(ip("192.168.7.77"), 24)
    assert subnet.cidr == "192.168.7.0/24"
    assert subnet.netmask == "255.255.255.0"
    assert ipam.to_str(subnet.broadcast) == "192.168.7.255"
    assert ip("192.168.7.0") in subnet
    assert ip("192.168.8.0") not in subnet
    assert "192.168.7.1" not in subnet  # only integers are members


# ---------------------------------------------------------------- range checks


def test_range_from_cidr_takes_the_first_usable_address_as_gateway() -> None:
    spec = ipam.range_from_cidr("192.168.1.0/24")
    assert (ipam.to_str(spec.gateway), ipam.to_str(spec.start), ipam.to_str(spec.end)) == (
        "192.168.1.1",
        "192.168.1.2",
        "192.168.1.254",
    )
    assert spec.capacity() == 253
    smallest = ipam.range_from_cidr("10.0.0.4/30")
    assert (smallest.start, smallest.end, smallest.capacity()) == (ip("10.0.0.6"), ip("10.0.0.6"), 1)


@pytest.mark.parametrize(
    ("cidr", "needle"),
    [
        ("192.168.1.5/24", "host bits set; did you mean 192.168.1.0/24"),
        ("192.168.1.0", "not a network CIDR"),
        ("192.168.1.0/x", "not a network CIDR"),
        ("192.168.1.0/-1", "not a network CIDR"),
        ("192.168.1.0/31", "no room"),
        ("0.0.0.0/0", "no room"),
        ("300.1.1.0/24", "not an IPv4 address"),
        ("224.0.0.0/24", "reserved block 224.0.0.0/4"),
        ("127.0.0.0/24", "reserved block 127.0.0.0/8"),
        ("169.254.1.0/24", "reserved block 169.254.0.0/16"),
        ("128.0.0.0/1", "reserved block 169.254.0.0/16"),
    ],
)
def test_bad_cidrs(cidr: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        ipam.parse_cidr(cidr)


def test_check_bounds() -> None:
    ipam.check_bounds(ip("10.0.0.5"), ip("10.0.0.5"))
    with pytest.raises(ValueError, match=r"endIp 10\.0\.0\.4 is before startIp 10\.0\.0\.5"):
        ipam.check_bounds(ip("10.0.0.5"), ip("10.0.0.4"))
    with pytest.raises(ValueError, match=re.escape("reserved block 224.0.0.0/4")):
        ipam.check_bounds(ip("223.255.255.250"), ip("224.0.0.3"))
    with pytest.raises(ValueError, match=re.escape("reserved block 240.0.0.0/4")):
        ipam.check_bounds(ip("240.0.0.1"), ip("240.0.0.3"))


@pytest.mark.parametrize(
    ("start", "end", "prefix", "needle"),
    [
        ("10.0.0.10", "10.0.1.10", 24, r"not in one network 10\.0\.0\.0/24"),
        ("10.0.0.0", "10.0.0.10", 24, "network address"),
        ("10.0.0.10", "10.0.0.255", 24, "broadcast address"),
        ("10.0.0.10", "10.0.0.20", 31, "no room"),
    ],
)
def test_check_netmask(start: str, end: str, prefix: int, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        ipam.check_netmask(ip(start), ip(end), prefix)


@pytest.mark.parametrize(
    ("gateway", "needle"),
    [
        ("10.0.1.1", "not in the network"),
        ("10.0.0.0", "network or broadcast"),
        ("10.0.0.255", "network or broadcast"),
        ("10.0.0.10", "inside the range"),
        ("10.0.0.15", "inside the range"),
        ("10.0.0.20", "inside the range"),
    ],
)
def test_check_gateway(gateway: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        ipam.check_gateway(ip("10.0.0.10"), ip("10.0.0.20"), 24, ip(gateway))


def test_valid_range_passes_every_check() -> None:
    start, end, gw = ip("10.0.0.10"), ip("10.0.0.20"), ip("10.0.0.1")
    ipam.check_bounds(start, end)
    ipam.check_netmask(start, end, 24)
    ipam.check_gateway(start, end, 24, gw)


# ---------------------------------------------------------------- allocation properties


@st.composite
def ranges(draw: st.DrawFn) -> RangeSpec:
    """Any range inside one small subnet, including bad ones (holding the network address,
    the broadcast address or the gateway), to prove the allocator never hands those out."""
    prefix = draw(st.integers(min_value=23, max_value=30))
    size = 1 << (32 - prefix)
    network = draw(st.integers(min_value=1, max_value=(1 << (prefix)) - 2)) * size
    start = network + draw(st.integers(min_value=0, max_value=size - 1))
    end = draw(st.integers(min_value=start, max_value=network + size - 1))
    gateway = network + draw(st.integers(min_value=0, max_value=size - 1))
    return RangeSpec(start=start, end=end, gateway=gateway, prefix=prefix, uuid=f"r{start}")


def _assert_allocatable(spec: RangeSpec, value: int) -> None:
    subnet = spec.subnet
    assert spec.start <= value <= spec.end
    assert value not in (subnet.network, subnet.broadcast, spec.gateway)


@settings(max_examples=200, deadline=None)
@given(
    spec=ranges(),
    seed=st.integers(min_value=0, max_value=2**32),
    strategy=st.sampled_from(ipam.strategy_names()),
)
def test_allocating_until_exhaustion_hands_out_each_allocatable_address_once(
    spec: RangeSpec, seed: int, strategy: str
) -> None:
    chooser = ipam.get_strategy(strategy)
    if isinstance(chooser, ipam.RandomPick):
        chooser = ipam.RandomPick(random.Random(seed))
    taken: set[int] = set()
    while (picked := chooser.pick([spec], taken)) is not None:
        owner, value = picked
        assert owner is spec
        _assert_allocatable(spec, value)
        assert value not in taken
        taken.add(value)
    assert len(taken) == spec.capacity() == len(list(spec.addresses()))
    assert ipam.free_count(spec, taken) == 0


@settings(max_examples=200, deadline=None)
@given(
    specs=st.lists(ranges(), min_size=1, max_size=3),
    data=st.data(),
)
def test_free_addresses_are_ascending_allocatable_and_not_taken(
    specs: list[RangeSpec], data: st.DataObject
) -> None:
    # the ranges of one L3 never overlap (the service refuses it)
    assume(all(not a.overlaps(b.start, b.end) for i, a in enumerate(specs) for b in specs[i + 1 :]))
    everything = sorted({a for s in specs for a in s.addresses()})
    taken = set(data.draw(st.lists(st.sampled_from(everything), max_size=20))) if everything else set()
    limit = data.draw(st.integers(min_value=1, max_value=600))
    found = ipam.free_addresses(specs, taken, limit=limit)
    values = [v for _, v in found]
    assert len(values) <= limit
    assert values == sorted(values)
    for owner, value in found:
        _assert_allocatable(owner, value)
        assert value not in taken
    first = ipam.FirstAvailable().pick(specs, taken)
    assert first == (found[0] if found else None)


def test_first_available_takes_the_lowest_free_address_of_the_lowest_range() -> None:
    low = RangeSpec(start=ip("10.0.0.10"), end=ip("10.0.0.12"), gateway=ip("10.0.0.1"), prefix=24, uuid="low")
    high = RangeSpec(
        start=ip("10.0.0.50"), end=ip("10.0.0.60"), gateway=ip("10.0.0.1"), prefix=24, uuid="high"
    )
    chooser = ipam.FirstAvailable()
    assert chooser.pick([high, low], set()) == (low, ip("10.0.0.10"))
    assert chooser.pick([high, low], {ip("10.0.0.10"), ip("10.0.0.12")}) == (low, ip("10.0.0.11"))
    full_low = {ip("10.0.0.10"), ip("10.0.0.11"), ip("10.0.0.12")}
    assert chooser.pick([high, low], full_low) == (high, ip("10.0.0.50"))


def test_random_spreads_over_the_range() -> None:
    spec = ipam.range_from_cidr("10.0.0.0/24")
    chooser = ipam.RandomPick(random.Random(7))
    picks = {chooser.pick([spec], set())[1] for _ in range(50)}  # type: ignore[index]
    assert len(picks) > 30  # first-available would give one address 50 times


def test_free_addresses_from_a_start_address() -> None:
    spec = ipam.range_from_cidr("10.0.0.0/29")  # gateway .1, range .2-.6
    found = ipam.free_addresses([spec], {ip("10.0.0.5")}, first=ip("10.0.0.4"), limit=10)
    assert [ipam.to_str(v) for _, v in found] == ["10.0.0.4", "10.0.0.6"]


def test_locate() -> None:
    spec = ipam.range_from_cidr("10.0.0.0/29")
    assert ipam.locate([spec], ip("10.0.0.3")) is spec
    assert ipam.locate([spec], ip("10.0.0.1")) is None


def test_strategies_are_pluggable_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ipam, "_STRATEGIES", dict(ipam._STRATEGIES))  # leave the real registry alone

    class Highest:
        name = "TestHighestIpAllocatorStrategy"

        def pick(self, ranges, taken):
            free = ipam.free_addresses(ranges, taken, limit=10**6)
            return free[-1] if free else None

    assert ipam.get_strategy(None).name == ipam.DEFAULT_STRATEGY == "RandomIpAllocatorStrategy"
    with pytest.raises(ValueError, match="unknown IP allocator strategy 'TestHighestIpAllocatorStrategy'"):
        ipam.get_strategy("TestHighestIpAllocatorStrategy")
    ipam.register_strategy(Highest())
    spec = ipam.range_from_cidr("10.0.0.0/29")
    assert ipam.get_strategy("TestHighestIpAllocatorStrategy").pick([spec], set()) == (spec, ip("10.0.0.6"))
    assert "TestHighestIpAllocatorStrategy" in ipam.strategy_names()
