#!/usr/bin/env bash
# Builds the lab guest: a Debian kernel (apt-get download + dpkg-deb, never installed on the host) and a
# self-made initramfs holding busybox, lvm2, dmsetup, qemu-img/io/nbd, qemu-system-x86_64, lvmlockd +
# sanlock, the host's node binary and their shared libraries. Nothing comes from anywhere but Debian's
# packages and this host's installed Debian packages.
#
# The result is cached in .lab-cache/guest-<hash>/ and rebuilt when an input changes: this script, the
# guest init and lvm.conf, the kernel package and the versions of every package the guest takes files from.
# Prints the guest directory (holding vmlinux, initramfs.cpio, opt/ and manifest.txt) on stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
project="$(cd "$here/../.." && pwd)"
cache="${LAB_CACHE_DIR:-$project/.lab-cache}"
log() { echo "lab-build: $*" >&2; }

# Host packages whose installed files go into the guest (all installed by scripts/ensure-host.sh).
host_pkgs=(busybox-static lvm2 dmsetup qemu-utils qemu-system-x86 libc6 e2fsprogs util-linux)
# Packages only the guest needs: downloaded and unpacked, never installed on the host.
# nfs-kernel-server / nfs-common / libnfsidmap1: the kernel NFS server and the mount helper for the NFS store
# suite (NFSv4 over loopback: no rpcbind, no statd).
guest_pkgs=(lvm2-lockd sanlock libsanlock1 libsanlock-client1 libdlm3 nfs-kernel-server nfs-common libnfsidmap1)

# The kernel: LAB_KERNEL_PACKAGE pins one (e.g. linux-image-6.1.0-56-amd64); by default the version that
# Debian's linux-image-amd64 meta package points at today (it follows security updates).
# One apt-cache call (it costs ~0.4 s): candidate versions of the meta package and the guest-only packages.
show() {
  apt-cache show --no-all-versions linux-image-amd64 ${LAB_KERNEL_PACKAGE:-} "${guest_pkgs[@]}" 2>/dev/null |
    awk '/^Package:/ {p=$2} /^Version:/ {print p, $2} /^Depends:/ && p == "linux-image-amd64" {print "depends", $2}'
}
versions="$(show)"
if ! echo "$versions" | grep -q '^depends linux-image-'; then
  log "apt lists are empty: apt-get update"
  apt-get update -qq >&2
  versions="$(show)"
fi
kernel_pkg="${LAB_KERNEL_PACKAGE:-$(echo "$versions" | awk '$1 == "depends" {print $2; exit}')}"
[ -n "$kernel_pkg" ] || { log "cannot resolve the kernel package from linux-image-amd64"; exit 1; }

inputs="$(
  sha256sum "$here/build-guest.sh" "$here/guest/init" "$here/guest/lvm.conf" | awk '{print $1}'
  echo "kernel $kernel_pkg"
  echo "$versions"
  dpkg-query -W -f='${Package} ${Version}\n' "${host_pkgs[@]}"
  echo "node $(node --version) $(stat -c %s "$(command -v node)")"
)"
hash="$(echo "$inputs" | sha256sum | cut -c1-16)"
out="$cache/guest-$hash"
if [ -f "$out/manifest.txt" ] && [ -f "$out/vmlinux" ] && [ -f "$out/initramfs.cpio" ] && [ -d "$out/opt" ]; then
  echo "$out"
  exit 0
fi

started_ns=$(date +%s%N)
mkdir -p "$cache"
work="$(mktemp -d "$cache/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log "building guest $hash (kernel $kernel_pkg)"

# --- downloads (apt-get download writes into the current directory)
mkdir -p "$work/debs"
(cd "$work/debs" && apt-get download -q "$kernel_pkg" "${guest_pkgs[@]}" >/dev/null 2>&1) || {
  log "apt-get download failed; retrying after apt-get update"
  apt-get update -qq >&2
  (cd "$work/debs" && apt-get download -q "$kernel_pkg" "${guest_pkgs[@]}" >&2)
}

# --- kernel: the uncompressed ELF vmlinux (QEMU boots it directly through its PVH note; saves the
# decompression under emulation) and the few module trees the guest needs.
mkdir -p "$work/kernel"
dpkg-deb --fsys-tarfile "$work/debs/${kernel_pkg}_"*.deb |
  tar -x -C "$work/kernel" --wildcards './boot/vmlinuz-*' './lib/modules/*'
vmlinuz="$(echo "$work"/kernel/boot/vmlinuz-*)"
kver="${vmlinuz##*/vmlinuz-}"
# Debian's x86 kernels are xz-compressed: find the xz stream inside the bzImage and unpack it.
for offset in $(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | cut -d: -f1); do
  if tail -c +"$((offset + 1))" "$vmlinuz" | xz -dc 2>/dev/null >"$work/vmlinux.try"; then :; fi
  if [ "$(head -c 4 "$work/vmlinux.try" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
    mv "$work/vmlinux.try" "$work/vmlinux"
    break
  fi
done
[ -f "$work/vmlinux" ] || { log "no xz-compressed ELF found in $vmlinuz"; exit 1; }

# --- root file system
root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu/qemu,lib/x86_64-linux-gnu,lib64,etc/lvm,proc,sys,dev,run,tmp,job,var/lib,var/log}
ln -s ../run "$root/var/run"

# Modules and their dependencies (busybox depmod: this host has no kmod).
moddir="$work/kernel/lib/modules/$kver"
busybox depmod -b "$work/kernel" "$kver"
# dm-flakey, dm-delay, dm-log-writes and ext4 (a store file system on a faulty device): the fault
# suites load them on demand (the error target is built into dm-mod).
wanted=(virtio_pci virtio_blk 9pnet_virtio 9p dm-mod dm-snapshot dm-bufio loop nbd softdog
  dm-flakey dm-delay dm-log-writes ext4 crc32c_generic nfsd nfsv4)
declare -A seen=()
queue=()
for m in "${wanted[@]}"; do
  path="$(awk -F: -v m="/$m.ko" 'index($1, m) && substr($1, length($1) - length(m) + 1) == m {print $1; exit}' "$moddir/modules.dep")"
  [ -n "$path" ] || { log "module $m not found in $kver"; exit 1; }
  queue+=("$path")
done
while [ ${#queue[@]} -gt 0 ]; do
  path="${queue[0]}"
  queue=("${queue[@]:1}")
  [ -z "${seen[$path]:-}" ] || continue
  seen[$path]=1
  for dep in $(awk -F: -v p="$path" '$1 == p {print $2; exit}' "$moddir/modules.dep"); do queue+=("$dep"); done
done
for path in "${!seen[@]}"; do
  mkdir -p "$root/lib/modules/$kver/$(dirname "$path")"
  cp "$moddir/$path" "$root/lib/modules/$kver/$path"
done
cp "$moddir/modules.builtin" "$moddir/modules.order" "$root/lib/modules/$kver/"
busybox depmod -b "$root" "$kver"

# Guest-only packages, unpacked beside the root, then their files copied in.
mkdir -p "$work/extra"
for p in "${guest_pkgs[@]}"; do dpkg-deb -x "$work/debs/${p}_"*.deb "$work/extra"; done

copy_file() { # copy_file SRC DEST_IN_ROOT: keeps symlinks' targets as regular files
  mkdir -p "$root$(dirname "$2")"
  cp -L "$1" "$root$2"
}
binaries=(
  /sbin/lvm /sbin/dmsetup /usr/bin/qemu-img /usr/bin/qemu-io /usr/bin/qemu-nbd /usr/bin/qemu-system-x86_64
  /sbin/mke2fs /sbin/e2fsck /usr/bin/fallocate
  "$(command -v node)"
)
for b in "${binaries[@]}"; do copy_file "$b" "/usr/bin/$(basename "$b")"; done
copy_file /bin/busybox /bin/busybox
cp /usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so "$root/usr/lib/x86_64-linux-gnu/qemu/"
for b in sbin/lvmlockd sbin/lvmlockctl usr/sbin/sanlock usr/sbin/wdmd \
  usr/sbin/rpc.nfsd usr/sbin/rpc.mountd usr/sbin/exportfs sbin/mount.nfs; do copy_file "$work/extra/$b" "/usr/bin/${b##*/}"; done
cp -a "$work/extra/usr/lib/x86_64-linux-gnu/"*.so* "$root/lib/x86_64-linux-gnu/"
for tool in lvs vgs pvs lvcreate lvremove lvrename lvchange lvextend lvresize lvdisplay vgcreate vgremove \
  vgchange vgextend vgreduce vgdisplay vgscan pvcreate pvremove pvscan pvdisplay; do
  ln -s lvm "$root/usr/bin/$tool"
done
ln -s mke2fs "$root/usr/bin/mkfs.ext4"
for tool in mount.nfs4 umount.nfs umount.nfs4; do ln -s mount.nfs "$root/usr/bin/$tool"; done

# Shared libraries: every DT_NEEDED of every binary (ldd on the host, with the guest-only libraries
# on the search path), plus all of glibc's libraries (dlopen'ed NSS modules and friends).
libs="$(
  for b in "$root"/usr/bin/* "$root"/usr/lib/x86_64-linux-gnu/qemu/*.so; do
    [ -L "$b" ] && continue
    LD_LIBRARY_PATH="$work/extra/usr/lib/x86_64-linux-gnu" ldd "$b" 2>/dev/null | awk '$3 ~ /^\// {print $3}'
  done
  dpkg -L libc6 | grep -E '^/(usr/)?lib/x86_64-linux-gnu/[^/]*\.so[.0-9]*$'
)"
for lib in $(echo "$libs" | sort -u); do
  [ -e "$root/lib/x86_64-linux-gnu/$(basename "$lib")" ] || cp -L "$lib" "$root/lib/x86_64-linux-gnu/"
done
cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"

# Configuration.
install -m 0755 "$here/guest/init" "$root/init"
cp "$here/guest/lvm.conf" "$root/etc/lvm/lvm.conf"
printf '127.0.0.1 localhost lab\n::1 localhost ip6-localhost\n' >"$root/etc/hosts"
printf 'root:x:0:0:root:/root:/bin/sh\nsanlock:x:0:0:sanlock:/run:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nsanlock:x:0:\ndisk:x:6:\n' >"$root/etc/group"
printf 'hosts: files\npasswd: files\ngroup: files\n' >"$root/etc/nsswitch.conf"
echo lab >"$root/etc/hostname"
mkdir -p "$root/root" "$root/etc/lvm/archive" "$root/etc/lvm/backup"
# NFS server state (exportfs/mountd tables; v4recovery turns on the kernel's own client tracking, so
# clients can reclaim their state after the server restarts without nfsdcld).
mkdir -p "$root/var/lib/nfs/v4recovery" "$root/var/lib/nfs/rpc_pipefs"
: >"$root/etc/exports"
printf 'nobody:x:65534:65534:nobody:/:/bin/sh\n' >>"$root/etc/passwd"
printf 'nogroup:x:65534:\n' >>"$root/etc/group"

# Big files (node, qemu-system-x86_64, large libraries) stay out of the initramfs: copying a large
# initramfs costs the emulated CPU seconds at every boot. They live in opt/, which the guest mounts over
# 9p at /opt/lab, and the initramfs holds symlinks to them. busybox and the modules loaded at boot must
# be in the initramfs; the big modules loaded on demand by suites (ext4, nfsd, nfs, nfsv4, sunrpc) need not.
mkdir -p "$work/opt"
# QEMU's modules go along: a relocatable QEMU looks for them relative to its own (real) directory.
(cd "$root" && find . -type f \( -size +1M -o -path './usr/lib/x86_64-linux-gnu/qemu/*' \) \
  ! -path './bin/busybox' ! -path './lib/modules/*/modules.*' ! -path '*/drivers/*' ! -path '*/fs/9p/*' \
  ! -path '*/net/9p/*') | while read -r f; do
  f="${f#./}"
  mkdir -p "$work/opt/$(dirname "$f")"
  mv "$root/$f" "$work/opt/$f"
  ln -s "/opt/lab/$f" "$root/$f"
done
mkdir -p "$root/opt/lab"

# Uncompressed newc archive: unpacking it costs the emulated CPU far less than decompressing.
(cd "$root" && find . | LC_ALL=C sort | busybox cpio -o -H newc -R 0:0 2>/dev/null) >"$work/initramfs.cpio"

mkdir -p "$work/final"
mv "$work/vmlinux" "$work/initramfs.cpio" "$work/opt" "$work/final/"
{
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((($(date +%s%N) - started_ns) / 1000000)) ms"
  echo "kernel-release $kver"
  echo "$inputs"
} >"$work/final/manifest.txt"
# Another build of the same inputs may have finished first: then keep its result.
mv -T "$work/final" "$out" 2>/dev/null || [ -f "$out/manifest.txt" ] || { log "cannot move the guest to $out"; exit 1; }
# Stale guests (other inputs) go after an hour: a lab started just before may still be using one.
find "$cache" -maxdepth 1 -name 'guest-*' ! -name "guest-$hash" -mmin +60 -exec rm -rf {} +
log "guest ready in $out ($(du -sh "$out/initramfs.cpio" | cut -f1) initramfs)"
echo "$out"
