#!/usr/bin/env bash
# Runs one shell command as root inside the lab guest (real device-mapper and LVM), from the project
# folder, which the guest sees over 9p at the same path. Streams the command's output and exits with
# its exit code.
#
#   bash test/lab/run.sh [--timeout SECONDS] [--disks N] [--disk-size SIZE] [--disk-dir DIR]
#                        [--cut-after-ms MS [--cut-at-step STEP]] [--] COMMAND...
#
# --disk-dir: the disks are DIR/diskN.raw, created when missing and kept (the power-cut matrix boots
# again on the same disks). --cut-after-ms: MS milliseconds after the command creates /job/armed,
# the guest's QEMU gets SIGKILL (the hypervisor loses power; the guest's page cache is gone): exit 137.
# --cut-at-step STEP: the MS count from the moment the armed job names STEP in /job/steps (a line
# each step appends as it starts) instead; no cut if the job never reaches it.
#
# The guest gets N sparse raw disks (/dev/vda, /dev/vdb...; default 4 of 4G each, they cost nothing until
# written). A boot whose job has not started within LAB_BOOT_WATCHDOG seconds (45) is killed and retried
# (3 attempts). A command still running after --timeout seconds (default 900) is killed: exit code 124.
# A guest that died without an exit code: 125. Every temporary file is removed on exit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
project="$(cd "$here/../.." && pwd)"

timeout_s=900
disks=4
disk_size=4G
disk_dir=
cut_after_ms=
cut_step=
while [ $# -gt 0 ]; do
  case "$1" in
  --disk-dir) disk_dir="$2"; shift 2 ;;
  --cut-after-ms) cut_after_ms="$2"; shift 2 ;;
  --cut-at-step) cut_step="$2"; shift 2 ;;
  --timeout) timeout_s="$2"; shift 2 ;;
  --disks) disks="$2"; shift 2 ;;
  --disk-size) disk_size="$2"; shift 2 ;;
  --) shift; break ;;
  -*) echo "lab: unknown option $1" >&2; exit 2 ;;
  *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--timeout S] [--disks N] [--disk-size SIZE] [--] COMMAND..." >&2; exit 2; }
watchdog_s="${LAB_BOOT_WATCHDOG:-45}"
attempts="${LAB_BOOT_ATTEMPTS:-3}"

command -v qemu-system-x86_64 >/dev/null || { echo "lab: qemu-system-x86_64 is missing (run scripts/ensure-host.sh)" >&2; exit 125; }
guest="$(bash "$here/build-guest.sh")"

# Runs killed with SIGKILL cannot clean up: remove what they left (their QEMU, their files) now.
for stale in "${TMPDIR:-/tmp}"/clvm-lab.*; do
  [ -f "$stale/runner.pid" ] || continue
  kill -0 "$(cat "$stale/runner.pid")" 2>/dev/null && continue
  if [ -f "$stale/qemu.pid" ]; then kill -9 "$(cat "$stale/qemu.pid")" 2>/dev/null || true; fi
  rm -rf "$stale"
done
tmp="$(mktemp -d "${TMPDIR:-/tmp}/clvm-lab.XXXXXX")"
echo $$ >"$tmp/runner.pid"
qemu_pid=
tail_pid=
cleanup() {
  [ -z "$tail_pid" ] || kill "$tail_pid" 2>/dev/null || true
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
    kill "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

job="$tmp/job"
mkdir -p "$job"
printf '%s\n' "$*" >"$job/job.sh"
drive_args=()
disk_dir="${disk_dir:-$tmp}"
mkdir -p "$disk_dir"
for i in $(seq 1 "$disks"); do
  [ -f "$disk_dir/disk$i.raw" ] || truncate -s "$disk_size" "$disk_dir/disk$i.raw"
  drive_args+=(-drive "file=$disk_dir/disk$i.raw,if=none,id=disk$i,format=raw,cache=unsafe,discard=unmap,aio=threads"
    -device "virtio-blk-pci,drive=disk$i,serial=labdisk$i")
done

now_ms() { echo $(($(date +%s%N) / 1000000)); }
boot() {
  rm -f "$job/started" "$job/rc"
  : >"$job/output"
  : >"$tmp/console.log"
  # The ELF vmlinux boots directly (PVH entry): no decompression under emulation.
  qemu-system-x86_64 -M pc -accel tcg,thread=multi -cpu max -smp 2 -m 4096 \
    -nodefaults -no-user-config -display none -no-reboot \
    -kernel "$guest/vmlinux" -initrd "$guest/initramfs.cpio" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3 no_timer_check ${LAB_KERNEL_ARGS:-} lab_project=$project" \
    -serial "file:$tmp/console.log" \
    -fsdev "local,id=opt,path=$guest/opt,security_model=none,readonly=on" -device virtio-9p-pci,fsdev=opt,mount_tag=opt \
    -fsdev "local,id=job,path=$job,security_model=none" -device virtio-9p-pci,fsdev=job,mount_tag=job \
    -fsdev "local,id=project,path=$project,security_model=none" -device virtio-9p-pci,fsdev=project,mount_tag=project \
    "${drive_args[@]}" >"$tmp/qemu.log" 2>&1 &
  qemu_pid=$!
  echo "$qemu_pid" >"$tmp/qemu.pid"
}

booted=
for attempt in $(seq 1 "$attempts"); do
  started_ms=$(now_ms)
  boot
  while kill -0 "$qemu_pid" 2>/dev/null && [ ! -s "$job/started" ]; do
    if [ $(($(now_ms) - started_ms)) -gt $((watchdog_s * 1000)) ]; then break; fi
    sleep 0.1
  done
  if [ -s "$job/started" ]; then
    booted=1
    [ -z "${LAB_CONSOLE:-}" ] || cat "$tmp/console.log" >&2
    echo "lab: guest booted in $(($(now_ms) - started_ms)) ms (attempt $attempt)" >&2
    break
  fi
  echo "lab: boot attempt $attempt did not start the job within ${watchdog_s}s; console:" >&2
  tail -n 20 "$tmp/console.log" "$tmp/qemu.log" >&2 || true
  kill "$qemu_pid" 2>/dev/null || true
  wait "$qemu_pid" 2>/dev/null || true
  qemu_pid=
done
[ -n "$booted" ] || { echo "lab: the guest did not boot in $attempts attempts" >&2; exit 125; }

tail -n +1 -f "$job/output" 2>/dev/null &
tail_pid=$!
deadline_ms=$(($(now_ms) + timeout_s * 1000))
cut_at_ms=
while kill -0 "$qemu_pid" 2>/dev/null; do
  if [ -n "$cut_after_ms" ] && [ -z "$cut_at_ms" ] && [ -e "$job/armed" ] &&
    { [ -z "$cut_step" ] || grep -qxF -- "$cut_step" "$job/steps" 2>/dev/null; }; then
    cut_at_ms=$(($(now_ms) + cut_after_ms))
  fi
  if [ -n "$cut_at_ms" ] && [ "$(now_ms)" -ge "$cut_at_ms" ]; then
    kill -9 "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
    qemu_pid=
    sleep 0.3 # let tail print the last lines
    echo "lab: power cut (SIGKILL of the guest's QEMU) ${cut_after_ms} ms after ${cut_step:-the job armed it}" >&2
    exit 137
  fi
  if [ "$(now_ms)" -gt "$deadline_ms" ]; then
    echo "lab: the command did not finish within ${timeout_s}s; killing the guest" >&2
    kill "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
    qemu_pid=
    exit 124
  fi
  # Polled often once a cut is near: a cut time, or an armed job whose step is awaited.
  if [ -n "$cut_at_ms" ] || { [ -n "$cut_step" ] && [ -e "$job/armed" ]; }; then sleep 0.02; else sleep 0.2; fi
done
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=
sleep 0.3 # let tail print the last lines
kill "$tail_pid" 2>/dev/null || true
wait "$tail_pid" 2>/dev/null || true
tail_pid=
if [ ! -s "$job/rc" ]; then
  echo "lab: the guest stopped without an exit code; console:" >&2
  tail -n 40 "$tmp/console.log" "$tmp/qemu.log" >&2 || true
  exit 125
fi
exit "$(cat "$job/rc")"
