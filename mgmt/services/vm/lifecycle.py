"""Operations on an existing VM, each a small transition with the same shape:

1. one transaction: check the state table, take what the operation needs (host capacity for a
   start), move the VM to its transitional state;
2. the agent command(s);
3. one transaction: the stable end state (and give back what it no longer needs).

When step 2 fails, step 1 is undone in one transaction, so the VM returns to the stable state it
left and holds exactly what it held. A job that a new owner resumes after a crash first asks the
host what the VM's real state is (``settle``), then runs the operation again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from bus.errors import RingstackError
from mgmt.core import capacity
from mgmt.core.access import load_owned
from mgmt.core.agents import AgentClient
from mgmt.core.db import Database
from mgmt.core.service import Account
from mgmt.services.vm import plan as plans
from mgmt.services.vm import states
from mgmt.services.vm.states import VmState
from schema.agent import VmSpec, VmSyncCommand, VmSyncReply
from schema.db.vm import VmInstance


@dataclass
class Snapshot:
    """What the agent step needs, read in step 1 (the agent step runs outside any transaction)."""

    uuid: str
    state: str
    host_uuid: str | None
    last_host_uuid: str | None
    spec: VmSpec | None
    extra: dict[str, Any]


Take = Callable[[Session, VmInstance, dict[str, Any]], None]
Act = Callable[[Snapshot], Awaitable[Any]]
End = Callable[[Session, VmInstance, Any], None]


def hold_host(session: Session, vm: VmInstance, host_uuid: str) -> None:
    capacity.reserve_host(session, host_uuid, vm.cpu_num, vm.memory_size)
    vm.host_uuid = host_uuid
    vm.last_host_uuid = host_uuid


def free_host(session: Session, vm: VmInstance) -> None:
    if vm.host_uuid is not None:
        capacity.release_host(session, vm.host_uuid, vm.cpu_num, vm.memory_size)
        vm.last_host_uuid = vm.host_uuid
        vm.host_uuid = None


class Transitions:
    def __init__(self, db: Database, agents: AgentClient) -> None:
        self.db = db
        self.agents = agents

    async def run(
        self,
        vm_uuid: str,
        operation: str,
        account: Account,
        act: Act,
        end: End,
        take: Take | None = None,
        untake: Take | None = None,
        *,
        needs_spec: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> Any:
        extra = dict(extra or {})

        def begin(session: Session) -> tuple[Snapshot, str]:
            vm = load_owned(session, VmInstance, vm_uuid, account, "VM")
            before = vm.state
            transitional = states.check(operation, vm.uuid, vm.state)
            if take is not None:
                take(session, vm, extra)
            if transitional is not None:
                vm.state = transitional
            spec = plans.vm_spec(session, vm) if needs_spec else None
            snapshot = Snapshot(vm.uuid, before, vm.host_uuid, vm.last_host_uuid, spec, extra)
            session.flush()
            return snapshot, before

        snapshot, before = await self.db.run(begin)

        def undo(session: Session) -> None:
            vm = session.get(VmInstance, vm_uuid)
            if vm is None:
                return
            if untake is not None:
                untake(session, vm, extra)  # give back what step 1 took for this operation
            vm.state = before

        try:
            result = await act(snapshot)
        except BaseException:
            await self.db.run(undo)
            raise

        def finish(session: Session) -> None:
            vm = session.get(VmInstance, vm_uuid)
            assert vm is not None
            end(session, vm, result)

        await self.db.run(finish)
        return result

    async def settle(self, vm_uuid: str, *, strict: bool = False) -> str | None:
        """After a crash mid-operation: set a VM left in a transitional state to what its host says.
        Returns the state it settled in (None: it was not in a transitional state). ``strict``:
        a host that cannot be asked raises (the caller retries later) rather than counting as
        "not running there"."""

        def read(session: Session) -> tuple[str, str | None] | None:
            vm = session.get(VmInstance, vm_uuid)
            return None if vm is None else (vm.state, vm.host_uuid or vm.last_host_uuid)

        found = await self.db.run(read)
        if found is None or found[0] not in _TRANSITIONAL:
            return None
        host = found[1]
        actual: str | None = None
        if host is not None:
            try:
                sync = await self.agents.call(VmSyncCommand(host_uuid=host), VmSyncReply)
                actual = {v.uuid: v.state for v in sync.vms}.get(vm_uuid)
            except RingstackError:
                if strict:
                    raise

        def apply(session: Session) -> str | None:
            vm = session.get(VmInstance, vm_uuid)
            if vm is None or vm.state not in _TRANSITIONAL:
                return None
            if vm.state == VmState.EXPUNGING:
                vm.state = VmState.DESTROYED  # an expunge not done: it may be asked for again
            elif actual == "Running" and host is not None:
                if vm.host_uuid is None:
                    hold_host(session, vm, host)
                vm.state = VmState.RUNNING
            elif vm.state == VmState.DESTROYING and actual is None:
                free_host(session, vm)
                vm.state = VmState.DESTROYED
            elif actual in ("Stopped", None):
                free_host(session, vm)
                vm.state = VmState.STOPPED
            else:
                vm.state = VmState.UNKNOWN
            return vm.state

        return await self.db.run(apply)


_TRANSITIONAL = frozenset(
    {
        VmState.STARTING,
        VmState.STOPPING,
        VmState.REBOOTING,
        VmState.MIGRATING,
        VmState.DESTROYING,
        VmState.EXPUNGING,
    }
)
