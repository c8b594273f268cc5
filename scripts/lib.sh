# Shared by scripts/demo and scripts/test: make sure RabbitMQ, PostgreSQL and the venv are ready.
# Idempotent: installs only what is missing, starts only what is stopped. Debian/Ubuntu, as root.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
export RINGSTACK_PG_USER=${RINGSTACK_PG_USER:-ringstack}
export RINGSTACK_PG_PASSWORD=${RINGSTACK_PG_PASSWORD:-ringstack}

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_rabbitmq() {
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  if ! as_root rabbitmqctl -q status >/dev/null 2>&1; then
    log "starting RabbitMQ"
    as_root rabbitmq-server -detached
    as_root rabbitmqctl -q await_startup --timeout 120 >/dev/null
  fi
  # The event exchange tells nodes at once when a peer's connection (and node queue) is gone.
  if ! as_root rabbitmq-plugins -q list -e rabbitmq_event_exchange 2>/dev/null | grep -q rabbitmq_event_exchange; then
    log "enabling rabbitmq_event_exchange"
    as_root rabbitmq-plugins -q enable rabbitmq_event_exchange >/dev/null
  fi
}

ensure_postgres() {
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  local ver
  ver=$(ls /etc/postgresql | sort -V | tail -n 1)
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting PostgreSQL $ver"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || as_root pg_ctlcluster "$ver" main start
    for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
  fi
  # A role of our own with a password works whether the cluster trusts local TCP or not.
  as_root runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -d postgres >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$RINGSTACK_PG_USER') THEN
    CREATE ROLE $RINGSTACK_PG_USER LOGIN CREATEDB PASSWORD '$RINGSTACK_PG_PASSWORD';
  END IF;
END \$\$;
SQL
}

ensure_venv() {
  apt_install python3-venv python3-dev gcc
  local stamp="$VENV/.ringstack-installed"
  local want
  want=$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing ringstack and its dependencies into $VENV"
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q -e "$ROOT[dev]" 2>&1 | grep -v '^WARNING: Location' || true
    "$VENV/bin/python" -c 'import bus.aio, mgmt.node' >/dev/null
    echo "$want" > "$stamp"
  fi
}

pg_url() {  # pg_url DBNAME
  echo "postgresql+psycopg2://$RINGSTACK_PG_USER:$RINGSTACK_PG_PASSWORD@127.0.0.1:5432/$1"
}

# The KVM agent's tests (tests/integration/test_kvm_agent*.py, tests/system/test_*kvm*.py): libvirt
# (its test driver, and a real libvirtd with QEMU for TCG guests), qemu-img, iproute2, busybox
# (pings inside namespaces), sshd, sshpass and openssl (deployment over SSH, a test root password),
# dosfstools, mtools and syslinux (a guest disk that boots by itself, made without loop mounts),
# iptables, ebtables, ipset and netcat-openbsd (security groups proven with packets),
# and ringstack's [kvm,deploy] extras (libvirt-python builds against libvirt-dev). Quick when
# everything is there.
ensure_kvm_test_deps() {
  apt_install libvirt-dev pkg-config gcc python3-dev python3-venv libvirt-daemon-system libvirt-daemon \
    qemu-system-x86 qemu-utils iproute2 busybox openssh-server openssh-client sshpass gzip openssl \
    dosfstools mtools syslinux iptables ebtables ipset netcat-openbsd
  if ! "$VENV/bin/python" -c 'import libvirt, ansible' >/dev/null 2>&1; then
    log "installing ringstack[kvm,deploy] into $VENV"
    "$VENV/bin/pip" install -q -e "$ROOT[kvm,deploy]" 2>&1 | grep -v '^WARNING: Location' || true
    "$VENV/bin/python" -c 'import libvirt, ansible' >/dev/null
  fi
}

# The LDAP tests (tests/integration/test_ldap.py) run their own slapd on 127.0.0.1, with its own
# config and ports, so a system instance the package may start is left alone (and unused); on a
# machine where this installs slapd for the first time, that instance is stopped and disabled.
ensure_ldap_test_deps() {
  local fresh=0
  dpkg -s slapd >/dev/null 2>&1 || fresh=1
  apt_install slapd ldap-utils
  if [ "$fresh" = 1 ] && command -v systemctl >/dev/null && systemctl is-active -q slapd 2>/dev/null; then
    log "stopping the system slapd the package started (the tests run their own)"
    as_root systemctl disable --now slapd >/dev/null 2>&1 || true
  fi
}

# The virtual-router agent's tests and benchmark (tests/integration/test_vrouter_*.py,
# bench/vrouter.py): iptables (both backends), dnsmasq (the agent runs its own, reloaded by SIGHUP;
# dnsmasq-base brings no system service), dhcp_release (dnsmasq-utils), conntrack, iproute2,
# busybox (udhcpc and nslookup in guest namespaces) and socat (the agent in its namespace reaches
# the broker through a unix-socket relay).
ensure_vrouter_test_deps() {
  apt_install iptables dnsmasq-base dnsmasq-utils conntrack iproute2 busybox socat
}
