"""How a failed KVM deployment is reported (mgmt.services.host.connect.deploy_error)."""

from __future__ import annotations

import pytest

from bus.errors import RingstackError, Sys
from mgmt.core.hostdeploy import failure
from mgmt.services.host.connect import KvmLogin, deploy_error


def test_a_deployment_failure_is_reported_as_it_is() -> None:
    exc = failure("ssh", "authentication failed for root@192.0.2.1:22")
    assert deploy_error(exc, "amqp://127.0.0.1:5672/") is exc


@pytest.mark.parametrize("broker", ["amqp://127.0.0.1:5672/", "amqp://localhost/", "amqp://[::1]:5672/"])
def test_an_agent_that_never_connects_to_a_loopback_broker_gets_a_hint(broker: str) -> None:
    exc = failure("connect", "the agent did not answer agent.connect within 60 s (no answer)")
    reported = deploy_error(exc, broker)
    assert reported.code == "HOST.DEPLOY_FAILED" and reported.details["step"] == "connect"
    assert f"the broker is at {broker}" in reported.message and "agent_broker_url" in reported.message
    assert reported.details["hint"] in reported.message
    assert deploy_error(exc, "amqp://192.0.2.10:5672/") is exc  # a routable broker: no hint


def test_another_error_becomes_a_deployment_failure_at_the_prepare_step() -> None:
    exc = RingstackError(Sys.INVALID_ARGUMENT, "give exactly one of password and ssh_key")
    reported = deploy_error(exc, "amqp://192.0.2.10/")
    assert reported.code == "HOST.DEPLOY_FAILED"
    assert reported.details == {"step": "prepare", "reason": exc.message}


def test_a_login_never_shows_its_secrets() -> None:
    login = KvmLogin("192.0.2.1", 22, "root", password="pw-secret", ssh_key="key-secret")
    assert "secret" not in repr(login) and "192.0.2.1" in repr(login)
