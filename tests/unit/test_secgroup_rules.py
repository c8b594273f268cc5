"""Security-group rule rendering and diffing (agents/kvm/secgroup.py) as pure logic, and the
protocol's validation of rules. The real tables are exercised in tests/system/test_security_groups.py."""

from __future__ import annotations

import uuid as uuidlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.kvm.secgroup import HOOK, parse_save, parse_sets, render, restore_text
from bus.errors import RingstackError, Sys
from schema.agent import (
    ApplySecurityGroupRulesCommand,
    SecurityGroupRuleSpec,
    SecurityGroupSpec,
    VmNicSecuritySpec,
)
from schema.api.base import parse_wire

HOST = "f" * 32


def nic(*groups: str, ip: str = "10.0.0.5") -> VmNicSecuritySpec:
    return VmNicSecuritySpec(
        nic_uuid=uuidlib.uuid4().hex, mac="fa:16:3e:00:00:01", ips=[ip], security_group_uuids=list(groups)
    )


def save_of(chains: dict[str, list[str]], hook: bool = True, extra: list[str] | None = None) -> str:
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]"]
    lines += [f":{c} - [0:0]" for c in chains]
    if hook:
        lines.append(f"-A FORWARD {HOOK}")
    lines += extra or []
    for rules in chains.values():
        lines += rules
    return "\n".join([*lines, "COMMIT"])


def test_members_change_sets_not_rules():
    remote = uuidlib.uuid4().hex
    g = SecurityGroupSpec(
        uuid=uuidlib.uuid4().hex,
        rules=[SecurityGroupRuleSpec(type="Ingress", protocol="ICMP", remote_security_group_uuid=remote)],
    )
    nics = [nic(g.uuid)]
    few = render(nics, [g], {remote: ["10.0.0.1"]})
    many = render(nics, [g], {remote: [f"10.1.{i // 250}.{i % 250}" for i in range(1000)]})
    assert few.chains == many.chains and few.eb_chains == many.eb_chains
    assert len(many.sets[f"rs-m-{remote[:16]}"]) == 1000
    current = parse_save(save_of(few.chains), HOOK, ["FORWARD"])
    assert restore_text(current, many.chains, HOOK, ["FORWARD"], "-") == (None, 0)


def test_restore_text_sends_only_what_differs_and_leaves_others_alone():
    g = SecurityGroupSpec(uuid=uuidlib.uuid4().hex, rules=[])
    a, b = nic(g.uuid), nic(g.uuid, ip="10.0.0.6")
    old = render([a, b], [g], {})
    new = render([a], [g], {})
    current = parse_save(
        save_of(old.chains, extra=["-A FORWARD -s 10.8.8.8/32 -j ACCEPT"]), HOOK, ["FORWARD"]
    )
    text, rules = restore_text(current, new.chains, HOOK, ["FORWARD"], "-")
    assert text is not None and rules > 0
    gone = [c for c in old.chains if c not in new.chains]
    assert gone and all(f"-X {c}" in text.splitlines() for c in gone)
    assert "10.8.8.8" not in text  # foreign rules are not rewritten
    assert f":rs-o-{a.nic_uuid[:16]}" not in text  # an unchanged chain is not re-sent


def test_hook_is_added_once_first_and_duplicates_removed():
    g = SecurityGroupSpec(uuid=uuidlib.uuid4().hex, rules=[])
    desired = render([nic(g.uuid)], [g], {})
    missing = parse_save(save_of(desired.chains, hook=False), HOOK, ["FORWARD"])
    text, _ = restore_text(missing, desired.chains, HOOK, ["FORWARD"], "-")
    assert text is not None and f"-I FORWARD 1 {HOOK}" in text and "-D FORWARD" not in text
    doubled = parse_save(save_of(desired.chains, extra=[f"-A FORWARD {HOOK}"]), HOOK, ["FORWARD"])
    text, _ = restore_text(doubled, desired.chains, HOOK, ["FORWARD"], "-")
    assert text is not None and text.count(f"-D FORWARD {HOOK}") == 2
    not_first = parse_save(
        save_of(desired.chains, hook=False, extra=["-A FORWARD -j ACCEPT", f"-A FORWARD {HOOK}"]),
        HOOK,
        ["FORWARD"],
    )
    text, _ = restore_text(not_first, desired.chains, HOOK, ["FORWARD"], "-")
    assert text is not None and f"-I FORWARD 1 {HOOK}" in text
    # nothing desired: the hook and our chains go
    empty, _ = restore_text(
        parse_save(save_of(desired.chains), HOOK, ["FORWARD"]), {}, HOOK, ["FORWARD"], "-"
    )
    assert empty is not None and f"-D FORWARD {HOOK}" in empty and "-X rs-sg" in empty


def test_parse_sets_keeps_only_ours():
    text = (
        "create rs-m-ab hash:ip family inet\nadd rs-m-ab 10.0.0.1\ncreate other hash:ip\nadd other 1.1.1.1\n"
    )
    assert parse_sets(text) == {"rs-m-ab": {"10.0.0.1"}}


@pytest.mark.parametrize(
    "rule",
    [
        {"type": "Ingress", "protocol": "TCP"},
        {"type": "Ingress", "protocol": "TCP", "startPort": 90, "endPort": 80},
        {"type": "Ingress", "protocol": "ICMP", "startPort": 1, "endPort": 1},
        {
            "type": "Ingress",
            "protocol": "ALL",
            "allowedCidr": "10.0.0.0/8",
            "remoteSecurityGroupUuid": "a" * 32,
        },
        {"type": "Ingress", "protocol": "ALL", "allowedCidr": "10.0.0.1/8"},
        {"type": "Ingress", "protocol": "ALL", "allowedCidr": "not-a-cidr"},
        {"type": "Sideways", "protocol": "ALL"},
        {"type": "Ingress", "protocol": "UDP", "startPort": 1, "endPort": 70000},
    ],
)
def test_bad_rules_are_refused_with_a_structured_error(rule):
    body = {"hostUuid": HOST, "groups": [{"uuid": "b" * 32, "rules": [rule]}]}
    with pytest.raises(RingstackError) as err:
        parse_wire(ApplySecurityGroupRulesCommand, body)
    assert err.value.code == Sys.INVALID_ARGUMENT


def test_a_nic_in_a_group_not_sent_is_refused():
    body = {
        "hostUuid": HOST,
        "nics": [
            {
                "nicUuid": "a" * 32,
                "mac": "fa:16:3e:00:00:01",
                "ips": ["10.0.0.1"],
                "securityGroupUuids": ["b" * 32],
            }
        ],
    }
    with pytest.raises(RingstackError) as err:
        parse_wire(ApplySecurityGroupRulesCommand, body)
    assert err.value.code == Sys.INVALID_ARGUMENT


rules = st.builds(
    lambda kind, proto, lo, span, cidr: SecurityGroupRuleSpec(
        type=kind,
        protocol=proto,
        start_port=lo if proto in ("TCP", "UDP") else None,
        end_port=min(lo + span, 65535) if proto in ("TCP", "UDP") else None,
        allowed_cidr=cidr,
    ),
    st.sampled_from(["Ingress", "Egress"]),
    st.sampled_from(["TCP", "UDP", "ICMP", "ALL"]),
    st.integers(0, 65535),
    st.integers(0, 100),
    st.sampled_from([None, "10.0.0.0/8", "0.0.0.0/0"]),
)


@given(st.lists(rules, max_size=6), st.integers(1, 4))
def test_render_is_deterministic_and_names_fit_the_kernel(group_rules, n_nics):
    g = SecurityGroupSpec(uuid=uuidlib.uuid4().hex, rules=group_rules)
    nics = [nic(g.uuid, ip=f"10.0.0.{i + 1}") for i in range(n_nics)]
    one, two = render(nics, [g], {}), render(list(reversed(nics)), [g], {})
    assert one == two
    assert all(len(c) <= 28 for c in one.chains) and all(len(c) <= 31 for c in one.eb_chains)
    egress = [r for r in group_rules if r.type == "Egress"]
    key = nics[0].nic_uuid[:16]
    assert (f"rs-e-{key}" in one.chains) == bool(egress)
    if egress:
        assert one.chains[f"rs-e-{key}"][-1] == f"-A rs-e-{key} -j DROP"
