"""Shell completion (bash, zsh, fish) and the interactive shell's: API names, their fields
(``name=``), enumerated values, and resource uuids listed live by the matching Query API (as
CloudMonkey completes argument values from its ``list*`` APIs): ``zoneUuid=<TAB>`` runs
``QueryZone fields=uuid,name``; ``uuid=`` of ``UpdateL3Network`` runs ``QueryL3Network``.

Completion goes through click's protocol (``_RINGSTACK_COMPLETE``); the bash script is click's
with two changes: bash splits words at ``=`` (COMP_WORDBREAKS), so the line is read from
COMP_LINE/COMP_POINT and answers are cut to what follows the last ``=``; and no space is added
after ``field=``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import click
from click.shell_completion import BashComplete, CompletionItem, add_completion_class, split_arg_string

UUID_LIMIT = 200


def _camel_tails(name: str) -> list[str]:
    """``DefaultL3Network`` -> [DefaultL3Network, L3Network, Network]: candidates for a kind."""
    starts = [m.start() for m in re.finditer(r"[A-Z]", name)] or [0]
    return [name[i:] for i in starts]


def resource_of(field: str, api_name: str) -> str | None:
    """The Query API listing the resources a uuid field names."""
    from mgmt.cli.client import catalog

    cat = catalog()
    if field == "uuid":
        found = [
            q[len("Query") :] for q in cat.names() if q.startswith("Query") and q[len("Query") :] in api_name
        ]
        return f"Query{max(found, key=len)}" if found else None
    stem = re.sub(r"Uuids?$", "", field)
    if not stem or stem == field:
        return None
    for tail in _camel_tails(stem[0].upper() + stem[1:]):
        query = cat.query_for(tail)
        if query:
            return query
    return None


def uuids(ctx: click.Context, query: str, prefix: str) -> list[tuple[str, str]]:
    """(uuid, name) of the resources whose uuid starts with ``prefix``; none on any error."""
    from bus.errors import RingstackError
    from mgmt.cli.client import merged, target_of

    try:
        target = target_of(merged(ctx, dict(ctx.params)))
        body: dict[str, Any] = {"fields": ["uuid", "name"], "limit": UUID_LIMIT}
        if prefix:
            body["conditions"] = [{"name": "uuid", "op": "~=", "value": f"{prefix}%"}]
        with target.client("ringstack-complete") as client:
            reply = client.api(query, body, session=target.session, timeout=min(target.timeout, 3.0))
    except (RingstackError, click.ClickException, ValueError):
        return []
    return [(str(r.get("uuid")), str(r.get("name") or "")) for r in reply.get("inventories", [])]


def complete_words(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    spec = getattr(ctx.command, "spec", None)
    if spec is None:
        return []
    if "=" not in incomplete:
        used = {w.split("=", 1)[0] for w in ctx.params.get("words") or ()}
        names = list(spec.fields) if not spec.query else [*sorted(spec.query_keys), "uuid", "name"]
        return [
            CompletionItem(f"{n}=", help=spec.fields.get(n, {}).get("meaning", ""))
            for n in names
            if n.startswith(incomplete) and n not in used and n != "conditions"
        ]
    key, _, value = incomplete.partition("=")
    key = key.rstrip("!?~<>")
    field = spec.fields.get(key, {})
    _, _, last = value.rpartition(",") if field.get("list") else ("", "", value)
    lead = f"{incomplete[: len(incomplete) - len(last)]}"
    kind = field.get("type", "")
    if " | " in kind and "uuid" not in kind:
        return [CompletionItem(lead + v) for v in kind.split(" | ") if v.startswith(last)]
    query = resource_of(key, spec.name) if key == "uuid" or key.endswith(("Uuid", "Uuids")) else None
    if query is None:
        return []
    return [CompletionItem(lead + u, help=n) for u, n in uuids(ctx, query, last)]


class RingstackBash(BashComplete):
    name = "bash"
    source_template = r"""
%(complete_func)s() {
    local IFS=$'\n'
    local response
    response=$(env COMP_LINE="$COMP_LINE" COMP_POINT="$COMP_POINT" COMP_WORDBREAKS="$COMP_WORDBREAKS" \
        %(complete_var)s=bash_complete $1)
    COMPREPLY=()
    for completion in $response; do
        IFS=',' read type value <<< "$completion"
        if [[ $type == 'nospace' ]]; then
            compopt -o nospace
            COMPREPLY+=("$value")
        elif [[ $type == 'plain' ]]; then
            COMPREPLY+=("$value")
        fi
    done
    return 0
}
complete -o nosort -F %(complete_func)s %(prog_name)s
"""

    def get_completion_args(self) -> tuple[list[str], str]:
        line = os.environ.get("COMP_LINE", "")
        line = line[: int(os.environ.get("COMP_POINT", len(line)))]
        words = split_arg_string(line)
        if not line or line[-1].isspace():
            args, self._incomplete = words[1:], ""
        else:
            args, self._incomplete = words[1:-1], words[-1] if words else ""
        return args, self._incomplete

    def format_completion(self, item: CompletionItem) -> str:
        value = str(item.value)
        # bash replaces only the part of the word after its last break character ('=' or ':').
        cut = max(self._incomplete.rfind(c) for c in os.environ.get("COMP_WORDBREAKS", "=:")) + 1
        if cut > 0 and value.startswith(self._incomplete[:cut]):
            value = value[cut:]
        return f"{'nospace' if value.endswith('=') else item.type},{value}"


def install_bash() -> None:
    add_completion_class(RingstackBash)


def script(cli: click.Command, shell: str) -> str:
    from click.shell_completion import get_completion_class

    install_bash()
    cls = get_completion_class(shell)
    assert cls is not None
    return cls(cli, {}, "ringstack", "_RINGSTACK_COMPLETE").source()
