// The live chain of a rotated volume: `<active> → <base>`, both on primary storage (files of a file
// pool, or LVs of one VG). live-rotate puts a new layer on top (through libvirt) and later commits the
// old top down into the base, so the active layer's name moves between `<base>.lr-a`, `<base>.lr-b`...
// ("layer names"). A record says which layer holds exactly the writes since which snapshot: a sidecar
// file in a file pool, a tag on the layer's LV on LVM.
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { writeFileAtomic } from '../atomic-file.js';
import { AgentError, HostCommandError } from '../errors/index.js';
import type { QemuImg } from '../host/qemu-img.js';
import { baseNameOf, familyNames, isLayerName, type VolumeRef } from '../protocol/index.js';
import { pathExists } from './chain.js';
import type { SnapshotDeps } from './deps.js';
import { FileVolumeBackend, LvmVolumeBackend, type VolumeBackend, volumeBackend } from './volumes.js';

/** The first layer name of the volume that no file or LV uses: the next active layer. */
export async function nextLayerName(
  pool: Pick<VolumeBackend, 'exists' | 'pathOf'>,
  name: string,
): Promise<string> {
  for (const candidate of familyNames(name).slice(1)) {
    if (!(await pool.exists(candidate))) return candidate;
  }
  const where = dirname(pool.pathOf(name));
  throw new AgentError(
    'VOLUME_STATE_UNEXPECTED',
    `every layer name of ${baseNameOf(name)} is in use in ${where}: earlier rotations left layers behind`,
    { details: { dir: where, names: familyNames(name) } },
  );
}

/**
 * The volume's active layer, for a command that may name the volume by any of its names (the
 * management plane may not have applied the path of the last result yet). A running VM's own disk
 * source decides when it is one of the names; otherwise the headers: the top is the layer no other
 * layer of the volume backs onto (a layer name before the base name).
 */
export async function resolveActiveLayer(
  qemuImg: QemuImg,
  pool: Pick<VolumeBackend, 'exists' | 'pathOf'>,
  name: string,
  vmSources: readonly string[] | null,
): Promise<string> {
  const names = familyNames(name);
  if (vmSources !== null) {
    for (const candidate of names) if (vmSources.includes(pool.pathOf(candidate))) return candidate;
  }
  const present: string[] = [];
  for (const candidate of names) if (await pool.exists(candidate)) present.push(candidate);
  if (present.length <= 1) return present[0] ?? name;
  const backings = new Set<string>();
  for (const candidate of present) {
    const info = await qemuImg.info(pool.pathOf(candidate), { forceShare: true });
    if (info.fullBackingFile !== null) backings.add(info.fullBackingFile);
  }
  const dir = dirname(pool.pathOf(name));
  const tops = present.filter((c) => !backings.has(pool.pathOf(c)));
  const layerTops = tops.filter(isLayerName);
  if (layerTops.length === 1) return layerTops[0]!;
  if (layerTops.length === 0 && tops.length === 1) return tops[0]!;
  throw new AgentError(
    'VOLUME_STATE_UNEXPECTED',
    `cannot tell the active layer of volume ${baseNameOf(name)} in ${dir}: ${tops.join(', ')} are all tops`,
    { details: { dir, tops } },
  );
}

/** The chain's layers (paths, top first) that are this volume's own files or LVs, down to its base. */
export function localLayers(
  backend: Pick<VolumeBackend, 'activeName' | 'pathOf'>,
  chain: string[],
): string[] {
  const own = new Set(familyNames(backend.activeName).map((n) => backend.pathOf(n)));
  const layers: string[] = [];
  for (const path of chain) {
    if (!own.has(path)) break;
    layers.push(path);
  }
  return layers;
}

/** What the sidecar says: `layer` (this very file) holds exactly the guest writes since `since`. */
export interface LayerRecord {
  layer: string;
  /** The layer file's identity: a file recreated under the same name is another layer. */
  inode: number;
  birthtimeMs: number;
  /** Path of the snapshot taken when the layer became the top. */
  since: string;
}

function recordPath(dir: string, name: string): string {
  return join(dir, `.${baseNameOf(name)}.clvm-live.json`);
}

/** The sidecar's form of the record: whether it still fits the file (`since` when it does). */
async function fileRecordSince(dir: string, activeName: string): Promise<string | null> {
  let record: LayerRecord;
  try {
    record = JSON.parse(await readFile(recordPath(dir, activeName), 'utf8')) as LayerRecord;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
  if (record.layer !== activeName) return null;
  const st = await stat(join(dir, activeName)).catch(() => null);
  if (st === null || st.ino !== record.inode || st.birthtimeMs !== record.birthtimeMs) return null;
  return record.since;
}

/** Writes the sidecar atomically (temp file, fsync, rename, fsync the directory). */
async function writeFileRecord(dir: string, layerName: string, since: string): Promise<void> {
  const st = await stat(join(dir, layerName));
  const record: LayerRecord = { layer: layerName, inode: st.ino, birthtimeMs: st.birthtimeMs, since };
  await writeFileAtomic(recordPath(dir, layerName), `${JSON.stringify(record)}\n`);
}

// On LVM the record is a tag on the layer's LV: it lives in the VG metadata (every host sees it),
// goes away with the LV, and an LV made again under the same name starts without it. A snapshot
// path may hold characters tags may not, so the tag carries a digest of it.
const LVM_RECORD_PREFIX = 'clvm-live-since=';
function lvmRecordTag(since: string): string {
  return `${LVM_RECORD_PREFIX}${createHash('sha256').update(since).digest('hex').slice(0, 40)}`;
}

/** Whether the active layer holds exactly the guest writes since snapshot `since` (its record says so and still fits). */
export async function layerHoldsWritesSince(
  backend: VolumeBackend,
  activeName: string,
  since: string,
): Promise<boolean> {
  if (backend instanceof FileVolumeBackend) return (await fileRecordSince(backend.dir, activeName)) === since;
  if (!(backend instanceof LvmVolumeBackend) || !isLayerName(activeName)) return false;
  const lv = await backend.volume(activeName);
  return lv?.tags.includes(lvmRecordTag(since)) ?? false;
}

/** Records that `layerName` holds exactly the writes since snapshot `since` (replacing its earlier record). */
export async function writeLayerRecord(
  backend: VolumeBackend,
  layerName: string,
  since: string,
): Promise<void> {
  if (backend instanceof FileVolumeBackend) return writeFileRecord(backend.dir, layerName, since);
  if (!(backend instanceof LvmVolumeBackend)) throw new Error(`no layer record for a ${backend.kind} pool`);
  const lv = await backend.volume(layerName);
  if (lv === undefined)
    throw new AgentError('VOLUME_NOT_FOUND', `LV ${backend.pathOf(layerName)} does not exist`);
  const tag = lvmRecordTag(since);
  if (lv.tags.includes(tag)) return;
  const stale = lv.tags.filter((t) => t.startsWith(LVM_RECORD_PREFIX));
  await backend.retag(layerName, { add: [tag], remove: stale }); // one lvchange: atomic
}

// A layer live-rotate merged into the base, kept because the base's flush failed afterwards (the
// base may lack writes only that layer holds): marked so that no rotation, recovery or operator
// script takes it for a leftover, and snapshot.create refuses the volume until it is repaired.
// On LVM a tag on the layer's LV (goes away with the LV: removing the layer once repaired clears
// it); in a file pool a sidecar `.<layer>.clvm-unmerged.json` next to it.
const LVM_UNMERGED_TAG = 'clvm-unmerged';

function unmergedPath(dir: string, layerName: string): string {
  return join(dir, `.${layerName}.clvm-unmerged.json`);
}

/** Marks `layerName` as holding writes its base may lack (idempotent). */
export async function markUnmerged(backend: VolumeBackend, layerName: string, base: string): Promise<void> {
  if (backend instanceof FileVolumeBackend) {
    const record = { layer: layerName, base, keptAt: new Date().toISOString() };
    return writeFileAtomic(unmergedPath(backend.dir, layerName), `${JSON.stringify(record)}\n`);
  }
  if (!(backend instanceof LvmVolumeBackend)) throw new Error(`no layer mark for a ${backend.kind} pool`);
  const lv = await backend.volume(layerName);
  if (lv === undefined || lv.tags.includes(LVM_UNMERGED_TAG)) return;
  await backend.retag(layerName, { add: [LVM_UNMERGED_TAG], remove: [] });
}

/** The volume's layers (paths) marked by markUnmerged that still exist. */
export async function unmergedLayers(backend: VolumeBackend): Promise<string[]> {
  const layers = familyNames(backend.activeName).filter(isLayerName);
  const marked: string[] = [];
  if (backend instanceof FileVolumeBackend) {
    for (const name of layers) {
      if ((await pathExists(unmergedPath(backend.dir, name))) && (await backend.exists(name)))
        marked.push(backend.pathOf(name));
    }
    return marked;
  }
  if (!(backend instanceof LvmVolumeBackend)) return [];
  for (const lv of await backend.volumes()) {
    if (layers.includes(lv.name) && lv.tags.includes(LVM_UNMERGED_TAG)) marked.push(backend.pathOf(lv.name));
  }
  return marked;
}

/**
 * Refuses a volume with a layer markUnmerged kept: its base may lack writes (what the guest reads
 * is then wrong), and a snapshot now would preserve that. Repair (VM stopped): commit the layer
 * into its base, check the base, remove the layer (docs/strategies.md, live-rotate).
 */
export async function refuseUnmergedLayers(backend: VolumeBackend): Promise<void> {
  const kept = await unmergedLayers(backend);
  if (kept.length === 0) return;
  throw new AgentError(
    'LAYER_MERGE_NOT_DURABLE',
    `volume ${baseNameOf(backend.activeName)} has layer(s) ${kept.join(', ')} that an earlier live rotation ` +
      'merged into the base without the merge reaching the disk: the base may lack writes only they hold. ' +
      'Repair first (VM stopped: qemu-img commit each into its base, qemu-img check the base, remove the layer)',
    { details: { keptLayers: kept, base: backend.pathOf(baseNameOf(backend.activeName)) } },
  );
}

/** The command's volume reference, pointed at the layer a plan works on (journaled: recovery uses the same). */
export function volumeAt(volume: VolumeRef, activePath: string): VolumeRef {
  return volume.kind === 'file'
    ? { ...volume, file: basename(activePath) }
    : { ...volume, lv: basename(activePath) };
}

/** activeLayerBackend, for a command that needs the layer to exist (VOLUME_NOT_FOUND otherwise). */
export async function existingActiveLayer(
  volume: VolumeRef,
  vm: string | null,
  deps: SnapshotDeps,
): Promise<VolumeBackend> {
  const backend = await activeLayerBackend(volume, vm, deps);
  if (!(await pathExists(backend.activePath))) {
    throw new AgentError('VOLUME_NOT_FOUND', `volume ${backend.activePath} does not exist`, {
      details: { path: backend.activePath },
    });
  }
  return backend;
}

/**
 * The backend of the volume's active layer. A volume that live rotation moved may be named by any
 * of its names (base or layer names): the running VM's disk, else the headers, say which is on top.
 */
export async function activeLayerBackend(
  volume: VolumeRef,
  vm: string | null,
  deps: SnapshotDeps,
): Promise<VolumeBackend> {
  const backend = await volumeBackend(volume, deps);
  let sources: string[] | null = null;
  if (vm !== null) {
    try {
      if ((await deps.libvirt.domainState(vm)).state !== 'shut off') {
        sources = (await deps.libvirt.disks(vm)).map((d) => d.source);
      }
    } catch (error) {
      // inspectVm reports an unknown domain with its own error.
      if (!(error instanceof HostCommandError && error.kind === 'not-found')) throw error;
    }
  }
  const name = await resolveActiveLayer(deps.qemuImg, backend, backend.activeName, sources);
  return name === backend.activeName ? backend : volumeBackend(volumeAt(volume, backend.pathOf(name)), deps);
}
