#!/usr/bin/env bash
# Provisions one VM of the Vagrant lab through the project's own install path, as root
# (Vagrant's shell provisioner). Idempotent: `vagrant provision` re-runs it safely.
#
#   1. cmd/bootstrap.sh         apt packages + the venv /vagrant/.venv (the README's path)
#   2. /usr/local/bin           overlayd, overlayctl, overlay-cni -> the cmd/ entry points
#   3. overlay-etcd.service     node1 only: Debian's etcd on the node's private address
#   4. overlayctl config set    node1 only, once: the pod network
#   5. overlayd.service         the daemon under systemd (unit from vagrant/systemd/)
#   6. overlayctl install-cni   the CNI plugin and its conflist for runtimes
#   7. wait for /readyz, show the leases
#
# Inputs (environment, set by the Vagrantfile):
#   OVERLAY_NODE_IP      this VM's address on the private network (its public IP)
#   OVERLAY_ETCD_IP      node1's address, where etcd listens
#   OVERLAY_RUN_ETCD     yes on node1
#   OVERLAY_POD_NETWORK  e.g. 10.244.0.0/16
#   OVERLAY_REPO         the synced repository (/vagrant)
set -euo pipefail

REPO=${OVERLAY_REPO:-/vagrant}
NODE_IP=${OVERLAY_NODE_IP:-}
ETCD_IP=${OVERLAY_ETCD_IP:-}
RUN_ETCD=${OVERLAY_RUN_ETCD:-no}
POD_NETWORK=${OVERLAY_POD_NETWORK:-10.244.0.0/16}
ETCD_ENDPOINT="http://$ETCD_IP:2379"
HEALTHZ_ADDR=127.0.0.1:9471
CNI_BIN_DIR=${OVERLAY_CNI_BIN_DIR:-/opt/cni/bin}
CNI_CONF_DIR=${OVERLAY_CNI_CONF_DIR:-/etc/cni/net.d}
ETCD_WAIT=${OVERLAY_ETCD_WAIT:-300}
READY_WAIT=${OVERLAY_READY_WAIT:-120}
CHANGED=no

say() { printf '==> [%s] %s\n' "$(hostname)" "$*"; }
die() { printf 'error: [%s] %s\n' "$(hostname)" "$*" >&2; exit 1; }

valid_ipv4() {
  local IFS=. a b c d
  [[ $1 =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || return 1
  read -r a b c d <<<"$1"
  (( 10#$a <= 255 && 10#$b <= 255 && 10#$c <= 255 && 10#$d <= 255 ))
}

# wait_http URL SECONDS: poll until the URL answers 200 (python3: the box has no curl).
wait_http() {
  python3 - "$1" "$2" <<'PY'
import sys, time, urllib.request
url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while True:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(1)
PY
}

# install_unit NAME: copy the project's unit file; CHANGED=yes when it changed.
install_unit() {
  local src="$REPO/vagrant/systemd/$1" dst="/etc/systemd/system/$1"
  [ -f "$src" ] || die "$src missing: is the repository synced to $REPO?"
  if ! cmp -s "$src" "$dst"; then
    install -m 0644 "$src" "$dst"
    systemctl daemon-reload
    CHANGED=yes
  fi
}

# write_env FILE CONTENT: write an environment file atomically; CHANGED=yes when it changed.
write_env() {
  local tmp
  if [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; then
    return 0
  fi
  mkdir -p "$(dirname "$1")"
  tmp=$(mktemp "$1.XXXXXX")
  printf '%s\n' "$2" >"$tmp"
  chmod 0644 "$tmp"
  mv -f "$tmp" "$1"
  CHANGED=yes
}

# restart_or_start UNIT: enable it; restart when its files changed, else just start.
restart_or_start() {
  systemctl enable --quiet "$1"
  if [ "$CHANGED" = yes ]; then
    systemctl restart "$1"
  else
    systemctl start "$1"
  fi
}

# The environment files the units read (EnvironmentFile=).
etcd_env() {
  printf '%s\n' "OVERLAY_ETCD_IP=$ETCD_IP"
}

overlayd_env() {
  printf '%s\n' \
    "# Written by vagrant/provision.sh; every overlayd flag has an OVERLAYD_* variable." \
    "OVERLAYD_ETCD_ENDPOINTS=$ETCD_ENDPOINT" \
    "OVERLAYD_PUBLIC_IP=$NODE_IP" \
    "OVERLAYD_HEALTHZ_ADDR=$HEALTHZ_ADDR" \
    "# Where this VM's runtime finds CNI plugins (portmap is Debian's, in /usr/lib/cni):" \
    "# recorded in overlayd's runtime file, so 'overlayctl diagnose' needs no flags." \
    "OVERLAYD_CNI_BIN_DIR=/opt/cni/bin:/usr/lib/cni"
}

check_inputs() {
  [ "$(id -u)" -eq 0 ] || die "run as root (Vagrant's shell provisioner does)"
  valid_ipv4 "$NODE_IP" || die "OVERLAY_NODE_IP=${NODE_IP@Q}: expected this VM's IPv4 address"
  valid_ipv4 "$ETCD_IP" || die "OVERLAY_ETCD_IP=${ETCD_IP@Q}: expected node1's IPv4 address"
  case $RUN_ETCD in yes|no) ;; *) die "OVERLAY_RUN_ETCD=${RUN_ETCD@Q}: expected yes or no" ;; esac
  [ -x "$REPO/cmd/bootstrap.sh" ] || die "$REPO/cmd/bootstrap.sh missing: is the repository synced to $REPO?"
  local addrs
  addrs=$(ip -4 -o addr show)
  grep -qF " inet $NODE_IP/" <<<"$addrs" \
    || die "no interface holds $NODE_IP: check the private network in the Vagrantfile"
}

install_project() {
  say "installing the project: $REPO/cmd/bootstrap.sh"
  "$REPO/cmd/bootstrap.sh"
  local c
  for c in overlayd overlayctl overlay-cni; do
    ln -sfn "$REPO/cmd/$c" "/usr/local/bin/$c"
  done
  # Pods on one node reach pods on another through this node's routing.
  printf 'net.ipv4.ip_forward = 1\n' >/etc/sysctl.d/90-overlay.conf
  if [ "$(cat /proc/sys/net/ipv4/ip_forward)" != 1 ]; then
    sysctl -q -w net.ipv4.ip_forward=1
  fi
  # Debian's etcd-server starts its own etcd on 127.0.0.1:2379, which would clash with
  # overlay-etcd on node1 and is unused everywhere else.
  if systemctl cat etcd.service >/dev/null 2>&1; then
    systemctl disable --now etcd.service >/dev/null 2>&1 || true
    systemctl mask etcd.service >/dev/null 2>&1 || true
  fi
}

setup_etcd() {
  say "etcd: overlay-etcd.service on $ETCD_IP:2379"
  CHANGED=no
  write_env /etc/overlay/etcd.env "$(etcd_env)"
  install_unit overlay-etcd.service
  restart_or_start overlay-etcd.service
}

wait_etcd() {
  say "waiting for etcd at $ETCD_ENDPOINT (up to ${ETCD_WAIT}s)"
  wait_http "$ETCD_ENDPOINT/health" "$ETCD_WAIT" \
    || die "etcd at $ETCD_ENDPOINT is not answering; bring node1 up first (vagrant up node1) and see 'journalctl -u overlay-etcd' there"
}

set_network_config() {
  if overlayctl --etcd-endpoints "$ETCD_ENDPOINT" config get >/dev/null 2>&1; then
    say "network config already in etcd, left as is:"
    overlayctl --etcd-endpoints "$ETCD_ENDPOINT" config get
  else
    say "writing the network config: $POD_NETWORK"
    overlayctl --etcd-endpoints "$ETCD_ENDPOINT" config set --network "$POD_NETWORK"
  fi
}

setup_overlayd() {
  say "overlayd.service (public IP $NODE_IP)"
  CHANGED=no
  write_env /etc/overlay/overlayd.env "$(overlayd_env)"
  install_unit overlayd.service
  restart_or_start overlayd.service
}

install_cni() {
  say "installing the CNI plugin: $CNI_BIN_DIR, $CNI_CONF_DIR"
  # The conflist chains the reference portmap plugin, which Debian installs in
  # /usr/lib/cni; runtimes that look in /opt/cni/bin find it (and loopback) there too.
  local p
  mkdir -p "$CNI_BIN_DIR"
  for p in portmap loopback; do
    if [ ! -e "$CNI_BIN_DIR/$p" ] && [ -x "/usr/lib/cni/$p" ]; then
      ln -s "/usr/lib/cni/$p" "$CNI_BIN_DIR/$p"
    fi
  done
  overlayctl install-cni --bin-dir "$CNI_BIN_DIR" --conf-dir "$CNI_CONF_DIR"
}

wait_ready() {
  say "waiting for overlayd's /readyz (up to ${READY_WAIT}s)"
  if ! wait_http "http://$HEALTHZ_ADDR/readyz" "$READY_WAIT"; then
    journalctl -u overlayd.service -n 40 --no-pager >&2 || true
    die "overlayd is not ready; see 'journalctl -u overlayd' on $(hostname)"
  fi
  say "ready; subnet.env:"
  cat /run/overlay/subnet.env
  say "leases:"
  overlayctl --etcd-endpoints "$ETCD_ENDPOINT" leases list
}

main() {
  check_inputs
  install_project
  if [ "$RUN_ETCD" = yes ]; then
    setup_etcd
  fi
  wait_etcd
  if [ "$RUN_ETCD" = yes ]; then
    set_network_config
  fi
  setup_overlayd
  install_cni
  wait_ready
}

# Sourcing the file (the tests do) defines the functions without provisioning anything.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
