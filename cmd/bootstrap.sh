#!/usr/bin/env bash
# Installs everything the project needs on Debian 12, as root: apt packages and a
# virtualenv at .venv holding the package (editable) and its test dependencies.
#   cmd/bootstrap.sh          what a node / the lab needs
#   cmd/bootstrap.sh --test   plus what the test suite needs (podman, vagrant, ...)
# Idempotent and quick when everything is already there.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${OVERLAY_VENV:-$ROOT/.venv}

# What a node and the lab need.
APT_PACKAGES=(
  python3 python3-venv python3-pip
  etcd-server etcd-client
  iproute2 iputils-ping iperf3 libpcap0.8 sockperf ethtool
  nftables iptables conntrack procps openssl ca-certificates
  containernetworking-plugins
)
# What only the test suite needs (`bootstrap.sh --test`): a real container runtime for the
# CNI interop tests, a busybox rootfs for its image, tcpdump, vagrant for
# `vagrant validate` (no VM is started here), and the linters of the VM lab's files:
# `systemd-analyze verify` (on Debian 12 only the systemd package ships it; it is not
# started here, a container keeps its own init) and shellcheck.
TEST_APT_PACKAGES=(
  tcpdump podman runc busybox-static
  vagrant vagrant-libvirt
  systemd shellcheck
)
if [ "${1:-}" = "--test" ]; then
  APT_PACKAGES+=("${TEST_APT_PACKAGES[@]}")
fi

say() { printf '==> %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "error: run this as root (it installs apt packages and creates network namespaces)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's etcd-server ships a service; the tests and the lab start their own etcd.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  say "note: the system etcd service is running; the project does not use it"
fi

stamp="$VENV/.overlay-installed"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ "$ROOT/setup.cfg" -nt "$stamp" ]; then
  say "installing the overlay package and test dependencies into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[test]"
  touch "$stamp"
fi
