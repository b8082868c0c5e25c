// Runs the snapshot engine's handlers directly (no broker) against real qemu-img, libvirt and
// files: a file-backed StepJournal (fsynced like the job layer's), a JobContext, temp roots.
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runTool } from '../../src/host/exec.js';
import { FilePool } from '../../src/host/file-pool.js';
import { Libvirt } from '../../src/host/libvirt.js';
import { Lvm } from '../../src/host/lvm.js';
import { QemuImg } from '../../src/host/qemu-img.js';
import { SnapshotStore } from '../../src/host/store.js';
import type { JobContext, ProgressUpdate, StepJournal } from '../../src/jobs/types.js';
import { silentLogger } from '../../src/observability/logger.js';
import type { SnapshotCreateResult } from '../../src/protocol/index.js';
import { type Command, type CommandType, commandSchema } from '../../src/protocol/index.js';
import { createSnapshot, type SnapshotDeps } from '../../src/snapshot/index.js';
import { Failpoints } from './failpoints.js';
import { LIBVIRT_URI } from './libvirt-fixtures.js';
import { mountXfs } from './xfs.js';

/** The job layer's journal, in memory (the engine only needs read/merge). */
export class MemoryJournal implements StepJournal {
  private facts: Record<string, unknown> = {};
  read<T extends Record<string, unknown>>(): T {
    return structuredClone(this.facts) as T;
  }
  async write(patch: Record<string, unknown>): Promise<void> {
    this.facts = { ...this.facts, ...structuredClone(patch) };
  }
}

/** A StepJournal in a JSON file: every write replaces the file and fsyncs, as the job layer's does. */
export class FileStepJournal implements StepJournal {
  private facts: Record<string, unknown> = {};
  writes = 0;

  constructor(readonly path: string) {}

  static async load(path: string): Promise<FileStepJournal> {
    const journal = new FileStepJournal(path);
    journal.facts = JSON.parse(await readFile(path, 'utf8').catch(() => '{}'));
    return journal;
  }

  read<T extends Record<string, unknown>>(): T {
    return structuredClone(this.facts) as T;
  }

  async write(patch: Record<string, unknown>): Promise<void> {
    this.facts = { ...this.facts, ...structuredClone(patch) };
    this.writes++;
    await writeFile(this.path, JSON.stringify(this.facts), { flush: true });
  }
}

export interface Harness {
  base: string;
  poolRoot: string;
  pool: string;
  storeRoot: string;
  deps: SnapshotDeps;
  cleanup(): Promise<void>;
}

/** Temp pool and store roots (the pool on a loop-mounted XFS when `reflink`), and the real adapters. */
export async function makeHarness(
  label: string,
  opts: {
    reflink?: boolean;
    failpoints?: string;
    xfsBytes?: number;
    liveRotate?: 'enabled' | 'disabled';
  } = {},
): Promise<Harness> {
  const base = await mkdtemp(join(tmpdir(), `clvmt-${label}-${process.pid}-`));
  const xfs = opts.reflink ? await mountXfs(`clvmt-${label}-${process.pid}`, opts.xfsBytes) : null;
  const poolRoot = xfs ? xfs.mountPoint : join(base, 'pools');
  const storeRoot = join(base, 'store');
  const pool = join(poolRoot, 'pool1');
  await mkdir(pool, { recursive: true });
  await mkdir(storeRoot, { recursive: true });
  const failpoints = Failpoints.parse(opts.failpoints);
  const qemuImg = new QemuImg({
    timeoutMs: 60_000,
    exportTimeoutMs: 300_000,
    run: failpoints.wrapRunner(runTool),
  });
  const deps: SnapshotDeps = {
    qemuImg,
    store: new SnapshotStore({ roots: [storeRoot], qemuImg }),
    filePool: new FilePool({ roots: [poolRoot], qemuImg, timeoutMs: 60_000 }),
    lvm: new Lvm({ timeoutMs: 60_000 }),
    libvirt: new Libvirt({ uri: LIBVIRT_URI, timeoutMs: 60_000 }),
    cowPollMs: 200,
    // The engine suites exercise the rotation itself; the agent's default keeps it disabled.
    liveRotate: opts.liveRotate ?? 'enabled',
  };
  return {
    base,
    poolRoot,
    pool,
    storeRoot,
    deps,
    cleanup: async () => {
      await xfs?.cleanup();
      await rm(base, { recursive: true, force: true });
    },
  };
}

/** A parsed command (defaults applied) with a unique id. */
export function command<T extends CommandType>(
  type: T,
  params: unknown,
  id?: string,
): Extract<Command, { type: T }> {
  return commandSchema.parse({ id: id ?? `job-${randomBytes(6).toString('hex')}`, type, params }) as Extract<
    Command,
    { type: T }
  >;
}

/** A JobContext for one run of a handler; `progress` updates are collected. */
export function jobContext<T extends CommandType>(
  cmd: Extract<Command, { type: T }>,
  journal: StepJournal,
  opts: { recovering?: boolean; signal?: AbortSignal; onProgress?: (u: ProgressUpdate) => void } = {},
): JobContext<T> & { updates: ProgressUpdate[] } {
  const updates: ProgressUpdate[] = [];
  return {
    jobId: cmd.id,
    command: cmd,
    logger: silentLogger(),
    signal: opts.signal ?? new AbortController().signal,
    progress: (u) => {
      updates.push(u);
      opts.onProgress?.(u);
    },
    journal,
    recovering: opts.recovering ?? false,
    updates,
  };
}

export type CreateCommand = Extract<Command, { type: 'snapshot.create' }>;

/** snapshot.create of file volume `file` in the harness pool, into store dir `dir` (default: the file's name). */
export function fileSnapshotCommand(
  h: Harness,
  p: {
    file: string;
    vm: string | null;
    parents: readonly string[];
    snapshot: string;
    dir?: string;
    options?: Record<string, unknown>;
  },
): CreateCommand {
  return command('snapshot.create', {
    volume: { kind: 'file', pool: h.pool, file: p.file },
    vm: p.vm,
    store: { root: h.storeRoot, dir: p.dir ?? p.file },
    parents: p.parents,
    snapshot: p.snapshot,
    options: p.options ?? {},
  });
}

/** Runs snapshot.create directly (no broker) with its own fsynced journal file in the harness. */
export function runCreate(
  h: Harness,
  cmd: CreateCommand,
  deps: SnapshotDeps = h.deps,
): Promise<SnapshotCreateResult> {
  return createSnapshot(jobContext(cmd, new FileStepJournal(join(h.base, `${cmd.id}.json`))), deps);
}
