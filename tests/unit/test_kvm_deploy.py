"""Pieces of the KVM host deployment that need no host: broker permissions, URLs, and reading
Ansible's output for the step and reason of a failure."""

from __future__ import annotations

import re

import pytest

from mgmt.core.brokeradmin import AgentCredentials, agent_permissions, agent_topic_permissions, vhost_of
from mgmt.core.hostdeploy import _failed_task, deploy_kvm_host

HOST, OTHER = "a" * 32, "b" * 32


def test_agent_permissions_reach_only_its_own_paths():
    configure, write, read = agent_permissions("rs", HOST)
    for own in (f"rs.agent.{HOST}", f"rs.agent.{HOST}.reply"):
        assert re.match(configure, own) and re.match(read, own)
    for other in (
        f"rs.agent.{OTHER}",
        "rs.api",
        f"rs.node.{OTHER}",
        f"rs.agent.{HOST}x",
        f"xrs.agent.{HOST}",
    ):
        assert not re.match(configure, other) and not re.match(read, other)
    assert all(re.match(write, f"rs.{x}") for x in ("replies", "events", "dead-letter"))
    assert not any(re.match(write, x) for x in ("", "amq.default", "rs.api", "rs.membership", "rs.events.x"))
    exchange, topic_write, _ = agent_topic_permissions("rs", HOST)
    assert exchange == "rs.events" and re.match(topic_write, f"agent.{HOST}.vm_state")
    assert not re.match(topic_write, f"agent.{OTHER}.vm_state") and not re.match(
        topic_write, f"vm.{HOST}.state"
    )
    assert not re.match(topic_write, f"agent.{HOST}.a.b")


def test_credentials_replace_those_of_the_broker_url():
    creds = AgentCredentials("rs.agent.x", "p@ss/word", "/")
    assert creds.url("amqp://guest:guest@10.0.0.1:5672/") == "amqp://rs.agent.x:p%40ss%2Fword@10.0.0.1:5672/"
    assert AgentCredentials("u", "p", "prod").url("amqp://h/") == "amqp://u:p@h/prod"
    assert vhost_of("amqp://h:5672/") == "/" and vhost_of("amqp://h/prod%2Fa") == "prod/a"


OUTPUT = """
PLAY [ringstack KVM host] ******************************************************

TASK [kvm_agent : Probe the host] **********************************************
ok: [10.0.0.2]

TASK [kvm_agent : Make the agent's directories] ********************************
fatal: [10.0.0.2]: FAILED! => {"changed": false, "cmd": ["install"], "msg": "non-zero return code", "rc": 1, "stderr": "install: cannot create directory '/x': Not a directory"}

PLAY RECAP *********************************************************************
10.0.0.2                   : ok=1    changed=0    unreachable=0    failed=1    skipped=0
"""

LOOP = """
TASK [kvm_agent : Make things] ***
failed: [h] (item=/a) => {"ansible_loop_var": "item", "changed": false, "item": "/a", "msg": "first problem"}
failed: [h] (item=/b) => {"ansible_loop_var": "item", "changed": false, "item": "/b", "msg": "second problem"}
fatal: [h]: FAILED! => {"msg": "All items completed, but some failed"}
"""


def test_the_failing_task_and_its_message_are_read_from_ansible_output():
    assert _failed_task(OUTPUT) == (
        "task 'kvm_agent : Make the agent's directories' failed: non-zero return code;"
        " install: cannot create directory '/x': Not a directory"
    )
    assert _failed_task(LOOP) == "task 'kvm_agent : Make things' failed: first problem"
    assert _failed_task("PLAY RECAP\nh : ok=3 changed=1 failed=0") == ""


async def test_exactly_one_ssh_secret_is_required():
    from bus.errors import RingstackError

    for secrets in ({}, {"password": "p", "ssh_key": "k"}):
        with pytest.raises(RingstackError, match="exactly one"):
            await deploy_kvm_host(HOST, "10.0.0.2", bus=None, agent_broker_url="amqp://h/", **secrets)  # type: ignore[arg-type]
