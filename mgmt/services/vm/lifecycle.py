"""Operations on an existing VM, each a flow chain (``mgmt.core.flow``) of the same shape:

    begin   one transaction: check the state table, take what the operation needs (host capacity
            for a start, the destination's for a migration, IPs for a NIC), move the VM to its
            transitional state; undone by giving that back and restoring the state it left
    ...     the operation's agent steps, each with its cleanup on the host
    end     one transaction: the stable end state (and give back what it no longer needs)

Each operation has a typed context, a ``VmOp`` subclass (``StartVm``, ``AttachVolume``, ...): what
``begin`` reads for the agent steps, which run outside any transaction, and what they learn for
``end``. A job that a new owner resumes after a crash first asks the host what the VM's real state
is (``settle``), then runs the operation again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.orm import Session

from bus.errors import RingstackError
from mgmt.core import capacity
from mgmt.core.access import load_owned
from mgmt.core.agents import AgentClient
from mgmt.core.db import Database
from mgmt.core.flow import Flow, FlowChain, Garbage
from mgmt.core.service import Account
from mgmt.services.vm import states
from mgmt.services.vm.states import VmState
from schema.agent import VmSyncCommand, VmSyncReply
from schema.db.vm import VmInstance


@dataclass
class VmOp:
    """What every operation on an existing VM knows; ``begin`` fills the VM's part."""

    vm_uuid: str
    account: Account
    before: str = ""  # the stable state it left, restored when the operation rolls back
    host_uuid: str | None = None
    last_host_uuid: str | None = None

    @property
    def on_host(self) -> str:
        """The host it runs on (the agent steps of an operation that needs one)."""
        assert self.host_uuid is not None, f"VM {self.vm_uuid} has no host"
        return self.host_uuid


Op = TypeVar("Op", bound=VmOp)
InTransaction = Callable[[Session, VmInstance, Op], None]


def hold_host(session: Session, vm: VmInstance, host_uuid: str) -> None:
    capacity.reserve_host(session, host_uuid, vm.cpu_num, vm.memory_size)
    vm.host_uuid = host_uuid
    vm.last_host_uuid = host_uuid


def free_host(session: Session, vm: VmInstance) -> None:
    if vm.host_uuid is not None:
        capacity.release_host(session, vm.host_uuid, vm.cpu_num, vm.memory_size)
        vm.last_host_uuid = vm.host_uuid
        vm.host_uuid = None


class Operations:
    def __init__(self, db: Database, agents: AgentClient, garbage: Garbage) -> None:
        self.db = db
        self.agents = agents
        self.garbage = garbage

    def chain(
        self,
        operation: str,
        steps: Sequence[Flow[Op]],
        end: InTransaction[Op],
        take: InTransaction[Op] | None = None,
        untake: InTransaction[Op] | None = None,
    ) -> FlowChain[Op]:
        """The chain begin -> ``steps`` -> end of ``operation`` (a name of the state table)."""

        def begin(session: Session, op: Op) -> None:
            vm = load_owned(session, VmInstance, op.vm_uuid, op.account, "VM")
            before = vm.state
            transitional = states.check(operation, vm.uuid, vm.state)
            if take is not None:
                take(session, vm, op)
            if transitional is not None:
                vm.state = transitional
            session.flush()
            op.before, op.host_uuid, op.last_host_uuid = before, vm.host_uuid, vm.last_host_uuid

        def undo(session: Session, op: Op) -> None:
            vm = session.get(VmInstance, op.vm_uuid)
            if vm is None:
                return
            if untake is not None:
                untake(session, vm, op)  # give back what begin took for this operation
            vm.state = op.before

        def finish(session: Session, op: Op) -> None:
            vm = session.get(VmInstance, op.vm_uuid)
            assert vm is not None
            end(session, vm, op)

        async def run_begin(op: Op) -> None:
            await self.db.run(begin, op)

        async def run_undo(op: Op) -> None:
            await self.db.run(undo, op)

        async def run_end(op: Op) -> None:
            await self.db.run(finish, op)

        flows = [Flow("begin", run_begin, rollback=run_undo), *steps, Flow("end", run_end)]
        return FlowChain(f"vm-{operation}", flows, garbage=self.garbage)

    async def run(
        self,
        op: Op,
        operation: str,
        steps: Sequence[Flow[Op]],
        end: InTransaction[Op],
        take: InTransaction[Op] | None = None,
        untake: InTransaction[Op] | None = None,
    ) -> Op:
        return await self.chain(operation, steps, end, take, untake).run(op)

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
