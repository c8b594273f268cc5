"""The VR's iptables rules: rendered from the desired state, diffed against the kernel's, applied as
one ``iptables-restore --noflush`` text per table.

Ownership is by chain name: every chain ringstack owns is named ``rs-*`` and is entered from a
built-in chain by one jump rule commented ``ringstack``. Nothing else in any table is read for
anything but those jumps, so rules and chains ringstack does not own are never touched.

Rules are rendered exactly as ``iptables-save`` prints them (both the nft and the legacy backend
print the same text), so "desired == current" is a string comparison and applying a diff twice is
a no-op (tests check that). The big chains (one rule per EIP or port forwarding) are sets: their
order does not matter, because their rules match disjoint destinations (one service per VIP, no
overlapping port ranges, see ``schema.vrouter.check_consistent``), so a change there is a few
``-D``/``-A`` lines. The small fixed chains are ordered and are rewritten whole when they differ.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from schema.vrouter import Eip, PortForwarding, Snat, VrState

OWN_PREFIX = "rs-"
JUMP_COMMENT = "ringstack"

# table -> built-in chain -> our chain entered from its top
JUMPS: dict[str, dict[str, str]] = {
    "nat": {"PREROUTING": "rs-PREROUTING", "POSTROUTING": "rs-POSTROUTING"},
    "filter": {"FORWARD": "rs-FORWARD"},
}
# chains whose rule order matters (rewritten whole on any difference)
ORDERED = {"rs-PREROUTING", "rs-POSTROUTING", "rs-FORWARD"}
TABLES = ("nat", "filter")

Chains = dict[str, list[str]]  # chain -> rule specs (what follows "-A <chain> ")


@dataclass(frozen=True)
class Interfaces:
    """Interface names of the VR's configured NICs (found by MAC)."""

    public: str | None = None
    management: str | None = None
    guests: tuple[str, ...] = ()


class NotConfigured(Exception):
    """A service needs a NIC that is not configured yet."""


def _comment(text: str) -> str:
    # Never quoted: our comments have no spaces, and iptables-save quotes some (``rs-eip-…``) and
    # not others (``ringstack``); ``parse_save`` drops its quotes so both sides compare equal.
    return f"-m comment --comment {text}"


def eip_dnat(eip: Eip) -> str:
    return f"-d {eip.vip_ip}/32 {_comment('rs-eip-' + eip.uuid)} -j DNAT --to-destination {eip.guest_ip}"


def eip_snat(eip: Eip, public: str) -> str:
    return (
        f"-s {eip.guest_ip}/32 -o {public} {_comment('rs-eip-' + eip.uuid)} -j SNAT --to-source {eip.vip_ip}"
    )


def _ports(start: int, end: int, sep: str) -> str:
    return str(start) if start == end else f"{start}{sep}{end}"


def pf_dnat(pf: PortForwarding) -> str:
    proto = pf.protocol.lower()
    source = "" if pf.allowed_cidr.prefixlen == 0 else f"-s {pf.allowed_cidr} "
    if pf.private_port_start == pf.vip_port_start:
        target = str(pf.guest_ip)  # the port stays as it came
    elif pf.vip_port_start == pf.vip_port_end:
        target = f"{pf.guest_ip}:{pf.private_port_start}"
    else:  # a shifted range, port n -> n - vipStart + privateStart (kernel >= 5.x "base" syntax)
        target = f"{pf.guest_ip}:{pf.private_port_start}-{pf.private_port_end}/{pf.vip_port_start}"
    return (
        f"{source}-d {pf.vip_ip}/32 -p {proto} -m {proto} --dport {_ports(pf.vip_port_start, pf.vip_port_end, ':')} "
        f"{_comment('rs-pf-' + pf.uuid)} -j DNAT --to-destination {target}"
    )


def snat(rule: Snat, public: str) -> str:
    return f"-s {rule.guest_cidr} -o {public} {_comment('rs-snat')} -j SNAT --to-source {rule.public_ip}"


Memo = dict[str, tuple[object, tuple[str, ...]]]


class Renderer:
    """Renders states, remembering each item's rules: a VR with 10,000s of entries re-renders its
    whole state on every change, and formatting addresses is most of that cost. The memo keeps
    only the items of the last state rendered."""

    def __init__(self) -> None:
        self._nics: Interfaces | None = None
        # (the list rendered, its DNAT rules, its SNAT rules, uuid -> (item, its rules))
        self._eips: tuple[list[Eip], list[str], list[str], Memo] | None = None
        self._pfs: tuple[list[PortForwarding], list[str], Memo] | None = None

    def render(self, state: VrState, nics: Interfaces) -> dict[str, Chains]:
        """The complete desired content of every ringstack chain, per table."""
        if (state.eips or state.snats) and nics.public is None:
            raise NotConfigured("EIPs and SNAT need the public NIC configured first")
        if nics != self._nics:
            self._eips = self._pfs = None
            self._nics = nics
        public = nics.public or ""
        # An incremental change replaces one list of the state and keeps the others (the same
        # objects): their chains are reused as they are.
        if self._eips is None or self._eips[0] is not state.eips:
            memo = self._eips[3] if self._eips is not None else {}
            fresh: dict[str, tuple[object, tuple[str, ...]]] = {}
            eip_dnats, eip_snats = [], []
            for e in state.eips:
                hit = memo.get(e.uuid)
                # The same object (an unchanged entry) or an equal one (a sync repeating it) keeps
                # its rules; formatting addresses is the expensive part.
                pair = (
                    hit[1]
                    if hit is not None and (hit[0] is e or hit[0] == e)
                    else (eip_dnat(e), eip_snat(e, public))
                )
                fresh[e.uuid] = (e, pair)
                eip_dnats.append(pair[0])
                eip_snats.append(pair[1])
            self._eips = (state.eips, eip_dnats, eip_snats, fresh)
        if self._pfs is None or self._pfs[0] is not state.port_forwardings:
            memo = self._pfs[2] if self._pfs is not None else {}
            fresh = {}
            pf_dnats = []
            for p in state.port_forwardings:
                hit = memo.get(p.uuid)
                one = hit[1] if hit is not None and (hit[0] is p or hit[0] == p) else (pf_dnat(p),)
                fresh[p.uuid] = (p, one)
                pf_dnats.append(one[0])
            self._pfs = (state.port_forwardings, pf_dnats, fresh)
        eip_dnats, eip_snats, pf_dnats = self._eips[1], self._eips[2], self._pfs[1]
        forward = [
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            # Packets our DNAT rules let in (EIP, port forwarding within its allowed CIDR).
            "-m conntrack --ctstate DNAT -j ACCEPT",
        ]
        for guest in nics.guests:
            if nics.management is not None:
                forward.append(f"-i {guest} -o {nics.management} -j DROP")  # guests never reach management
            forward.append(f"-i {guest} -j ACCEPT")
        # Anything else towards a guest network (from outside, not asked for) is dropped.
        forward.extend(f"-o {guest} -j DROP" for guest in nics.guests)
        return {
            "nat": {
                "rs-PREROUTING": ["-j rs-eip-dnat", "-j rs-pf-dnat"],
                "rs-POSTROUTING": ["-j rs-eip-snat", "-j rs-snat"],
                "rs-eip-dnat": eip_dnats,  # shared with the cache: callers only read them
                "rs-pf-dnat": pf_dnats,
                "rs-eip-snat": eip_snats,
                "rs-snat": [snat(s, public) for s in state.snats],
            },
            "filter": {"rs-FORWARD": forward},
        }


def render(state: VrState, nics: Interfaces) -> dict[str, Chains]:
    return Renderer().render(state, nics)


def jump_spec(chain: str) -> str:
    return f"{_comment(JUMP_COMMENT)} -j {chain}"


@dataclass
class TableDump:
    """What ``iptables-save -t <table>`` says about one table: every chain's rules."""

    chains: dict[str, list[str]] = field(default_factory=dict)

    def own(self) -> Chains:
        return {c: rules for c, rules in self.chains.items() if c.startswith(OWN_PREFIX)}


def parse_save(text: str) -> TableDump:
    dump = TableDump()
    for line in text.splitlines():
        if line.startswith(":"):
            dump.chains.setdefault(line[1:].split(" ", 1)[0], [])
        elif line.startswith("-A "):
            chain, _, spec = line[3:].partition(" ")
            dump.chains.setdefault(chain, []).append(spec.replace('"', ""))
    return dump


def diff_table(table: str, desired: Chains, current: TableDump) -> list[str]:
    """The restore lines (without ``*table``/``COMMIT``) turning ``current`` into ``desired``.
    Empty when they already agree."""
    declare: list[str] = []
    edits: list[str] = []
    drop: list[str] = []
    own = current.own()
    for chain, rules in desired.items():
        have = own.get(chain)
        if have == rules:
            continue
        if have is None or chain in ORDERED:
            declare.append(f":{chain} - [0:0]")  # creates, or (with --noflush) flushes, the chain
            edits.extend(f"-A {chain} {r}" for r in rules)
            continue
        have_set, want_set = set(have), set(rules)
        if len(have_set) == len(have) and len(want_set) == len(rules):  # no duplicates: sets will do
            extra_rules = [r for r in have if r not in want_set]
            missing_rules = [r for r in rules if r not in have_set]
        else:
            extra_c, missing_c = Counter(have) - Counter(rules), Counter(rules) - Counter(have)
            extra_rules = [spec for spec, n in extra_c.items() for _ in range(n)]
            missing_rules = [spec for spec, n in missing_c.items() for _ in range(n)]
        if len(extra_rules) > len(rules):  # mostly gone: rewriting is shorter than deleting
            declare.append(f":{chain} - [0:0]")
            edits.extend(f"-A {chain} {r}" for r in rules)
            continue
        edits.extend(f"-D {chain} {spec}" for spec in extra_rules)
        edits.extend(f"-A {chain} {spec}" for spec in missing_rules)
    for chain in own:
        if chain not in desired:  # a chain of ours no longer wanted: flush, then delete below
            declare.append(f":{chain} - [0:0]")
            drop.append(f"-X {chain}")
    for builtin, chain in JUMPS.get(table, {}).items():
        spec = jump_spec(chain)
        count = current.chains.get(builtin, []).count(spec)
        if count == 0:
            edits.append(f"-I {builtin} {spec}")
        edits.extend([f"-D {builtin} {spec}"] * max(0, count - 1))
    # A stale jump to a chain we delete would block the delete; ours are all in JUMPS.
    return declare + edits + drop


def restore_text(table: str, lines: list[str]) -> str:
    return "\n".join([f"*{table}", *lines, "COMMIT", ""])


def apply_to_dump(dump: TableDump, lines: list[str]) -> TableDump:
    """What a table looks like after ``lines`` were restored onto it (the agent's cache of the
    kernel, so an incremental change needs no ``iptables-save``)."""
    chains = {c: list(r) for c, r in dump.chains.items()}
    for line in lines:
        if line.startswith(":"):
            chains[line[1:].split(" ", 1)[0]] = []
            continue
        op, _, rest = line.partition(" ")
        chain, _, spec = rest.partition(" ")
        if op == "-A":
            chains.setdefault(chain, []).append(spec)
        elif op == "-I":
            chains.setdefault(chain, []).insert(0, spec)
        elif op == "-D":
            chains[chain].remove(spec)
        elif op == "-X":
            chains.pop(chain, None)
    return TableDump(chains)


def count_rules(desired: dict[str, Chains], table: str) -> int:
    return sum(len(rules) for rules in desired.get(table, {}).values())
