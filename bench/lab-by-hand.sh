#!/usr/bin/env bash
# The data-plane anchor (issue 15): a Flannel-style VXLAN overlay built by hand with
# iproute2, so bench/bench_dataplane.py can hold the project's lab against what flanneld
# + the bridge CNI plugin leave in the kernel, with nothing of the project in it.
#
#   bench/lab-by-hand.sh up|down|status     (as root; PREFIX=ovlbh NODES=2 by default)
#   UDPCSUM=on|off                           outer UDP checksums on flannel.1 (default: the
#                                            kernel's, as flanneld leaves it)
#
# Shape, the same as the project's lab so only the overlay differs:
#   PREFIX-underlay   namespace holding bridge PREFIX-br (192.168.1.1/24), the "switch"
#   PREFIX-nodeI      node I: eth0 192.168.1.(10+I)/24 on the switch, ip_forward=1,
#                     flannel.1 (VXLAN VNI 1, port 8472, nolearning, MTU 1450,
#                     10.245.I.0/32), cni0 (bridge, 10.245.I.1/24), veth0 (hairpin on,
#                     as Flannel's CNI config asks of the bridge plugin)
#   PREFIX-podI       pod I: eth0 10.245.I.2/24 (MTU 1450), default via 10.245.I.1
# and per remote node J, as flanneld programs them: a permanent neigh 10.245.J.0 ->
# J's flannel.1 MAC, a permanent FDB entry MAC -> 192.168.1.(10+J), and the onlink
# route 10.245.J.0/24 via 10.245.J.0 dev flannel.1.
# Everything it makes is a namespace named PREFIX-*; `down` deletes exactly those.
set -Eeuo pipefail

PREFIX=${PREFIX:-ovlbh}
NODES=${NODES:-2}
UDPCSUM=${UDPCSUM:-}
UNDERLAY="$PREFIX-underlay"
BRIDGE="$PREFIX-br"

die() { echo "lab-by-hand: $*" >&2; exit 1; }

node_ip() { echo "192.168.1.$((10 + $1))"; }

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
  local i=$1 ns="$PREFIX-node$1" pod="$PREFIX-pod$1"
  add_ns "$ns"
  add_ns "$pod"
  ip -n "$UNDERLAY" link add "$PREFIX-n$i" type veth peer name eth0 netns "$ns"
  ip -n "$UNDERLAY" link set "$PREFIX-n$i" master "$BRIDGE" up
  ip -n "$ns" addr add "$(node_ip "$i")/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
  ip -n "$ns" link add flannel.1 type vxlan id 1 local "$(node_ip "$i")" dev eth0 \
    dstport 8472 nolearning ${UDPCSUM:+$([ "$UDPCSUM" = on ] && echo udpcsum || echo noudpcsum)}
  ip -n "$ns" link set flannel.1 mtu 1450 up
  ip -n "$ns" addr add "10.245.$i.0/32" dev flannel.1
  ip -n "$ns" link add cni0 type bridge
  ip -n "$ns" addr add "10.245.$i.1/24" dev cni0
  ip -n "$ns" link set cni0 up
  ip -n "$ns" link add veth0 mtu 1450 type veth peer name eth0 netns "$pod"
  ip -n "$ns" link set veth0 master cni0 up
  ip -n "$ns" link set veth0 type bridge_slave hairpin on
  ip -n "$pod" addr add "10.245.$i.2/24" dev eth0
  ip -n "$pod" link set eth0 mtu 1450 up
  ip -n "$pod" route add default via "10.245.$i.1"
}

vtep_mac() {
  local mac
  mac=$(ip -n "$PREFIX-node$1" -o link show dev flannel.1 | grep -o 'link/ether [0-9a-f:]*')
  [ -n "$mac" ] || die "no MAC address on flannel.1 in $PREFIX-node$1"
  echo "${mac#link/ether }"
}

up_remote() {
  local i=$1 j=$2 mac=$3 ns="$PREFIX-node$1"
  ip -n "$ns" neigh replace "10.245.$j.0" lladdr "$mac" dev flannel.1 nud permanent
  ip netns exec "$ns" bridge fdb replace "$mac" dev flannel.1 dst "$(node_ip "$j")" \
    self permanent
  ip -n "$ns" route replace "10.245.$j.0/24" via "10.245.$j.0" dev flannel.1 onlink
}

up() {
  local ns
  for ns in $(namespaces); do
    ! exists "$ns" || die "$ns exists already: run '$0 down' first"
  done
  trap 'echo "lab-by-hand: up failed; removing what it made" >&2; down' ERR
  add_ns "$UNDERLAY"
  ip -n "$UNDERLAY" link add "$BRIDGE" type bridge
  ip -n "$UNDERLAY" addr add 192.168.1.1/24 dev "$BRIDGE"
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
  echo "lab-by-hand: up ($NODES nodes, prefix $PREFIX)"
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

case "$NODES" in ''|*[!0-9]*) die "NODES must be a number from 2 to 200, not '$NODES'" ;; esac
if [ "$NODES" -lt 2 ] || [ "$NODES" -gt 200 ]; then die "NODES must be a number from 2 to 200, not $NODES"; fi
case "$UDPCSUM" in ''|on|off) ;; *) die "UDPCSUM must be on or off, not '$UDPCSUM'" ;; esac
[ "$(id -u)" = 0 ]  || die "run as root (it creates network namespaces)"
case "${1:-}" in
  up) up ;;
  down) down; echo "lab-by-hand: down (prefix $PREFIX)" ;;
  status) status ;;
  *) echo "usage: $0 up|down|status   (env: PREFIX=$PREFIX NODES=$NODES)" >&2; exit 2 ;;
esac
