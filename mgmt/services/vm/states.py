"""The VM state machine: one table of which operation may start from which state.

Stable states: Created (made with strategy CreateStopped, never started), Running, Stopped,
Destroyed (recoverable), Unknown (its host is disconnected). Transitional states last while an
operation runs: Starting, Stopping, Rebooting, Migrating, Destroying, Expunging. A VM is never left
in a transitional state: the operation ends in a stable state, or rolls back to the one it left.
"""

from __future__ import annotations

from enum import StrEnum

from bus.errors import RingstackError
from mgmt.services.vm.errors import VmError


class VmState(StrEnum):
    CREATED = "Created"
    STARTING = "Starting"
    RUNNING = "Running"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    REBOOTING = "Rebooting"
    MIGRATING = "Migrating"
    DESTROYING = "Destroying"
    DESTROYED = "Destroyed"
    EXPUNGING = "Expunging"
    UNKNOWN = "Unknown"


S = VmState

# operation -> (states it may start from, transitional state while it runs or None)
OPERATIONS: dict[str, tuple[frozenset[VmState], VmState | None]] = {
    "start": (frozenset({S.CREATED, S.STOPPED}), S.STARTING),
    "stop": (frozenset({S.RUNNING, S.UNKNOWN}), S.STOPPING),
    "reboot": (frozenset({S.RUNNING}), S.REBOOTING),
    "destroy": (frozenset({S.CREATED, S.RUNNING, S.STOPPED, S.UNKNOWN}), S.DESTROYING),
    "recover": (frozenset({S.DESTROYED}), None),
    "expunge": (frozenset({S.DESTROYED}), S.EXPUNGING),
    "migrate": (frozenset({S.RUNNING}), S.MIGRATING),
    "attachVolume": (frozenset({S.CREATED, S.RUNNING, S.STOPPED}), None),
    "detachVolume": (frozenset({S.CREATED, S.RUNNING, S.STOPPED}), None),
    "attachL3": (frozenset({S.CREATED, S.RUNNING, S.STOPPED}), None),
    "detachL3": (frozenset({S.CREATED, S.RUNNING, S.STOPPED}), None),
    "changeOffering": (frozenset({S.CREATED, S.STOPPED, S.RUNNING}), None),
    "console": (frozenset({S.RUNNING}), None),
    "update": (frozenset(VmState), None),
}

# States in which the VM holds its host's CPU and memory.
ON_HOST = frozenset({S.STARTING, S.RUNNING, S.STOPPING, S.REBOOTING, S.MIGRATING, S.UNKNOWN})


def check(operation: str, vm_uuid: str, state: str) -> VmState | None:
    """Raise ``VM.INVALID_STATE`` naming the current state unless ``operation`` may start from it;
    return the transitional state the VM takes meanwhile (None if it takes none)."""
    allowed, transitional = OPERATIONS[operation]
    if state not in allowed:
        raise RingstackError(
            VmError.INVALID_STATE,
            f"cannot {operation} VM {vm_uuid}: it is {state}; {operation} needs "
            + " or ".join(sorted(s.value for s in allowed)),
            details={"uuid": vm_uuid, "state": state, "operation": operation},
        )
    return transitional
