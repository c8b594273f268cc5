"""Security groups on a KVM host: iptables chains per NIC and per group, members in ipsets,
MAC/ARP anti-spoofing in ebtables, all computed from the host's desired state.

Layout (filter table; every chain ringstack owns starts with ``rs-``, nothing else is touched):

- ``FORWARD`` gets one rule at its top, ``-m physdev --physdev-is-bridged -j rs-sg`` (the only
  rule ringstack puts in a chain it does not own).
- ``rs-sg`` dispatches: frames leaving a NIC's tap (``--physdev-in``) to ``rs-o-<nic>``, then
  frames to a NIC (``--physdev-out``) to ``rs-i-<nic>``. Egress chains RETURN on allow so that the
  destination NIC's ingress chain still judges traffic between two guests of one host.
- ``rs-o-<nic>``: DHCP requests pass, the NIC's own source addresses go on to ``rs-e-<nic>``
  (egress policy; only when a group of the NIC has egress rules, else they return at once),
  anything else is dropped (IP anti-spoofing).
- ``rs-i-<nic>`` / ``rs-e-<nic>``: established flows pass, then each group chain
  ``rs-g-<group>-i|e`` is called; a matching group rule marks the packet (``rs-ok``), and the NIC
  chain accepts (ingress) or returns (egress) marked packets, dropping the rest.
- Remote-group peers match ipset ``rs-m-<group>`` (``hash:ip``): a member joining changes the set
  and no rule.

ebtables (filter): ``INPUT`` and ``FORWARD`` jump to ``rs-sg``, which sends each NIC's frames to
``rs-s-<nic>``: another source MAC, an ARP with another sender MAC or IP, or IPv6 (ringstack
gives guests no IPv6) is dropped.

Applying: read the tables (``iptables-save``, ``ebtables-save``, ``ipset save``), compare chain by
chain, and send only the chains that differ in one ``iptables-restore --noflush`` (one atomic
nf_tables transaction) and one ``ebtables-restore --noflush``; sets are created and their members
changed before the rules that name them, and stale sets destroyed after. The same state applied
twice changes nothing, so a restarted agent re-applying it cuts no established flow.

With ``netns`` set every command runs inside that namespace (a namespace host in tests).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bus.errors import RingstackError
from schema.agent import (
    AgentErrors,
    SecurityGroupReply,
    SecurityGroupRuleSpec,
    SecurityGroupSpec,
    VmNicSecuritySpec,
)

PREFIX = "rs-"
DISPATCH = "rs-sg"
OK = "rs-ok"  # marks a packet a group rule allowed
ALLOW = "rs-allow"  # clears the mark and accepts (ingress)
PASS = "rs-pass"  # clears the mark and returns to the dispatcher (egress)
# The packet-mark bit meaning "a group rule allowed this"; set and cleared within our chains.
MARK = "0x10000000/0x10000000"
CLEAR = "0x0/0x10000000"
HOOK = f"-m physdev --physdev-is-bridged -m comment --comment ringstack-sg -j {DISPATCH}"
EB_HOOK = f"-j {DISPATCH}"
EB_HOOK_CHAINS = ("INPUT", "FORWARD")
KEY_LEN = 16  # hex digits of a uuid in chain and set names (iptables allows 28 characters)

# Runs an argv with optional stdin and returns the finished process; a fake one in unit tests.
Runner = Callable[[list[str], str | None], "subprocess.CompletedProcess[str]"]


def run_command(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, check=False)


def vnic_name(nic_uuid: str) -> str:
    """The host-side device of a VM NIC (the tap libvirt makes, named in the domain XML)."""
    return f"vn{nic_uuid[:12]}"


def set_name(group_uuid: str) -> str:
    return f"rs-m-{group_uuid[:KEY_LEN]}"


def _group_chain(group_uuid: str, direction: str) -> str:
    return f"rs-g-{group_uuid[:KEY_LEN]}-{direction}"


# ---------------------------------------------------------------------- desired state (pure)


@dataclass
class Desired:
    chains: dict[str, list[str]] = field(default_factory=dict)  # iptables filter: chain -> rules
    eb_chains: dict[str, list[str]] = field(default_factory=dict)  # ebtables filter
    sets: dict[str, set[str]] = field(default_factory=dict)  # ipset name -> member IPs


def rule_match(rule: SecurityGroupRuleSpec) -> str:
    """The match part of one rule, written as iptables-save prints it (so state compares as text)."""
    peer = "-s" if rule.type == "Ingress" else "-d"
    direction = "src" if rule.type == "Ingress" else "dst"
    parts: list[str] = []
    if rule.allowed_cidr is not None and rule.allowed_cidr != "0.0.0.0/0":
        parts += [peer, rule.allowed_cidr]
    if rule.protocol != "ALL":
        parts += ["-p", rule.protocol.lower()]
    if rule.remote_security_group_uuid is not None:
        parts += ["-m", "set", "--match-set", set_name(rule.remote_security_group_uuid), direction]
    if rule.protocol in ("TCP", "UDP"):
        assert rule.start_port is not None and rule.end_port is not None
        ports = (
            str(rule.start_port) if rule.start_port == rule.end_port else f"{rule.start_port}:{rule.end_port}"
        )
        parts += ["-m", rule.protocol.lower(), "--dport", ports]
    return " ".join(parts)


def render(
    nics: Iterable[VmNicSecuritySpec],
    groups: Iterable[SecurityGroupSpec],
    members: dict[str, list[str]],
) -> Desired:
    nics = sorted(nics, key=lambda n: n.nic_uuid)
    by_uuid = {g.uuid: g for g in groups}
    out = Desired()
    if not nics:
        return out  # nothing in a group here: no chain, no hook
    chains = out.chains
    chains[OK] = [f"-A {OK} -j MARK --set-xmark {MARK}"]
    chains[ALLOW] = [f"-A {ALLOW} -j MARK --set-xmark {CLEAR}", f"-A {ALLOW} -j ACCEPT"]
    chains[PASS] = [f"-A {PASS} -j MARK --set-xmark {CLEAR}"]
    used = {g for nic in nics for g in nic.security_group_uuids}
    remotes: set[str] = set()
    for uuid in sorted(used):
        group = by_uuid[uuid]
        for direction, kind in (("i", "Ingress"), ("e", "Egress")):
            name = _group_chain(uuid, direction)
            chains[name] = []
            for rule in group.rules:
                if rule.type != kind:
                    continue
                match = rule_match(rule)
                chains[name].append(f"-A {name} {match} -g {OK}" if match else f"-A {name} -g {OK}")
                if rule.remote_security_group_uuid is not None:
                    remotes.add(rule.remote_security_group_uuid)
    for remote in sorted(remotes | set(members)):
        out.sets[set_name(remote)] = set(members.get(remote, []))

    dispatch_out, dispatch_in = [], []
    eb_dispatch = []
    for nic in nics:
        key = nic.nic_uuid[:KEY_LEN]
        dev = vnic_name(nic.nic_uuid)
        o, e, i = f"rs-o-{key}", f"rs-e-{key}", f"rs-i-{key}"
        dispatch_out.append(f"-A {DISPATCH} -m physdev --physdev-in {dev} --physdev-is-bridged -j {o}")
        dispatch_in.append(f"-A {DISPATCH} -m physdev --physdev-out {dev} --physdev-is-bridged -j {i}")
        egress_limited = any(r.type == "Egress" for g in nic.security_group_uuids for r in by_uuid[g].rules)
        # Its own addresses pass on: to the egress policy chain, or straight back when egress is
        # open (no chain then: a third fewer chains on a host of open-egress NICs).
        then = f"-g {e}" if egress_limited else "-j RETURN"
        chains[o] = [f"-A {o} -p udp -m udp --sport 68 --dport 67 -j RETURN"]  # DHCP before an address
        chains[o] += [f"-A {o} -s {ip}/32 {then}" for ip in nic.ips]
        chains[o].append(f"-A {o} -j DROP")
        if egress_limited:
            chains[e] = [f"-A {e} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"]
            chains[e].append(f"-A {e} -j MARK --set-xmark {CLEAR}")
            chains[e] += [f"-A {e} -j {_group_chain(g, 'e')}" for g in nic.security_group_uuids]
            chains[e] += [f"-A {e} -m mark --mark {MARK} -g {PASS}", f"-A {e} -j DROP"]
        chains[i] = [
            f"-A {i} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            f"-A {i} -p udp -m udp --sport 67 --dport 68 -j ACCEPT",  # DHCP answers
            f"-A {i} -j MARK --set-xmark {CLEAR}",
        ]
        chains[i] += [f"-A {i} -j {_group_chain(g, 'i')}" for g in nic.security_group_uuids]
        chains[i] += [f"-A {i} -m mark --mark {MARK} -g {ALLOW}", f"-A {i} -j DROP"]

        s = f"rs-s-{key}"
        eb_dispatch.append(f"-A {DISPATCH} -i {dev} -j {s}")
        out.eb_chains[s] = [
            f"-A {s} -s ! {nic.mac} -j DROP",
            f"-A {s} -p ARP --arp-mac-src ! {nic.mac} -j DROP",
            *[f"-A {s} -p ARP --arp-ip-src {ip} -j RETURN" for ip in [*nic.ips, "0.0.0.0"]],
            f"-A {s} -p ARP -j DROP",
            f"-A {s} -p IPv6 -j DROP",
        ]
    chains[DISPATCH] = dispatch_out + dispatch_in
    out.eb_chains[DISPATCH] = eb_dispatch
    return out


# ---------------------------------------------------------------------- current state (parsing)


@dataclass
class Tables:
    chains: dict[str, list[str]]  # our chains and their rules
    hooks: dict[str, int]  # hook chain -> how many of our hook rules it has
    hook_first: dict[str, bool]  # hook chain -> our hook is its first rule


def parse_save(text: str, hook: str, hook_chains: Iterable[str]) -> Tables:
    """Our chains out of iptables-save/ebtables-save text for the filter table."""
    chains: dict[str, list[str]] = {}
    hooks = dict.fromkeys(hook_chains, 0)
    first: dict[str, bool] = dict.fromkeys(hook_chains, False)
    seen: set[str] = set()
    in_filter = False
    for line in text.splitlines():
        if line.startswith("*"):
            in_filter = line == "*filter"
            continue
        if not in_filter:
            continue
        if line.startswith(":"):
            name = line[1:].split()[0]
            if name.startswith(PREFIX):
                chains.setdefault(name, [])
        elif line.startswith("-A "):
            chain = line.split()[1]
            if chain.startswith(PREFIX):
                chains.setdefault(chain, []).append(line)
            elif chain in hooks and line == f"-A {chain} {hook}":
                hooks[chain] += 1
                if chain not in seen:
                    first[chain] = True
            if chain in hooks:
                seen.add(chain)
    return Tables(chains, hooks, first)


def parse_sets(text: str) -> dict[str, set[str]]:
    sets: dict[str, set[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[1].startswith(PREFIX):
            if words[0] == "create":
                sets.setdefault(words[1], set())
            elif words[0] == "add" and len(words) >= 3:
                sets.setdefault(words[1], set()).add(words[2])
    return sets


def restore_text(
    current: Tables, desired: dict[str, list[str]], hook: str, hook_chains: Iterable[str], policy: str
) -> tuple[str | None, int]:
    """The --noflush restore input turning ``current`` into ``desired`` (None if nothing differs),
    and how many rules it adds or removes. ``policy`` is how a user chain is declared: ``-`` for
    iptables, ``RETURN`` for ebtables."""
    changed = [c for c in desired if current.chains.get(c) != desired[c]]
    stale = [c for c in current.chains if c not in desired]
    declare, body, tail = [], [], []
    rules = 0
    for chain in changed + stale:
        declare.append(f":{chain} {policy} [0:0]" if policy == "-" else f":{chain} {policy}")
        old, new = current.chains.get(chain, []), desired.get(chain, [])
        rules += len(set(old) ^ set(new)) if old else len(new)
    for chain in changed:
        body += desired[chain]
    for chain in hook_chains:
        count = current.hooks[chain]
        want = 1 if desired else 0
        if count == want and (want == 0 or current.hook_first[chain]):
            continue
        body += [f"-D {chain} {hook}"] * count  # our hook rules only; others' rules stay
        if want:
            body.append(f"-I {chain} 1 {hook}")
        rules += count + want
    tail = [f"-X {chain}" for chain in stale]
    if not declare and not body and not tail:
        return None, 0
    return "\n".join(["*filter", *declare, *body, *tail, "COMMIT", ""]), rules


# ---------------------------------------------------------------------- applying


class SecurityGroups:
    def __init__(self, netns: str | None = None, run: Runner = run_command) -> None:
        self.netns = netns
        self._run = run

    def _exec(self, *argv: str, stdin: str | None = None) -> str:
        full = (["ip", "netns", "exec", self.netns] if self.netns else []) + list(argv)
        try:
            done = self._run(full, stdin)
        except FileNotFoundError:
            raise RingstackError(
                AgentErrors.HYPERVISOR_ERROR, f"{argv[0]} is not installed on this host"
            ) from None
        if done.returncode != 0:
            detail = done.stderr.strip()
            if stdin is not None:  # say which line of the input was refused
                detail += f"\ninput was:\n{stdin}"
            raise RingstackError(
                AgentErrors.HYPERVISOR_ERROR,
                f"{' '.join(argv)} failed: {detail}",
                details={"command": " ".join(argv)},
            )
        return done.stdout

    def _bridge_netfilter(self) -> None:
        """Bridged IPv4 must pass iptables, or physdev rules never see a guest's packets."""
        if self._exec("sysctl", "-n", "net.bridge.bridge-nf-call-iptables").strip() != "1":
            self._exec("sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1")

    def apply(
        self,
        nics: list[VmNicSecuritySpec],
        groups: list[SecurityGroupSpec],
        members: dict[str, list[str]],
    ) -> SecurityGroupReply:
        desired = render(nics, groups, members)
        if desired.chains:
            self._bridge_netfilter()
        current_sets = parse_sets(self._exec("ipset", "save"))
        member_changes = self._sync_sets(current_sets, desired.sets, create=True)
        restores, rules = 0, 0
        ipt = parse_save(self._exec("iptables-save", "-t", "filter"), HOOK, ["FORWARD"])
        text, n = restore_text(ipt, desired.chains, HOOK, ["FORWARD"], "-")
        if text is not None:
            self._exec("iptables-restore", "-w", "--noflush", stdin=text)
            restores, rules = restores + 1, rules + n
        eb = parse_save(self._exec("ebtables-save"), EB_HOOK, EB_HOOK_CHAINS)
        text, n = restore_text(eb, desired.eb_chains, EB_HOOK, EB_HOOK_CHAINS, "RETURN")
        if text is not None:
            self._exec("ebtables-restore", "--noflush", stdin=text)
            restores, rules = restores + 1, rules + n
        stale = sorted(set(current_sets) - set(desired.sets))
        if stale:  # after the rules that named them are gone
            self._exec("ipset", "restore", stdin="".join(f"destroy {s}\n" for s in stale))
        member_changes += sum(len(current_sets[s]) for s in stale)
        return SecurityGroupReply(
            changed=bool(restores or member_changes or stale),
            rules_changed=rules,
            set_members_changed=member_changes,
            restores=restores,
        )

    def update_members(self, members: dict[str, list[str]]) -> SecurityGroupReply:
        current = parse_sets(self._exec("ipset", "save"))
        wanted = {set_name(g): set(ips) for g, ips in members.items() if set_name(g) in current}
        changes = self._sync_sets(current, wanted, create=False)
        return SecurityGroupReply(changed=bool(changes), set_members_changed=changes)

    def _sync_sets(self, current: dict[str, set[str]], wanted: dict[str, set[str]], *, create: bool) -> int:
        lines: list[str] = []
        changes = 0
        for name, ips in sorted(wanted.items()):
            have = current.get(name)
            if have is None:
                if not create:
                    continue
                lines.append(f"create {name} hash:ip family inet")
                have = set()
            added, removed = sorted(ips - have), sorted(have - ips)
            lines += [f"add {name} {ip}" for ip in added] + [f"del {name} {ip}" for ip in removed]
            changes += len(added) + len(removed)
        if lines:
            self._exec("ipset", "restore", "-exist", stdin="\n".join(lines) + "\n")
        return changes
