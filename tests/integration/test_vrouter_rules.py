"""The VR's rules against the kernel, in a scratch namespace, for both iptables backends: rendered
exactly as iptables-save prints them, so a second apply is a no-op, and the agent's in-memory copy
of a table after a restore equals what the kernel then holds."""

from __future__ import annotations

import subprocess
import uuid as uuidlib

import pytest

from agents.vrouter import rules
from schema import vrouter as vr
from tests.support.netns import Netns


def state(n_eips: int) -> vr.VrState:
    pfs = [
        ("TCP", 2000, 2002, 3000, "1.2.3.4/32"),  # a shifted range, one allowed source
        ("UDP", 5000, 5001, 5000, "0.0.0.0/0"),  # the same ports, from anywhere
        ("TCP", 80, 80, 8080, "10.0.0.0/8"),  # one port to another
    ]
    return vr.VrState.model_validate(
        {
            "snats": [{"guestCidr": "10.9.0.0/24", "publicIp": "203.0.113.1"}],
            "eips": [
                {"uuid": uuidlib.uuid4().hex, "vipIp": f"203.0.113.{100 + i}", "guestIp": f"10.9.0.{100 + i}"}
                for i in range(n_eips)
            ],
            "portForwardings": [
                {
                    "uuid": uuidlib.uuid4().hex,
                    "vipIp": "203.0.113.20",
                    "protocol": p,
                    "vipPortStart": a,
                    "vipPortEnd": b,
                    "privatePortStart": c,
                    "privatePortEnd": c + b - a,
                    "guestIp": "10.9.0.11",
                    "allowedCidr": cidr,
                }
                for p, a, b, c, cidr in pfs
            ],
        }
    )


NICS = rules.Interfaces(public="vpub", management="mgmt0", guests=("vguest",))


@pytest.fixture
def scratch():
    ns = Netns("rsvq")
    try:
        yield ns
    finally:
        ns.close()


def _apply(ns: Netns, backend: str, table: str, desired: rules.Chains) -> tuple[list[str], rules.TableDump]:
    current = rules.parse_save(ns.run(f"iptables-{backend}-save", "-t", table).stdout)
    lines = rules.diff_table(table, desired, current)
    done = subprocess.run(
        ["ip", "netns", "exec", ns.name, f"iptables-{backend}-restore", "--noflush", "-w", "5"],
        input=rules.restore_text(table, lines),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return lines, rules.apply_to_dump(current, lines)


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_rules_round_trip_and_a_second_apply_is_a_no_op(scratch, backend):
    scratch.run(f"iptables-{backend}", "-t", "nat", "-N", "operator")  # not ours: must stay
    scratch.run(f"iptables-{backend}", "-t", "nat", "-A", "PREROUTING", "-j", "operator")
    first = state(5)
    for table in rules.TABLES:
        desired = rules.render(first, NICS)[table]
        lines, predicted = _apply(scratch, backend, table, desired)
        assert lines
        kernel = rules.parse_save(scratch.run(f"iptables-{backend}-save", "-t", table).stdout)
        assert predicted.chains == kernel.chains
        assert kernel.own() == desired
        assert rules.diff_table(table, desired, kernel) == []
    # One EIP less and one more: a few -D/-A lines, not a rewrite, and the kernel agrees.
    second = first.model_copy(update={"eips": first.eips[1:] + state(1).eips})
    desired = rules.render(second, NICS)["nat"]
    lines, predicted = _apply(scratch, backend, "nat", desired)
    assert sorted(line.split()[0] for line in lines) == ["-A", "-A", "-D", "-D"]
    kernel = rules.parse_save(scratch.run(f"iptables-{backend}-save", "-t", "nat").stdout)
    assert predicted.chains == kernel.chains and kernel.own() == desired
    assert "operator" in kernel.chains and "-j operator" in kernel.chains["PREROUTING"]
