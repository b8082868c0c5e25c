#!/usr/bin/env bash
# Installs (idempotently) what the agent and its tests need on a Debian machine of this kind,
# and starts the daemons that no init system starts here. Safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=(qemu-utils qemu-system-x86 qemu-block-extra libvirt-daemon-system libvirt-clients lvm2 xfsprogs util-linux busybox-static chromium xz-utils dmsetup podman runc mmdebstrap openssl)
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "ensure-host: installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then echo "ensure-host: need root to install ${missing[*]}" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# node_modules: npm ci when missing or older than the lock file.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "ensure-host: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

# libvirt runs QEMU as root here, like CloudStack hosts: files the agent creates are opened by QEMU.
qemu_conf=/etc/libvirt/qemu.conf
if [ -f "$qemu_conf" ] && ! grep -q '^# clvm-snapshot-agent' "$qemu_conf"; then
  printf '\n# clvm-snapshot-agent: QEMU runs as root, as on CloudStack hosts\nuser = "root"\ngroup = "root"\ndynamic_ownership = 0\nremember_owner = 0\n' >>"$qemu_conf"
  pkill -x libvirtd 2>/dev/null || true
  sleep 0.5
fi
pgrep -x virtlogd >/dev/null || virtlogd -d
if ! pgrep -x libvirtd >/dev/null; then
  libvirtd -d
fi
for _ in $(seq 1 50); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done
virsh -c qemu:///system version >/dev/null || { echo "ensure-host: libvirtd does not answer" >&2; exit 1; }

# The image test (test/integration/container): podman with runc (scripts/podman/containers.conf)
# and a local node:24-bookworm-slim built from Debian packages and the npm registry (cached).
bash scripts/ensure-base-image.sh
