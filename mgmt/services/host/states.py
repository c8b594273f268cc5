"""The host state machine (ZStack's HostState), apart from the connection status.

State is what the admin asked for; the API's ``maintain`` is two steps, as in ZStack:
``preMaintain`` (PreMaintenance: VMs are being moved away) then ``maintain`` (Maintenance).
"""

from __future__ import annotations

from bus.errors import RingstackError
from mgmt.services.host.errors import HostError

# current state -> {event -> next state}; a pair missing here is an illegal transition.
TRANSITIONS: dict[str, dict[str, str]] = {
    "Enabled": {"enable": "Enabled", "disable": "Disabled", "preMaintain": "PreMaintenance"},
    "Disabled": {"enable": "Enabled", "disable": "Disabled", "preMaintain": "PreMaintenance"},
    "PreMaintenance": {"enable": "Enabled", "disable": "Disabled", "maintain": "Maintenance"},
    "Maintenance": {"enable": "Enabled", "disable": "Disabled"},
}


def next_state(host_uuid: str, current: str, event: str) -> str:
    nxt = TRANSITIONS.get(current, {}).get(event)
    if nxt is None:
        allowed = ", ".join(sorted(TRANSITIONS.get(current, {}))) or "none"
        raise RingstackError(
            HostError.INVALID_STATE_TRANSITION,
            f"host {host_uuid} is {current}: {event} is not allowed (allowed: {allowed})",
            details={"uuid": host_uuid, "state": current, "event": event},
        )
    return nxt


def api_steps(current: str, state_event: str) -> list[str]:
    """The state-machine events one ``ChangeHostState`` runs, in order."""
    if state_event != "maintain":
        return [state_event]
    # From PreMaintenance (a maintain that stopped half-way) only the second step is left.
    return ["maintain"] if current == "PreMaintenance" else ["preMaintain", "maintain"]
