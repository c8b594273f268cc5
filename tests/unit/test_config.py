"""Node configuration: TOML file < RINGSTACK_* environment < explicit overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

import mgmt.config as config_module
from mgmt.config import ConfigError, NodeConfig, load_config

NODE_UUID = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def no_default_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never read /etc/ringstack/ringstack.toml from the machine running the tests."""
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "ringstack.toml")


def write(tmp_path: Path, text: str, name: str = "ringstack.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


FILE = """
broker_url = "amqp://file:file@broker:5672/"
namespace = "fromfile"
api_prefetch = 64
drain_timeout = 12.5
extra_services = ["pkg.a:A", "pkg.b:B"]
log_level = "DEBUG"
"""


def test_defaults_without_file_or_environment() -> None:
    cfg = load_config(environ={})
    assert cfg == NodeConfig()
    assert cfg.namespace == "ringstack"
    assert cfg.extra_services == []


def test_loads_from_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FILE), environ={})
    assert cfg.broker_url == "amqp://file:file@broker:5672/"
    assert cfg.namespace == "fromfile"
    assert cfg.api_prefetch == 64
    assert cfg.drain_timeout == 12.5
    assert cfg.extra_services == ["pkg.a:A", "pkg.b:B"]
    assert cfg.log_level == "DEBUG"
    # Keys not in the file keep their defaults.
    assert cfg.node_prefetch == NodeConfig().node_prefetch


def test_path_given_as_string(tmp_path: Path) -> None:
    assert load_config(str(write(tmp_path, FILE)), environ={}).namespace == "fromfile"


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, FILE)
    assert load_config(environ={"RINGSTACK_CONFIG": str(path)}).namespace == "fromfile"


def test_default_path_is_used_when_it_exists(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, 'namespace = "fromdefault"\n', "default.toml")
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", path)
    assert load_config(environ={}).namespace == "fromdefault"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    environ = {
        "RINGSTACK_NAMESPACE": "fromenv",
        "RINGSTACK_API_PREFETCH": "32",
        "RINGSTACK_DRAIN_TIMEOUT": "3.5",
        "RINGSTACK_NODE_UUID": NODE_UUID,
    }
    cfg = load_config(write(tmp_path, FILE), environ=environ)
    assert cfg.namespace == "fromenv"
    assert cfg.api_prefetch == 32  # strings from the environment are converted
    assert cfg.drain_timeout == 3.5
    assert cfg.node_uuid == NODE_UUID
    assert cfg.broker_url == "amqp://file:file@broker:5672/"  # not overridden: from the file


def test_unrelated_environment_variables_are_ignored(tmp_path: Path) -> None:
    environ = {"RINGSTACK_NOT_A_SETTING": "x", "NAMESPACE": "nope", "ringstack_namespace": "lower"}
    assert load_config(write(tmp_path, FILE), environ=environ).namespace == "fromfile"


def test_overrides_beat_environment_and_file(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, FILE),
        environ={"RINGSTACK_NAMESPACE": "fromenv", "RINGSTACK_API_PREFETCH": "32"},
        overrides={"namespace": "fromflag"},
    )
    assert cfg.namespace == "fromflag"
    assert cfg.api_prefetch == 32
    assert cfg.log_level == "DEBUG"


def test_list_fields_from_comma_separated_environment(tmp_path: Path) -> None:
    environ = {
        "RINGSTACK_EXTRA_SERVICES": " pkg.c:C , pkg.d:D,,",
        "RINGSTACK_DISABLED_SERVICES": "zone",
    }
    cfg = load_config(write(tmp_path, FILE), environ=environ)
    assert cfg.extra_services == ["pkg.c:C", "pkg.d:D"]
    assert cfg.disabled_services == ["zone"]


def test_empty_list_from_environment(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FILE), environ={"RINGSTACK_EXTRA_SERVICES": ""})
    assert cfg.extra_services == []


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, FILE + 'brokr_url = "typo"\n')
    with pytest.raises(ConfigError, match="brokr_url") as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("api_prefetch = 0\n", "api_prefetch"),
        ("api_prefetch = 10001\n", "api_prefetch"),
        ('api_prefetch = "many"\n', "api_prefetch"),
        ("drain_timeout = -1\n", "drain_timeout"),
        ('namespace = "has space"\n', "namespace"),
        ('node_uuid = "NOT-HEX"\n', "node_uuid"),
        ('log_level = "TRACE"\n', "log_level"),
        ("max_message_bytes = 10\n", "max_message_bytes"),
        ('extra_services = "a,b"\n', "extra_services"),
    ],
)
def test_bad_value_in_file_is_a_config_error(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(write(tmp_path, text), environ={})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RINGSTACK_API_PREFETCH", "lots"),
        ("RINGSTACK_DB_POOL_SIZE", "0"),
        ("RINGSTACK_NODE_UUID", ""),
        ("RINGSTACK_LOG_LEVEL", "debug"),
        ("RINGSTACK_DEFAULT_CALL_TIMEOUT", "0"),
    ],
)
def test_bad_value_in_environment_is_a_config_error(name: str, value: str) -> None:
    key = name.removeprefix("RINGSTACK_").lower()
    with pytest.raises(ConfigError, match=key):
        load_config(environ={name: value})


def test_bad_override_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="serial_queue_limit"):
        load_config(environ={}, overrides={"serial_queue_limit": 0})
    with pytest.raises(ConfigError, match="bogus"):
        load_config(environ={}, overrides={"bogus": 1})


def test_every_problem_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "api_prefetch = 0\nunknown_thing = 1\n"), environ={})
    assert "api_prefetch" in str(info.value)
    assert "unknown_thing" in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(missing, environ={})
    assert str(missing) in str(info.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(environ={"RINGSTACK_CONFIG": str(missing)})


@pytest.mark.parametrize(
    "text",
    ["namespace = \n", "this is not toml", "[section\n", 'a = "unterminated\n', "x = 1\nx = 2\n"],
)
def test_invalid_toml_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, text), environ={})


def test_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """TOML files are UTF-8; a file that is not (here Latin-1) is invalid TOML and must be reported as a
    ConfigError like any other unreadable config, not escape as a UnicodeDecodeError."""
    path = tmp_path / "latin1.toml"
    path.write_bytes('namespace = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError):
        load_config(path, environ={})


def test_config_is_frozen() -> None:
    cfg = load_config(environ={})
    with pytest.raises(ValueError, match="frozen"):
        cfg.namespace = "other"  # type: ignore[misc]


# ---------------------------------------------------------------------- KVM host deployment


def test_kvm_deployment_defaults() -> None:
    cfg = load_config(environ={})
    assert cfg.agent_broker_url is None
    assert cfg.kvm_domain_type == "kvm"
    assert cfg.agent_bundle_dir == "/var/lib/ringstack/agent-bundles"
    assert cfg.agent_wheel is None
    assert (cfg.kvm_agent_settings, cfg.kvm_playbook_vars) == ({}, {})
    assert 0 < cfg.kvm_ssh_timeout <= 60


@pytest.mark.parametrize(
    ("broker_url", "agent_broker_url", "expected"),
    [
        # by default the node's own broker, without the node's credentials (hosts get their own)
        ("amqp://node:secret@10.1.2.3:5672/", None, "amqp://10.1.2.3:5672/"),
        ("amqp://node:secret@broker.example/vhost1", None, "amqp://broker.example/vhost1"),
        ("amqps://n:s@[fd00::1]:5671/%2Fv", None, "amqps://[fd00::1]:5671/%2Fv"),
        # the broker as hosts reach it, when that is not how the node reaches it
        ("amqp://node:secret@127.0.0.1:5672/", "amqp://192.0.2.10:5672/", "amqp://192.0.2.10:5672/"),
        ("amqp://n:s@127.0.0.1/", "amqp://ignored:creds@192.0.2.10", "amqp://192.0.2.10/"),
    ],
)
def test_the_broker_url_written_for_hosts(
    broker_url: str, agent_broker_url: str | None, expected: str
) -> None:
    overrides = {"broker_url": broker_url, "agent_broker_url": agent_broker_url}
    assert load_config(environ={}, overrides=overrides).host_broker_url() == expected


def test_kvm_deployment_keys_from_file_and_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
agent_broker_url = "amqp://192.0.2.10:5672/"
kvm_domain_type = "qemu"
agent_bundle_dir = "/srv/bundles"
kvm_ssh_timeout = 3

[kvm_agent_settings]
libvirt_uri = "qemu:///system"
stop_timeout = 60

[kvm_playbook_vars]
agent_root = "/opt/agent"
""",
    )
    cfg = load_config(path, environ={"RINGSTACK_AGENT_WHEEL": "/srv/ringstack-0.1.0-py3-none-any.whl"})
    assert cfg.host_broker_url() == "amqp://192.0.2.10:5672/"
    assert cfg.kvm_domain_type == "qemu"
    assert (cfg.agent_bundle_dir, cfg.kvm_ssh_timeout) == ("/srv/bundles", 3)
    assert cfg.agent_wheel == "/srv/ringstack-0.1.0-py3-none-any.whl"
    assert cfg.kvm_agent_settings == {"libvirt_uri": "qemu:///system", "stop_timeout": 60}
    assert cfg.kvm_playbook_vars == {"agent_root": "/opt/agent"}
    # tables come from the environment as JSON objects
    environ = {
        "RINGSTACK_KVM_AGENT_SETTINGS": '{"netns": "ns1", "console_log_dir": "/var/log/c"}',
        "RINGSTACK_KVM_PLAYBOOK_VARS": "",
        "RINGSTACK_KVM_DOMAIN_TYPE": "kvm",
    }
    cfg = load_config(path, environ=environ)
    assert cfg.kvm_agent_settings == {"netns": "ns1", "console_log_dir": "/var/log/c"}
    assert (cfg.kvm_playbook_vars, cfg.kvm_domain_type) == ({}, "kvm")


@pytest.mark.parametrize(
    ("overrides", "key", "why"),
    [
        ({"kvm_domain_type": "xen"}, "kvm_domain_type", ""),
        ({"agent_broker_url": "http://broker/"}, "agent_broker_url", ""),
        ({"kvm_ssh_timeout": 0}, "kvm_ssh_timeout", ""),
        # the deployment writes these itself: a node-wide value would be wrong for every host
        ({"kvm_agent_settings": {"host_uuid": "a" * 32}}, "kvm_agent_settings", "host_uuid"),
        ({"kvm_agent_settings": {"broker_url": "amqp://x/"}}, "kvm_agent_settings", "broker_url"),
        ({"kvm_agent_settings": {"domain_type": "qemu"}}, "kvm_agent_settings", "domain_type"),
        ({"kvm_agent_settings": {"netns": ["a"]}}, "kvm_agent_settings", "netns"),
        ({"kvm_agent_settings": "{not json"}, "kvm_agent_settings", "JSON object"),
        ({"kvm_playbook_vars": {"agent_rot": "/x"}}, "kvm_playbook_vars", "agent_rot"),
    ],
)
def test_bad_kvm_deployment_values_are_config_errors(
    overrides: dict[str, object], key: str, why: str
) -> None:
    with pytest.raises(ConfigError, match=key) as info:
        load_config(environ={}, overrides=overrides)
    assert why in str(info.value)


def test_the_playbook_variables_a_node_may_set_are_the_roles_own() -> None:
    import yaml

    from mgmt.config import KVM_PLAYBOOK_VARS
    from mgmt.deploy import ANSIBLE_DIR

    defaults = yaml.safe_load((ANSIBLE_DIR / "roles/kvm_agent/defaults/main.yml").read_text())
    assert set(defaults) == KVM_PLAYBOOK_VARS
