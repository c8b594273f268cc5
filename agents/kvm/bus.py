"""The agent's bus: an ``AsyncBus`` that works with the least-privilege broker user of its host.

An agent's broker user may configure and read only ``<ns>.agent.<host>`` (and its reply queue),
write only to the replies, events (its own routing keys) and dead-letter exchanges (see
``mgmt.core.brokeradmin``). ``AsyncBus`` always declares a reply queue for its own calls, named
after a random process uuid and bound to the replies exchange; an agent makes no calls, and binding
would need read access to the replies exchange, with which an agent could bind its queue under
another process's key and read replies meant for others. So the agent's reply queue is named after
its host and bound to nothing: it never receives anything, and the user needs no rights beyond it.
"""

from __future__ import annotations

from bus.aio import AsyncBus
from bus.topology import QueueSpec, Topology


def agent_reply_queue(topology: Topology, host_uuid: str) -> QueueSpec:
    return QueueSpec(f"{topology.namespace}.agent.{host_uuid}.reply", exclusive=True, auto_delete=True)


class AgentBus(AsyncBus):
    def __init__(
        self, url: str, topology: Topology, host_uuid: str, *, process_name: str | None = None
    ) -> None:
        super().__init__(
            url,
            topology,
            process_name=process_name or f"ringstack-kvm-agent-{host_uuid}",
            declare_topology=False,  # the management nodes declare exchanges; agents may not
            reply_exchange=topology.replies_exchange.name,
        )
        self._reply_queue = agent_reply_queue(topology, host_uuid)
