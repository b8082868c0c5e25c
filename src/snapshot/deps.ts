import { type BlockGraph, QemuBlockGraph } from '../host/block-graph.js';
import type { FilePool } from '../host/file-pool.js';
import type { Libvirt } from '../host/libvirt.js';
import type { Lvm } from '../host/lvm.js';
import type { QemuImg } from '../host/qemu-img.js';
import type { SnapshotStore } from '../host/store.js';
import type { ExportBandwidth } from './export-bandwidth.js';

/** The adapters the snapshot engine composes; plain objects, so lab suites can build them without the agent. */
export interface SnapshotDeps {
  qemuImg: QemuImg;
  store: SnapshotStore;
  filePool: FilePool;
  lvm: Lvm;
  libvirt: Libvirt;
  /** The running disks' block graph (default: QemuBlockGraph over `libvirt`; unit tests fake it). */
  blockGraph?: BlockGraph;
  /** live-rotate runs unless 'disabled' (config snapshot.liveRotate; default 'enabled'). */
  liveRotate?: 'enabled' | 'disabled';
  /** How often the CoW fill level is read during an lvm-cow export (default 1000 ms). */
  cowPollMs?: number;
  /** The host's export bandwidth (config limits.exportBytesPerSecond); absent: exports are not limited. */
  bandwidth?: ExportBandwidth;
}

/** The block-graph adapter of these deps. */
export function blockGraphOf(deps: SnapshotDeps): BlockGraph {
  return deps.blockGraph ?? new QemuBlockGraph(deps.libvirt);
}
