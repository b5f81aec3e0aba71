#!/usr/bin/env bash
# Smoke check of the Vagrant lab: one pod on every VM, attached through the installed CNI
# plugin exactly as a container runtime would (`python -m overlay.lab.cni_exec` with the
# project's venv: the conflist from /etc/cni/net.d, each plugin executed from CNI_PATH
# with the CNI_* environment), then every pod pings every other VM's pod (pod IP to pod
# IP, no NAT) and sends a 1422-byte payload with DF set (the overlay's MTU); the pods are
# removed again at the end.
#
# From the host, in vagrant/ after `vagrant up` (uses `vagrant ssh -c`):
#   ./smoke-check.sh                # node1..node$OVERLAY_VAGRANT_NODES (default 3)
#   ./smoke-check.sh node1 node3    # some of them
# Inside a VM (what the host side runs over `vagrant ssh -c`), as root:
#   smoke-check.sh pod-add NAME           # netns ovsmoke-NAME + CNI ADD; prints POD_IP=...
#   smoke-check.sh pod-ping NAME IP...    # from that pod: ping each IP, then 1422 B with DF
#   smoke-check.sh pod-del NAME           # CNI DEL, netns removed
#
# Settings (environment): OVERLAY_SMOKE_PREFIX (netns prefix, ovsmoke),
# OVERLAY_SMOKE_CONF_DIR (/etc/cni/net.d), OVERLAY_SMOKE_CNI_PATH
# (/opt/cni/bin:/usr/lib/cni), OVERLAY_SMOKE_STATE_DIR (/run/overlay-smoke),
# OVERLAY_SMOKE_NODE_NETNS (run the plugin inside this netns instead of the machine's
# own; for testing the script without VMs), OVERLAY_SMOKE_PING_WAIT (seconds to wait
# for a reply, 2), OVERLAY_SMOKE_PYTHON (the venv's python, <repo>/.venv/bin/python:
# /vagrant/.venv in the VMs, made by provision.sh), VAGRANT (the vagrant command),
# OVERLAY_SMOKE_REMOTE (this script's path inside the VMs, /vagrant/vagrant/smoke-check.sh).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PREFIX=${OVERLAY_SMOKE_PREFIX:-ovsmoke}
CONF_DIR=${OVERLAY_SMOKE_CONF_DIR:-/etc/cni/net.d}
PLUGIN_PATH=${OVERLAY_SMOKE_CNI_PATH:-/opt/cni/bin:/usr/lib/cni}
STATE_DIR=${OVERLAY_SMOKE_STATE_DIR:-/run/overlay-smoke}
NODE_NETNS=${OVERLAY_SMOKE_NODE_NETNS:-}
VENV_PY=${OVERLAY_SMOKE_PYTHON:-$(dirname "$HERE")/.venv/bin/python}
VAGRANT=${VAGRANT:-vagrant}
REMOTE=${OVERLAY_SMOKE_REMOTE:-/vagrant/vagrant/smoke-check.sh}
MTU_PAYLOAD=1422
PING_WAIT=${OVERLAY_SMOKE_PING_WAIT:-2}   # seconds to wait for a reply
declare -A POD_IP=()   # host side: VM -> its pod's IP (global: the EXIT trap reads it)

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

usage() {  # usage EXIT-CODE: the header above, on stdout for --help, else on stderr
  if [ "$1" -eq 0 ]; then
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
  else
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  fi
  exit "$1"
}

# ---- inside a VM: one pod ----------------------------------------------------------

check_name() {
  [[ ${1:-} =~ ^[a-z0-9][a-z0-9-]{0,14}$ ]] \
    || die "pod name ${1@Q}: expected 1-15 of a-z, 0-9 and -, starting with a letter or digit"
}

# Runs the project's CNI runtime (overlay.lab.cni_exec) in the node's network namespace
# (the VM itself, or NODE_NETNS).
cni() {
  local cmd=$1 name=$2
  local -a in_node=()
  [ -z "$NODE_NETNS" ] || in_node=(ip netns exec "$NODE_NETNS")
  "${in_node[@]}" "$VENV_PY" -m overlay.lab.cni_exec "$cmd" --netns "/run/netns/$PREFIX-$name" \
    --container-id "$PREFIX-$(hostname -s)-$name" --conf-dir "$CONF_DIR" \
    --cni-path "$PLUGIN_PATH" --cache-dir "$STATE_DIR"
}

need_venv() {
  [ -x "$VENV_PY" ] || die "$VENV_PY missing: run cmd/bootstrap.sh (provision.sh does)"
}

pod_ip_from_result() {
  python3 -c '
import json, sys
ips = json.load(sys.stdin).get("ips") or []
v4 = [i["address"].split("/")[0] for i in ips if ":" not in i["address"]]
print(v4[0] if v4 else "")'
}

pod_add() {
  check_name "${1:-}"
  local name=$1 netns="$PREFIX-$1" result ip
  [ "$(id -u)" -eq 0 ] || die "pod-add needs root (sudo)"
  need_venv
  if [ -e "/run/netns/$netns" ]; then
    die "netns $netns exists already: remove it with '$0 pod-del $name'"
  fi
  ip netns add "$netns"
  ip -n "$netns" link set lo up
  mkdir -p "$STATE_DIR"
  if ! result=$(cni add "$name"); then
    ip netns del "$netns" 2>/dev/null || true
    die "CNI ADD for $netns failed (is overlayd ready? systemctl status overlayd; ls $CONF_DIR)"
  fi
  ip=$(pod_ip_from_result <<<"$result")
  [ -n "$ip" ] || die "the CNI result has no IPv4 address: $result"
  printf 'POD_IP=%s\n' "$ip"
}

pod_ping() {
  check_name "${1:-}"
  local name=$1 netns="$PREFIX-$1" ip failed=0
  shift
  [ $# -gt 0 ] || die "pod-ping: give the IPs to ping"
  [ -e "/run/netns/$netns" ] || die "no pod $netns here: run '$0 pod-add $name' first"
  for ip in "$@"; do
    if ! ip netns exec "$netns" ping -q -n -c 3 -i 0.2 -W "$PING_WAIT" "$ip" >/dev/null 2>&1; then
      printf 'FAIL %s (no reply)\n' "$ip"; failed=1
    elif ! ip netns exec "$netns" ping -q -n -c 1 -W "$PING_WAIT" -M "do" -s "$MTU_PAYLOAD" "$ip" >/dev/null 2>&1; then
      printf 'FAIL %s (%d-byte payload with DF lost: MTU)\n' "$ip" "$MTU_PAYLOAD"; failed=1
    else
      printf 'ok %s\n' "$ip"
    fi
  done
  return $failed
}

pod_del() {
  check_name "${1:-}"
  local name=$1 netns="$PREFIX-$1" rc=0
  [ "$(id -u)" -eq 0 ] || die "pod-del needs root (sudo)"
  need_venv
  # DEL is idempotent for the plugin: run it even when the netns is already gone.
  cni del "$name" || rc=1
  if [ -e "/run/netns/$netns" ]; then
    ip netns del "$netns" || rc=1
  fi
  return $rc
}

# ---- on the host: every VM -----------------------------------------------------------

# on NODE ARGS...: run this script inside the VM as root; output without CRs.
on() {
  local node=$1
  shift
  "$VAGRANT" ssh "$node" --no-tty -c "sudo $REMOTE $*" | tr -d '\r'
}

host_cleanup() {
  local n
  for n in "${!POD_IP[@]}"; do
    on "$n" pod-del pod >/dev/null 2>&1 || echo "warning: pod-del on $n failed" >&2
    unset "POD_IP[$n]"
  done
}

host_check() {
  local -a nodes=("$@") targets
  local n m out failed=0
  if [ ${#nodes[@]} -eq 0 ]; then
    local count=${OVERLAY_VAGRANT_NODES:-3} i
    [[ $count =~ ^[1-9][0-9]*$ ]] || die "OVERLAY_VAGRANT_NODES=${count@Q}: expected a number"
    for ((i = 1; i <= count; i++)); do nodes+=("node$i"); done
  fi
  command -v "$VAGRANT" >/dev/null || die "$VAGRANT not found: run this on the host, in vagrant/"
  cd "$HERE"

  trap host_cleanup EXIT

  for n in "${nodes[@]}"; do
    printf '==> %s: pod attached through the CNI plugin ... ' "$n"
    if ! out=$(on "$n" pod-add pod); then
      echo "FAILED"; printf '%s\n' "$out" >&2; failed=1; continue
    fi
    POD_IP[$n]=$(sed -n 's/^POD_IP=//p' <<<"$out")
    echo "${POD_IP[$n]}"
  done
  [ ${#POD_IP[@]} -ge 2 ] || die "fewer than two pods attached: nothing to ping across"

  for n in "${nodes[@]}"; do
    [ -n "${POD_IP[$n]:-}" ] || continue
    targets=()
    for m in "${nodes[@]}"; do
      if [ "$m" != "$n" ] && [ -n "${POD_IP[$m]:-}" ]; then
        targets+=("${POD_IP[$m]}")
      fi
    done
    out=$(on "$n" pod-ping pod "${targets[@]}") || failed=1
    for m in "${nodes[@]}"; do
      if [ "$m" = "$n" ] || [ -z "${POD_IP[$m]:-}" ]; then
        continue
      fi
      printf '    %s pod %-15s -> %s pod %-15s %s\n' "$n" "${POD_IP[$n]}" "$m" "${POD_IP[$m]}" \
        "$(awk -v ip="${POD_IP[$m]}" '$2 == ip { $2 = ""; sub(/  +/, " "); sub(/ +$/, ""); print; found = 1 } END { if (!found) print "FAIL (no answer)" }' <<<"$out")"
    done
  done
  local pods=${#POD_IP[@]}
  host_cleanup
  if [ $failed -eq 0 ]; then
    echo "smoke check passed: $pods pods on ${#nodes[@]} VMs reach each other"
  else
    echo "smoke check FAILED (see above; on a VM: sudo overlayctl diagnose)" >&2
  fi
  return $failed
}

case ${1:-} in
  pod-add) shift; pod_add "$@" ;;
  pod-ping) shift; pod_ping "$@" ;;
  pod-del) shift; pod_del "$@" ;;
  -h|--help|help) usage 0 ;;
  -*) usage 2 ;;
  *) host_check "$@" ;;
esac
