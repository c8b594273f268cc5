"""The quota registry: definitions, configured defaults, usage functions; admins are exempt."""

from __future__ import annotations

import pytest

from mgmt.core import quota
from mgmt.core.service import Account


@pytest.fixture(autouse=True)
def private_registries(monkeypatch):
    """The registries are per process: give each test copies, so nothing leaks to other tests;
    configured defaults start empty (an in-process node of an earlier test may have set some)."""
    for name in ("_definitions", "_usage"):
        monkeypatch.setattr(quota, name, dict(getattr(quota, name)))
    monkeypatch.setattr(quota, "_configured", {})


def test_builtin_quotas_have_zstack_names_and_defaults():
    assert {"vm.num", "vm.cpuNum", "vm.memorySize", "l3.ipNum", "volume.num"} <= set(quota.quota_names())
    assert quota.default_limit("vm.num") == 20
    assert quota.default_limit("vm.memorySize") == 80 << 30


def test_configured_defaults_replace_builtin_ones_and_are_checked():
    quota.configure_defaults({"vm.num": 3})
    assert quota.default_limit("vm.num") == 3
    assert quota.default_limits()["vm.cpuNum"] == 80
    with pytest.raises(ValueError, match=r"vm\.bogus"):
        quota.configure_defaults({"vm.bogus": 1})
    with pytest.raises(ValueError, match=r"vm\.num"):
        quota.configure_defaults({"vm.num": -1})
    assert quota.default_limit("vm.num") == 3  # a rejected configuration changes nothing
    quota.configure_defaults({})
    assert quota.default_limit("vm.num") == 20


def test_definitions_and_usage_functions():
    with pytest.raises(ValueError):
        quota.define_quota("unit.bad", -1)
    with pytest.raises(KeyError):
        quota.register_usage("unit.undefined", lambda s, a: 0)
    with pytest.raises(KeyError):
        quota.default_limit("unit.undefined")
    quota.define_quota("unit.things", 2)
    assert quota.is_defined("unit.things") and quota.default_limit("unit.things") == 2
    with pytest.raises(KeyError, match="usage function"):
        quota.usage_of(None, "a" * 32, "unit.things")  # type: ignore[arg-type]
    quota.register_usage("unit.things", lambda session, account_uuid: 7)
    assert quota.usage_of(None, "a" * 32, "unit.things") == 7  # type: ignore[arg-type]


def test_admins_have_no_quota_and_negative_requests_are_bugs():
    admin = Account("a" * 32, "admin", True)
    # No database needed: an admin's check returns before touching the session.
    quota.check_quota(None, admin, "vm.num", 10**9)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        quota.check_quota(None, admin, "vm.num", -1)  # type: ignore[arg-type]
