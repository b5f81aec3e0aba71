#!/usr/bin/env bash
# The Vagrant lab's recipe on systemd-nspawn containers, for machines that cannot run VMs
# (no nested virtualisation): the same provision.sh, systemd units and smoke-check.sh,
# with Debian 12 containers booting real systemd in place of the VMs.
#
#   sudo vagrant/nspawn-lab.sh up       # build the image (once), boot and provision the nodes
#   sudo vagrant/nspawn-lab.sh smoke    # smoke-check.sh across the nodes
#   sudo vagrant/nspawn-lab.sh down     # stop the nodes, remove their namespaces and copies
#   sudo vagrant/nspawn-lab.sh all      # up + smoke + down
#
# Each node is a container booted with `systemd-nspawn --boot` inside a network namespace
# ovnspawn-nodeN whose eth0 (192.168.56.1N) is a veth into a bridge living in the
# namespace ovnspawn-underlay: nothing is attached to the host's interfaces. Provisioning
# runs vagrant/provision.sh inside each container with the environment the Vagrantfile
# gives it. What differs from the VMs: the image is built with debootstrap and
# cmd/bootstrap.sh runs while building it (with the host's network, for apt and pip);
# the containers get CAP_NET_ADMIN, and ip_forward is set from outside (a container may
# not write /proc/sys).
#
# Needs: root, debootstrap, systemd-container (systemd-nspawn), network access for apt
# and pip while building. Settings: OVERLAY_NSPAWN_DIR (/var/tmp/ovnspawn: the image
# and the node copies), OVERLAY_VAGRANT_NODES (3), OVERLAY_VAGRANT_POD_NETWORK
# (10.244.0.0/16), OVERLAY_NSPAWN_MIRROR (http://deb.debian.org/debian).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
DIR=${OVERLAY_NSPAWN_DIR:-/var/tmp/ovnspawn}
NODES=${OVERLAY_VAGRANT_NODES:-3}
POD_NETWORK=${OVERLAY_VAGRANT_POD_NETWORK:-10.244.0.0/16}
MIRROR=${OVERLAY_NSPAWN_MIRROR:-http://deb.debian.org/debian}
NET=192.168.56
PREFIX=ovnspawn
UNDERLAY=$PREFIX-underlay
IMAGE=$DIR/image

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

node_ip() { echo "$NET.$((10 + $1))"; }
netns_of() { echo "$PREFIX-node$1"; }
leader() { cat "$DIR/node$1/leader"; }

# in_node N CMD: run CMD (bash) inside the booted container of node N, as root.
in_node() {
  nsenter --target "$(leader "$1")" --mount --uts --ipc --net --pid --root -- \
    /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root /bin/bash -c "cd / && $2"
}

check_host() {
  [ "$(id -u)" -eq 0 ] || die "run as root"
  [[ $NODES =~ ^[1-9]$ ]] || die "OVERLAY_VAGRANT_NODES=${NODES@Q}: expected 1-9"
  command -v debootstrap >/dev/null || die "debootstrap missing: apt-get install debootstrap"
  command -v systemd-nspawn >/dev/null \
    || die "systemd-nspawn missing: apt-get install --no-install-recommends systemd-container"
}

# The repository as Vagrant's rsync share would put it at /vagrant.
sync_repo() {
  mkdir -p "$1/vagrant"
  tar -C "$REPO" --exclude=./.git --exclude=./.venv --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=./vagrant/.vagrant -cf - . | tar -C "$1/vagrant" -xf -
}

build_image() {
  [ -f "$IMAGE/.ready" ] && return 0
  say "building the Debian 12 image in $IMAGE (debootstrap, then cmd/bootstrap.sh)"
  rm -rf "$IMAGE"
  mkdir -p "$DIR"
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,sudo,python3,iproute2,procps,ca-certificates \
    bookworm "$IMAGE" "$MIRROR" >"$DIR/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $DIR/debootstrap.log"
  # CAs added on the host (e.g. a proxy's) are trusted inside too, for pip.
  cp /usr/local/share/ca-certificates/*.crt "$IMAGE/usr/local/share/ca-certificates/" 2>/dev/null || true
  cp /etc/resolv.conf "$IMAGE/etc/resolv.conf"
  sync_repo "$IMAGE"
  systemd-nspawn -q --register=no --keep-unit -D "$IMAGE" --pipe /bin/sh -c \
    'update-ca-certificates >/dev/null && /vagrant/cmd/bootstrap.sh' >"$DIR/bootstrap.log" 2>&1 \
    || die "cmd/bootstrap.sh failed in the image; see $DIR/bootstrap.log"
  # The containers' eth0 is configured from outside: nothing for networkd to wait for.
  systemd-nspawn -q --register=no --keep-unit -D "$IMAGE" --pipe \
    systemctl mask -q systemd-networkd-wait-online.service
  rm -f "$IMAGE/etc/machine-id"
  touch "$IMAGE/.ready"
}

make_underlay() {
  [ -e "/run/netns/$UNDERLAY" ] && return 0
  ip netns add "$UNDERLAY"
  ip -n "$UNDERLAY" link set lo up
  ip -n "$UNDERLAY" link add br0 type bridge
  ip -n "$UNDERLAY" link set br0 up
}

make_node_netns() {
  local ns
  ns=$(netns_of "$1")
  [ -e "/run/netns/$ns" ] && return 0
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  # Created inside the node's namespace, its peer straight into the underlay's.
  ip -n "$ns" link add eth0 type veth peer name "node$1" netns "$UNDERLAY"
  ip -n "$UNDERLAY" link set "node$1" master br0 up
  ip -n "$ns" addr add "$(node_ip "$1")/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip netns exec "$ns" sysctl -q -w net.ipv4.ip_forward=1
}

boot_node() {
  local n=$1 root="$DIR/node$1/rootfs"
  if [ -f "$DIR/node$n/nspawn.pid" ] && kill -0 "$(cat "$DIR/node$n/nspawn.pid")" 2>/dev/null; then
    say "node$n: already running"
    sync_repo "$root"
    return 0
  fi
  say "node$n: booting ($(node_ip "$n"), netns $(netns_of "$n"))"
  mkdir -p "$DIR/node$n"
  [ -d "$root" ] || cp -a "$IMAGE" "$root"
  sync_repo "$root"
  echo "overlay-node$n" >"$root/etc/hostname"
  printf '127.0.1.1 overlay-node%s\n' "$n" >>"$root/etc/hosts"
  setsid systemd-nspawn -q --boot --register=no --keep-unit --capability=CAP_NET_ADMIN \
    -D "$root" -M "overlay-node$n" --network-namespace-path="/run/netns/$(netns_of "$n")" \
    >"$DIR/node$n/console.log" 2>&1 </dev/null &
  echo $! >"$DIR/node$n/nspawn.pid"
  for _ in $(seq 100); do
    pgrep -P "$(cat "$DIR/node$n/nspawn.pid")" >"$DIR/node$n/leader" && break
    sleep 0.2
  done
  [ -s "$DIR/node$n/leader" ] || die "node$n did not start; see $DIR/node$n/console.log"
  local state=
  for _ in $(seq 60); do
    state=$(in_node "$n" 'systemctl is-system-running --wait' 2>/dev/null) || true
    case $state in running|degraded) return 0 ;; esac
    sleep 1
  done
  die "node$n: systemd did not come up (${state:-no answer}); see $DIR/node$n/console.log"
}

provision_node() {
  local n=$1 run_etcd=no
  [ "$n" -eq 1 ] && run_etcd=yes
  say "node$n: vagrant/provision.sh"
  in_node "$n" "OVERLAY_NODE_IP=$(node_ip "$n") OVERLAY_ETCD_IP=$(node_ip 1) \
    OVERLAY_RUN_ETCD=$run_etcd OVERLAY_POD_NETWORK=$POD_NETWORK /vagrant/vagrant/provision.sh"
}

cmd_up() {
  local n
  build_image
  make_underlay
  for ((n = 1; n <= NODES; n++)); do
    make_node_netns "$n"
    boot_node "$n"
  done
  for ((n = 1; n <= NODES; n++)); do
    provision_node "$n"
  done
  say "up: $NODES nodes; 'sudo $0 smoke' runs the smoke check, 'sudo $0 down' removes them"
}

cmd_smoke() {
  VAGRANT="$HERE/nspawn-lab.sh" OVERLAY_VAGRANT_NODES=$NODES "$HERE/smoke-check.sh"
}

cmd_down() {
  local n pid
  for ((n = 1; n <= 9; n++)); do
    [ -d "$DIR/node$n" ] || continue
    if [ -f "$DIR/node$n/nspawn.pid" ]; then
      pid=$(cat "$DIR/node$n/nspawn.pid")
      if kill -0 "$pid" 2>/dev/null; then
        say "node$n: powering off"
        kill "$pid"  # nspawn asks the container's systemd to power off
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
      fi
    fi
    [ -e "/run/netns/$(netns_of "$n")" ] && ip netns del "$(netns_of "$n")"
    rm -rf "$DIR/node$n"
  done
  [ -e "/run/netns/$UNDERLAY" ] && ip netns del "$UNDERLAY"
  say "down (the image stays in $IMAGE; remove $DIR to rebuild it)"
}

# smoke-check.sh calls this script as its `vagrant`: ssh NODE --no-tty -c CMD.
cmd_ssh() {
  if [ $# -ne 4 ] || [ "$2" != --no-tty ] || [ "$3" != -c ]; then
    die "usage: $0 ssh NODE --no-tty -c CMD"
  fi
  [[ $1 =~ ^node([1-9])$ ]] || die "no node $1"
  [ -s "$DIR/$1/leader" ] || die "$1 is not running: sudo $0 up"
  in_node "${BASH_REMATCH[1]}" "$4"
}

case ${1:-} in
  up) check_host; cmd_up ;;
  smoke) check_host; cmd_smoke ;;
  down) check_host; cmd_down ;;
  all) check_host; cmd_up; rc=0; cmd_smoke || rc=$?; cmd_down; exit $rc ;;
  ssh) shift; cmd_ssh "$@" ;;
  *) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
