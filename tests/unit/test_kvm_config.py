"""The KVM agent's configuration: file, then RINGSTACK_* variables; errors name the key."""

from __future__ import annotations

import pytest

from agents.kvm.config import ConfigError, load_config

HOST = "a" * 32


def test_environment_overrides_the_file(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(f'host_uuid = "{HOST}"\nnamespace = "from-file"\ndomain_type = "qemu"\n')
    config = load_config(path, environ={"RINGSTACK_NAMESPACE": "from-env", "RINGSTACK_WORKERS": "3"})
    assert (config.host_uuid, config.namespace, config.domain_type, config.workers) == (
        HOST,
        "from-env",
        "qemu",
        3,
    )
    assert config.libvirt_uri == "qemu:///system"  # production default


def test_the_config_file_comes_from_its_own_variable(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(f'host_uuid = "{HOST}"\n')
    assert load_config(environ={"RINGSTACK_KVM_AGENT_CONFIG": str(path)}).host_uuid == HOST


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f'host_uuid = "{HOST}"\ndomain_type = "xen"', "domain_type"),
        (f'host_uuid = "{HOST}"\nwhat = 1', "what"),
        ('namespace = "x"', "host_uuid"),
        ("host_uuid = ", "not valid TOML"),
    ],
)
def test_bad_configs_are_refused_by_name(tmp_path, text, expected):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert expected in str(err.value)


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})
