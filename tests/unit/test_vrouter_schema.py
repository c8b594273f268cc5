"""The VR protocol refuses every value that must not reach a command line, and the desired-state
rules across entries (pure: no agent, no kernel)."""

from __future__ import annotations

import uuid as uuidlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.vrouter import rules
from agents.vrouter.agent import updated
from bus.errors import RingstackError
from schema import vrouter as vr
from schema.api.base import parse_wire

VR = uuidlib.uuid4().hex
SAFE = set("0123456789abcdefABCDEF.:/-")


def pf(**kw: object) -> dict[str, object]:
    body: dict[str, object] = {
        "uuid": uuidlib.uuid4().hex,
        "vipIp": "203.0.113.3",
        "protocol": "TCP",
        "vipPortStart": 80,
        "vipPortEnd": 80,
        "privatePortStart": 8080,
        "privatePortEnd": 8080,
        "guestIp": "10.0.0.5",
    }
    body.update(kw)
    return body


@given(st.text(min_size=1, max_size=40))
def test_any_text_as_an_address_is_refused_or_a_plain_address(text):
    body = {"hostUuid": VR, "eip": {"uuid": uuidlib.uuid4().hex, "vipIp": text, "guestIp": "10.0.0.5"}}
    try:
        cmd = parse_wire(vr.EipCreateCommand, body)
    except RingstackError as exc:
        assert exc.code == "SYS.INVALID_ARGUMENT"
        assert exc.details["errors"][0]["field"] == "eip.vipIp"
        return
    # Whatever passed renders as a dotted quad: nothing else reaches iptables.
    assert set(str(cmd.eip.vip_ip)) <= SAFE
    rule = rules.eip_dnat(cmd.eip)
    assert rule.split()[1] == f"{cmd.eip.vip_ip}/32"


@given(st.text(min_size=1, max_size=70))
def test_host_names_and_domains_carry_no_separators(text):
    try:
        entry = vr.DhcpEntry.from_wire({"mac": "02:00:00:00:00:01", "ip": "10.0.0.5", "hostname": text})
    except Exception:
        return
    assert entry.hostname is not None and all(c.isalnum() or c == "-" for c in entry.hostname)


@pytest.mark.parametrize(
    "body",
    [
        pf(protocol="ICMP"),
        pf(vipPortStart=0),
        pf(vipPortEnd=65536, privatePortEnd=65536),
        pf(vipPortStart=90, vipPortEnd=80),
        pf(vipPortEnd=82),  # ranges of different lengths
        pf(allowedCidr="10.0.0.0/33"),
        pf(allowedCidr="10.0.0.1/24"),  # host bits set: not a network
        pf(uuid="0123; reboot"),
        pf(guestIp="10.0.0.5 -j ACCEPT"),
    ],
)
def test_bad_port_forwardings_are_refused(body):
    with pytest.raises(RingstackError) as err:
        parse_wire(vr.PortForwardingCreateCommand, {"hostUuid": VR, "rule": body})
    assert err.value.code == "SYS.INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (
            {
                "dhcp": [
                    {"mac": "02:00:00:00:00:01", "ip": "10.0.0.5"},
                    {"mac": "02:00:00:00:00:01", "ip": "10.0.0.6"},
                ]
            },
            "duplicate DHCP MAC",
        ),
        (
            {
                "dhcp": [
                    {"mac": "02:00:00:00:00:01", "ip": "10.0.0.5"},
                    {"mac": "02:00:00:00:00:02", "ip": "10.0.0.5"},
                ]
            },
            "duplicate DHCP IP",
        ),
        (
            {
                "eips": [{"uuid": "a" * 32, "vipIp": "203.0.113.3", "guestIp": "10.0.0.5"}],
                "portForwardings": [pf()],
            },
            "used by an EIP and by port forwarding",
        ),
        (
            {
                "portForwardings": [
                    pf(vipPortEnd=90, privatePortEnd=8090),
                    pf(vipPortStart=90, vipPortEnd=95, privatePortStart=90, privatePortEnd=95),
                ]
            },
            "overlap",
        ),
        (
            {
                "eips": [
                    {"uuid": "a" * 32, "vipIp": "203.0.113.3", "guestIp": "10.0.0.5"},
                    {"uuid": "b" * 32, "vipIp": "203.0.113.3", "guestIp": "10.0.0.6"},
                ]
            },
            "duplicate EIP VIP",
        ),
    ],
)
def test_states_that_cannot_hold_are_refused(state, message):
    with pytest.raises(RingstackError) as err:
        parse_wire(vr.SyncCommand, {"hostUuid": VR, "state": state})
    assert err.value.code == "SYS.INVALID_ARGUMENT" and message in err.value.message


def test_a_pf_and_tcp_udp_on_one_port_do_not_overlap():
    state = parse_wire(vr.VrState, {"portForwardings": [pf(), pf(protocol="UDP")]})
    assert len(state.port_forwardings) == 2


def test_incremental_updates_replace_by_key_and_remove_idempotently():
    eip = vr.Eip(uuid="a" * 32, vip_ip="203.0.113.3", guest_ip="10.0.0.5")  # type: ignore[arg-type]
    moved = eip.model_copy(update={"guest_ip": vr.IPv4Address("10.0.0.6")})
    s = updated(vr.VrState(), "eip.create", vr.EipCreateCommand(host_uuid=VR, eip=eip))
    s = updated(s, "eip.create", vr.EipCreateCommand(host_uuid=VR, eip=moved))
    assert [e.guest_ip for e in s.eips] == [moved.guest_ip]
    s = updated(s, "eip.remove", vr.EipRemoveCommand(host_uuid=VR, uuid=eip.uuid))
    assert updated(s, "eip.remove", vr.EipRemoveCommand(host_uuid=VR, uuid=eip.uuid)).eips == []


def test_the_diff_touches_only_what_changed_and_never_foreign_chains():
    nics = rules.Interfaces(public="eth1", guests=("eth2",))
    eips = [
        vr.Eip(uuid=f"{i:032x}", vip_ip=f"203.0.113.{i + 1}", guest_ip=f"10.0.0.{i + 1}") for i in range(10)
    ]  # type: ignore[arg-type]
    desired = rules.render(vr.VrState(eips=eips), nics)["nat"]
    current = rules.TableDump({"PREROUTING": ["-j operator"], "operator": ["-j RETURN"], "POSTROUTING": []})
    first = rules.diff_table("nat", desired, current)
    assert not any("operator" in line for line in first)
    after = rules.apply_to_dump(current, first)
    assert rules.diff_table("nat", desired, after) == []
    fewer = rules.render(vr.VrState(eips=eips[1:]), nics)["nat"]
    delta = rules.diff_table("nat", fewer, after)
    assert delta == [
        f"-D rs-eip-dnat {rules.eip_dnat(eips[0])}",
        f"-D rs-eip-snat {rules.eip_snat(eips[0], 'eth1')}",
    ]
    # A chain of ours that is no longer wanted is flushed and deleted; a duplicated jump is dropped.
    stale = rules.TableDump(
        {**after.chains, "rs-old": ["-j RETURN"], "PREROUTING": after.chains["PREROUTING"] * 2}
    )
    lines = rules.diff_table("nat", fewer, stale)
    assert ":rs-old - [0:0]" in lines and lines[-1] == "-X rs-old"
    assert lines.count(f"-D PREROUTING {rules.jump_spec('rs-PREROUTING')}") == 1


# ---------------------------------------------------------------- incremental checks

_ips = st.sampled_from([f"203.0.113.{i}" for i in range(1, 5)])
_guest = st.sampled_from([f"10.0.0.{i}" for i in range(1, 5)])
_uuids = st.sampled_from([f"{i:032x}" for i in range(4)])
_macs = st.sampled_from([f"02:00:00:00:00:0{i}" for i in range(4)])
_eip_ops = st.builds(
    lambda u, v, g: ("eip.create", {"eip": {"uuid": u, "vipIp": v, "guestIp": g}}), _uuids, _ips, _guest
)
_pf_ops = st.builds(
    lambda u, v, proto, start, n: (
        "pf.create",
        {"rule": pf(uuid=u, vipIp=v, protocol=proto, vipPortStart=start, vipPortEnd=start + n,
                    privatePortStart=start, privatePortEnd=start + n)},
    ),
    _uuids, _ips, st.sampled_from(["TCP", "UDP"]), st.integers(1, 6), st.integers(0, 3),
)  # fmt: skip
_dhcp_ops = st.builds(
    lambda entries: ("dhcp.add", {"entries": [{"mac": m, "ip": ip} for m, ip in entries]}),
    st.lists(st.tuples(_macs, _guest), min_size=1, max_size=3),
)
_remove_ops = st.one_of(
    st.builds(lambda u: ("eip.remove", {"uuid": u}), _uuids),
    st.builds(lambda u: ("pf.remove", {"uuid": u}), _uuids),
    st.builds(lambda m: ("dhcp.remove", {"macs": [m]}), _macs),
)


@given(st.lists(st.one_of(_eip_ops, _pf_ops, _dhcp_ops, _remove_ops), max_size=25))
def test_the_incremental_check_agrees_with_the_whole_state_check(ops):
    """``check_change`` (what a change touches) refuses exactly what ``check_consistent`` (the
    whole resulting state) would, over random sequences of changes."""
    from agents.vrouter.agent import check_change

    state = vr.VrState()
    for op, body in ops:
        cmd = parse_wire(vr.request_of(f"vrouter.{op}"), {"hostUuid": VR, **body})
        after = updated(state, op, cmd)
        try:
            vr.check_consistent(after)
            whole_ok = True
        except ValueError:
            whole_ok = False
        try:
            check_change(state, op, cmd)
            delta_ok = True
        except ValueError:
            delta_ok = False
        assert delta_ok == whole_ok, (op, body, state)
        if whole_ok:
            state = after
