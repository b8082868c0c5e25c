// The live chain of a rotated volume on a file pool: `<active> → <base>`, both on primary storage.
// live-rotate puts a new layer on top (through libvirt) and later commits the old top down into the
// base, so the active layer's name moves between `<base>.lr-a`, `<base>.lr-b`... ("layer names").
// A sidecar record in the pool says which layer holds exactly the writes since which snapshot.
import { randomBytes } from 'node:crypto';
import { open, readFile, rename, stat, unlink } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { AgentError, HostCommandError } from '../errors/index.js';
import type { QemuImg } from '../host/qemu-img.js';
import { fsyncDirectory } from '../host/store.js';
import type { VolumeRef } from '../protocol/index.js';
import { pathExists } from './chain.js';
import type { SnapshotDeps } from './deps.js';
import { FileVolumeBackend, type VolumeBackend, volumeBackend } from './volumes.js';

/** Names an active layer of a rotated volume takes: `<base>.lr-a` ... (the first free one). */
const LAYER_SUFFIXES = ['a', 'b', 'c', 'd'].map((s) => `.lr-${s}`);
const LAYER_NAME = /\.lr-[a-d]$/;

/** The volume's base name (the file the volume was created as) for any of its layer names. */
export function baseNameOf(name: string): string {
  return name.replace(LAYER_NAME, '');
}

/** The volume's names in a pool: its base name first, then every layer name. */
export function familyNames(name: string): string[] {
  const base = baseNameOf(name);
  return [base, ...LAYER_SUFFIXES.map((s) => `${base}${s}`)];
}

export function isLayerName(name: string): boolean {
  return LAYER_NAME.test(name);
}

/** The first layer name of the volume that no file uses: the next active layer. */
export async function nextLayerName(dir: string, name: string): Promise<string> {
  for (const candidate of familyNames(name).slice(1)) {
    if (!(await pathExists(join(dir, candidate)))) return candidate;
  }
  throw new AgentError(
    'VOLUME_STATE_UNEXPECTED',
    `every layer name of ${baseNameOf(name)} is in use in ${dir}: earlier rotations left layers behind`,
    { details: { dir, names: familyNames(name) } },
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
  dir: string,
  name: string,
  vmSources: readonly string[] | null,
): Promise<string> {
  const names = familyNames(name);
  if (vmSources !== null) {
    for (const candidate of names) if (vmSources.includes(join(dir, candidate))) return candidate;
  }
  const present: string[] = [];
  for (const candidate of names) if (await pathExists(join(dir, candidate))) present.push(candidate);
  if (present.length <= 1) return present[0] ?? name;
  const backings = new Set<string>();
  for (const candidate of present) {
    const info = await qemuImg.info(join(dir, candidate), { forceShare: true });
    if (info.fullBackingFile !== null) backings.add(info.fullBackingFile);
  }
  const tops = present.filter((c) => !backings.has(join(dir, c)));
  const layerTops = tops.filter(isLayerName);
  if (layerTops.length === 1) return layerTops[0]!;
  if (layerTops.length === 0 && tops.length === 1) return tops[0]!;
  throw new AgentError(
    'VOLUME_STATE_UNEXPECTED',
    `cannot tell the active layer of volume ${baseNameOf(name)} in ${dir}: ${tops.join(', ')} are all tops`,
    { details: { dir, tops } },
  );
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

/** The snapshot whose writes the active layer holds exactly since, when the record still fits the file. */
export async function layerHoldsWritesSince(dir: string, activeName: string): Promise<string | null> {
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

/** Writes the record atomically (temp file, fsync, rename, fsync the directory). */
export async function writeLayerRecord(dir: string, layerName: string, since: string): Promise<void> {
  const st = await stat(join(dir, layerName));
  const record: LayerRecord = { layer: layerName, inode: st.ino, birthtimeMs: st.birthtimeMs, since };
  const target = recordPath(dir, layerName);
  const temp = join(dir, `.${basename(target)}.${randomBytes(4).toString('hex')}.tmp`);
  const file = await open(temp, 'w');
  try {
    await file.writeFile(`${JSON.stringify(record)}\n`);
    await file.sync();
  } finally {
    await file.close();
  }
  try {
    await rename(temp, target);
  } catch (error) {
    await unlink(temp).catch(() => undefined);
    throw error;
  }
  await fsyncDirectory(dir);
}

/** The command's volume reference, pointed at the layer a plan works on (journaled: recovery uses the same). */
export function volumeAt(volume: VolumeRef, activePath: string): VolumeRef {
  return volume.kind === 'file' ? { ...volume, file: basename(activePath) } : volume;
}

/**
 * The backend of the volume's active layer. A file volume that live rotation moved may be named by
 * any of its names (base or layer names): the running VM's disk, else the headers, say which is on top.
 */
export async function activeLayerBackend(
  volume: VolumeRef,
  vm: string | null,
  deps: SnapshotDeps,
): Promise<VolumeBackend> {
  const backend = await volumeBackend(volume, deps);
  if (!(backend instanceof FileVolumeBackend) || volume.kind !== 'file') return backend;
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
  const name = await resolveActiveLayer(deps.qemuImg, backend.dir, backend.activeName, sources);
  return name === backend.activeName ? backend : volumeBackend({ ...volume, file: name }, deps);
}
