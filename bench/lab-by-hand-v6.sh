#!/usr/bin/env bash
# The IPv6 data-plane anchor (issue 14 item 7): lab-by-hand.sh's twin over IPv6, a
# Flannel-style IPv6 VXLAN overlay (flanneld's flannel-v6.1) built by hand with iproute2,
# so bench/bench_dataplane_v6.py can hold the project's IPv6 pods against what the kernel
# does with nothing of the project in it.
#
#   bench/lab-by-hand-v6.sh up|down|status     (as root; PREFIX=ovlbh6 NODES=2 by default)
#
# Shape, the same as the project's dual-stack lab's IPv6 half, so only the overlay differs:
#   PREFIX-underlay   namespace holding bridge PREFIX-br (fd00:192:168:1::1/64), the "switch"
#   PREFIX-nodeI      node I: eth0 fd00:192:168:1::1I/64 on the switch, IPv6 forwarding on,
#                     flannel-v6.1 (VXLAN VNI 1 over IPv6, port 8472, nolearning,
#                     MTU 1430 = 1500 - 70, fd00:10:245:I::/128), cni0 (bridge,
#                     fd00:10:245:I::1/64), veth0 (hairpin on)
#   PREFIX-podI       pod I: eth0 fd00:10:245:I::2/64 (MTU 1430), default via fd00:10:245:I::1
# and per remote node J, as flanneld programs them: a permanent neigh fd00:10:245:J:: ->
# J's flannel-v6.1 MAC, a permanent FDB entry MAC -> fd00:192:168:1::1J, and the onlink
# route fd00:10:245:J::/64 via fd00:10:245:J:: dev flannel-v6.1.
# Addresses are added with nodad (usable at once, as in the lab); they exist only inside
# these namespaces (fd00::/8 is unique-local).  Everything it makes is a namespace named
# PREFIX-*; `down` deletes exactly those.
set -Eeuo pipefail

PREFIX=${PREFIX:-ovlbh6}
NODES=${NODES:-2}
UNDERLAY="$PREFIX-underlay"
BRIDGE="$PREFIX-br"
DEV=flannel-v6.1

die() { echo "lab-by-hand-v6: $*" >&2; exit 1; }

node_ip() { echo "fd00:192:168:1::$((10 + $1))"; }
pod_net() { echo "fd00:10:245:$1::"; }

namespaces() {
  echo "$UNDERLAY"
  for i in $(seq 1 "$NODES"); do echo "$PREFIX-node$i"; echo "$PREFIX-pod$i"; done
}

exists() { [ -e "/var/run/netns/$1" ]; }

add_ns() {
  ip netns add "$1"
  ip -n "$1" link set lo up
}

up_node() {
  local i=$1 ns="$PREFIX-node$1" pod="$PREFIX-pod$1" net
  net=$(pod_net "$i")
  add_ns "$ns"
  add_ns "$pod"
  ip -n "$UNDERLAY" link add "$PREFIX-n$i" type veth peer name eth0 netns "$ns"
  ip -n "$UNDERLAY" link set "$PREFIX-n$i" master "$BRIDGE" up
  ip -n "$ns" -6 addr add "$(node_ip "$i")/64" dev eth0 nodad
  ip -n "$ns" link set eth0 up
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.forwarding=1
  ip -n "$ns" link add "$DEV" type vxlan id 1 local "$(node_ip "$i")" dev eth0 \
    dstport 8472 nolearning
  ip -n "$ns" link set "$DEV" mtu 1430 up
  ip -n "$ns" -6 addr add "$net/128" dev "$DEV" nodad
  ip -n "$ns" link add cni0 type bridge
  ip -n "$ns" -6 addr add "${net}1/64" dev cni0 nodad
  ip -n "$ns" link set cni0 up
  ip -n "$ns" link add veth0 mtu 1430 type veth peer name eth0 netns "$pod"
  ip -n "$ns" link set veth0 master cni0 up
  ip -n "$ns" link set veth0 type bridge_slave hairpin on
  ip -n "$pod" -6 addr add "${net}2/64" dev eth0 nodad
  ip -n "$pod" link set eth0 mtu 1430 up
  ip -n "$pod" -6 route add default via "${net}1"
}

vtep_mac() {
  local mac
  mac=$(ip -n "$PREFIX-node$1" -o link show dev "$DEV" | grep -o 'link/ether [0-9a-f:]*')
  [ -n "$mac" ] || die "no MAC address on $DEV in $PREFIX-node$1"
  echo "${mac#link/ether }"
}

up_remote() {
  local i=$1 j=$2 mac=$3 ns="$PREFIX-node$1" net
  net=$(pod_net "$j")
  ip -n "$ns" -6 neigh replace "$net" lladdr "$mac" dev "$DEV" nud permanent
  ip netns exec "$ns" bridge fdb replace "$mac" dev "$DEV" dst "$(node_ip "$j")" \
    self permanent
  ip -n "$ns" -6 route replace "$net/64" via "$net" dev "$DEV" onlink
}

up() {
  local ns
  for ns in $(namespaces); do
    ! exists "$ns" || die "$ns exists already: run '$0 down' first"
  done
  trap 'echo "lab-by-hand-v6: up failed; removing what it made" >&2; down' ERR
  add_ns "$UNDERLAY"
  ip -n "$UNDERLAY" link add "$BRIDGE" type bridge
  ip -n "$UNDERLAY" -6 addr add fd00:192:168:1::1/64 dev "$BRIDGE" nodad
  ip -n "$UNDERLAY" link set "$BRIDGE" up
  local -A mac
  for i in $(seq 1 "$NODES"); do
    up_node "$i"
    mac[$i]=$(vtep_mac "$i")
  done
  for i in $(seq 1 "$NODES"); do
    for j in $(seq 1 "$NODES"); do
      [ "$i" = "$j" ] || up_remote "$i" "$j" "${mac[$j]}"
    done
  done
  trap - ERR
  echo "lab-by-hand-v6: up ($NODES nodes, prefix $PREFIX)"
}

down() {
  local ns
  for ns in $(namespaces); do
    if exists "$ns"; then ip netns delete "$ns"; fi
  done
}

status() {
  local ns missing=0
  for ns in $(namespaces); do
    if exists "$ns"; then echo "$ns present"; else echo "$ns absent"; missing=1; fi
  done
  return "$missing"
}

case "$NODES" in ''|*[!0-9]*) die "NODES must be a number from 2 to 89, not '$NODES'" ;; esac
# node I's address ends in decimal 10+I written as hex digits: at most 99 (::99)
if [ "$NODES" -lt 2 ] || [ "$NODES" -gt 89 ]; then die "NODES must be a number from 2 to 89, not $NODES"; fi
case "$PREFIX" in ''|*[!a-z0-9-]*) die "PREFIX must be lower-case letters, digits, '-', not '$PREFIX'" ;; esac
[ "$(id -u)" = 0 ]  || die "run as root (it creates network namespaces)"
case "${1:-}" in
  up) up ;;
  down) down; echo "lab-by-hand-v6: down (prefix $PREFIX)" ;;
  status) status ;;
  *) echo "usage: $0 up|down|status   (env: PREFIX=$PREFIX NODES=$NODES)" >&2; exit 2 ;;
esac
