#!/bin/sh
# Records real lvm2 outputs into test/fixtures/lvm/ for the unit tests of src/host/lvm.ts.
# On the host it boots the lab guest and runs itself there: `bash test/lab/record-lvm-fixtures.sh`.
# Inside the guest (busybox sh, real device-mapper) it builds a scratch VG on /dev/vda and records
# stdout, stderr and the exit code of each lvm2 command the adapter runs, in the states it must read.
set -eu
if [ ! -e /dev/mapper/control ] || [ "$(hostname)" != lab ]; then
  here="$(cd "$(dirname "$0")" && pwd)"
  exec bash "$here/run.sh" --timeout 300 -- sh test/lab/record-lvm-fixtures.sh
fi

out="$PWD/test/fixtures/lvm"
mkdir -p "$out"
disk=/dev/vda
vg=fixvg
report='--reportformat json --units b --nosuffix'
lv_fields='-o lv_name,vg_name,lv_size,lv_attr,origin,lv_tags,data_percent,segtype'
vg_fields='-o vg_name,vg_size,vg_free,vg_extent_size,vg_tags,vg_attr'

# record NAME COMMAND...: NAME.out (stdout), NAME.err (stderr) and NAME.rc (exit code); JSON gets .json.
record() {
  name="$1"
  shift
  rc=0
  "$@" >"$out/$name.out" 2>"$out/$name.err" || rc=$?
  echo "$rc" >"$out/$name.rc"
  if [ "$(tr -d ' \n' <"$out/$name.out" | head -c 1)" = '{' ]; then mv "$out/$name.out" "$out/$name.json"; fi
  [ -s "$out/$name.err" ] || rm -f "$out/$name.err"
  [ ! -f "$out/$name.out" ] || [ -s "$out/$name.out" ] || rm -f "$out/$name.out"
  echo "recorded $name (exit $rc)"
}

rm -f "$out"/*.json "$out"/*.out "$out"/*.err "$out"/*.rc
record lvm-version lvm version
pvcreate -q "$disk"
vgcreate -q -s 4m "$vg" "$disk"
vgchange -q --addtag pool-a "$vg"
record vgs-empty vgs $vg_fields $report "$vg"
record vgs-missing vgs $vg_fields $report novg

lvcreate -q -y -L 12m -n vol-1 "$vg"
lvcreate -q -y -L 8m -n vol.2+tagged --addtag owner=agent --addtag kind:qcow2 "$vg"
lvcreate -q -y -L 8m -n inactive "$vg"
lvchange -an "$vg/inactive"
record vgs-used vgs $vg_fields $report "$vg"
record pvs-vg pvs -o pv_name $report --select "vg_name=\"$vg\""
record lvs-volumes lvs $lv_fields $report "$vg"
record lvs-select-one lvs $lv_fields $report --select 'lv_name="vol.2+tagged"' "$vg"
record lvs-select-missing lvs $lv_fields $report --select 'lv_name="nothere"' "$vg"
record lvs-missing-vg lvs $lv_fields $report --select 'lv_name="vol-1"' novg
record lvs-missing-lv lvs $lv_fields $report "$vg/nothere"

# An LV held open (as QEMU holds a running VM's disk).
exec 3<"/dev/$vg/vol-1"
record lvs-open lvs $lv_fields $report --select 'lv_name="vol-1"' "$vg"
record lvremove-open lvremove --yes "$vg/vol-1"
record lvrename-open lvrename "$vg" vol-1 vol-1-renamed
record lvs-renamed-open lvs $lv_fields $report "$vg"
exec 3<&-
lvrename -q "$vg" vol-1-renamed vol-1

# A copy-on-write snapshot, fresh, partly filled, and overflowed (invalid).
printf 'lab' | dd of="/dev/$vg/vol-1" bs=4096 seek=0 conv=fsync 2>/dev/null
lvcreate -q -y -s -L 4m -n vol-1-cow "$vg/vol-1"
record lvs-snapshot-fresh lvs $lv_fields $report "$vg"
dd if=/dev/zero of="/dev/$vg/vol-1" bs=1M count=1 conv=fsync 2>/dev/null
record lvs-snapshot-partial lvs $lv_fields $report --select 'lv_name="vol-1-cow"' "$vg"
dd if=/dev/urandom of="/dev/$vg/vol-1" bs=1M count=8 conv=fsync 2>/dev/null
record lvs-snapshot-invalid lvs $lv_fields $report "$vg"
record lvremove-snapshot lvremove --yes "$vg/vol-1-cow"

record lvcreate-no-space lvcreate --yes --size 1t --name huge "$vg"
record lvcreate-exists lvcreate --yes --size 4m --name vol-1 "$vg"
record lvchange-exclusive lvchange -aey "$vg/inactive"
record lvchange-off lvchange -an "$vg/inactive"

vgremove -q -f "$vg"
pvremove -q "$disk"
echo "fixtures written to $out"
