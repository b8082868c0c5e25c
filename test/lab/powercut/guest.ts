// The power-cut matrix, inside the lab guest (run by test/lab/powercut/run.ts, one boot per cut).
//
//   guest.ts setup [MS]         pool, store and state disks from nothing; one uncut job per strategy
//                               (timings), or none when MS is given (MS is then every strategy's timing)
//   guest.ts check              start-up recovery and the checks only (the last boot)
//   guest.ts cycle <strategy>   start-up recovery of whatever the last cut interrupted, the checks, then
//                               guest writes + one snapshot job that the host cuts at a random moment
//
// Disks (kept across boots by run.sh --disk-dir): /dev/vda the LVM pool (VG pcvg, volume LV `vol`,
// QCOW2 32 MiB), /dev/vdb the store (ext4, journaled: what a store's file system does in a power
// loss), /dev/vdc the agent's state (ext4: the real job journal, src/jobs/journal.ts, and this
// program's model: which writes were acknowledged, which snapshots were published, their references).
//
// Lines on stdout for the host: `POWERCUT-STEP <step>` as each step starts (stdout reaches the host
// at once over the cache=none job share, so the last one before a cut names the step it hit),
// `POWERCUT-CHECK <json>` after recovery, `POWERCUT-TIMING <json>` in setup.
// Oracles: qemu-img check, qemu-img compare against raw references written with qemu-io.
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { AgentError } from '../../../src/errors/index.js';
import { FilePool } from '../../../src/host/file-pool.js';
import { Libvirt } from '../../../src/host/libvirt.js';
import { Lvm } from '../../../src/host/lvm.js';
import { QemuImg } from '../../../src/host/qemu-img.js';
import { SnapshotStore } from '../../../src/host/store.js';
import { writeFileAtomic } from '../../../src/jobs/atomic-file.js';
import { JobJournal, type JobRecord } from '../../../src/jobs/journal.js';
import type { StepJournal } from '../../../src/jobs/types.js';
import { silentLogger } from '../../../src/observability/logger.js';
import { type Command, commandSchema } from '../../../src/protocol/index.js';
import { createSnapshot, type EngineRecord, type SnapshotDeps } from '../../../src/snapshot/index.js';

const MiB = 1024 * 1024;
const VIRTUAL = 32 * MiB;
const VG = 'pcvg';
const LV = 'vol';
const VOLUME = `/dev/${VG}/${LV}`;
const STORE = '/mnt/store';
const STATE = '/mnt/state';
const STORE_DIR = join(STORE, LV);
const REFS = join(STATE, 'refs');
const MODEL = join(STATE, 'model.json');
type Strategy = 'offline' | 'lvm-cow';

/** What the guest knows for sure (written atomically before each fact can be relied on). */
interface Model {
  /** Published snapshots the caller knows, oldest first (each has refs/<name>.raw). */
  parents: string[];
  /** Snapshots published by jobs that failed past their point of no return. */
  orphans: string[];
  /** The job that may have been cut: its id and snapshot name. */
  pending: { id: string; name: string; strategy: Strategy } | null;
  counter: number;
  round: number;
}

const lvm = new Lvm({ timeoutMs: 120_000 });
const qemuImg = new QemuImg({ timeoutMs: 120_000, exportTimeoutMs: 300_000 });
const deps: SnapshotDeps = {
  qemuImg,
  store: new SnapshotStore({ roots: [STORE], qemuImg }),
  filePool: new FilePool({ roots: [STATE], qemuImg, timeoutMs: 60_000 }),
  lvm,
  libvirt: new Libvirt({ uri: 'qemu:///system', timeoutMs: 60_000 }), // no VM: never reached
  cowPollMs: 500,
};

async function run(file: string, args: string[], okExitCodes = [0]): Promise<string> {
  const r = await execa(file, args, {
    reject: false,
    timeout: 300_000,
    env: { LVM_SUPPRESS_FD_WARNINGS: '1' },
  });
  if (!okExitCodes.includes(r.exitCode ?? -1)) {
    throw new Error(`${file} ${args.join(' ')} exited ${r.exitCode}: ${r.stderr}${r.stdout}`);
  }
  return String(r.stdout);
}

function fsyncPath(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

async function saveModel(model: Model): Promise<void> {
  await writeFileAtomic(MODEL, `${JSON.stringify(model)}\n`);
}

function loadModel(): Model {
  return JSON.parse(readFileSync(MODEL, 'utf8')) as Model;
}

/** The reference of what the guest has written and had acknowledged (raw, sparse). */
const LIVE = join(REFS, 'live.raw');

/** The guest writes 1-3 extents and flushes (qemu-io exits after its flush); then the reference gets them. */
async function guestWrites(model: Model): Promise<void> {
  model.round++;
  const writes: Array<{ pattern: number; offset: number; length: number }> = [];
  let seed = (model.round * 2654435761) >>> 0;
  const next = () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed;
  };
  for (let i = 0, n = 1 + (next() % 3); i < n; i++) {
    const length = 64 * 1024 * (1 + (next() % 16));
    const offset = Math.floor((next() % (VIRTUAL - length)) / (64 * 1024)) * 64 * 1024;
    writes.push({ pattern: 1 + ((model.round * 7 + i * 13) % 254), offset, length });
  }
  const cmds = (w: typeof writes) =>
    w.flatMap((x) => ['-c', `write -q -P ${x.pattern} ${x.offset} ${x.length}`]);
  await run('qemu-io', ['-f', 'qcow2', ...cmds(writes), '-c', 'flush', VOLUME]);
  // Acknowledged: the reference follows, durably, before anything can depend on it.
  await run('qemu-io', ['-f', 'raw', ...cmds(writes), '-c', 'flush', LIVE]);
  fsyncPath(LIVE);
}

async function differs(image: string, raw: string): Promise<string | null> {
  const r = await execa('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'raw', image, raw], {
    reject: false,
    timeout: 300_000,
  });
  if (r.exitCode === 0) return null;
  return `${image} vs ${raw}: ${String(r.stdout).trim()} ${String(r.stderr).trim()}`.trim();
}

async function checkOk(image: string): Promise<string | null> {
  const r = await execa('qemu-img', ['check', '-U', '-f', 'qcow2', image], {
    reject: false,
    timeout: 300_000,
  });
  return r.exitCode === 0 ? null : `qemu-img check ${image} exited ${r.exitCode}: ${String(r.stdout).trim()}`;
}

async function loadModules(): Promise<void> {
  await run('modprobe', ['-a', 'ext4', 'crc32c_generic']);
}

async function bringUp(): Promise<void> {
  await loadModules();
  await run('vgchange', ['-q', '-ay', VG]);
  await run('mount', ['-t', 'ext4', '/dev/vdb', STORE]);
  await run('mount', ['-t', 'ext4', '/dev/vdc', STATE]);
}

function command(id: string, name: string, strategy: Strategy, parents: string[]): Command {
  return commandSchema.parse({
    id,
    type: 'snapshot.create',
    params: {
      volume: { kind: 'lvm', vg: VG, lv: LV },
      vm: null,
      store: { root: STORE, dir: LV },
      parents,
      snapshot: name,
      options: { strategy, verify: 'metadata' },
    },
  });
}

/** A job record as the job runner writes it when a command is accepted and started. */
function jobRecord(cmd: Command): JobRecord {
  const now = new Date().toISOString();
  return {
    version: 1,
    id: cmd.id,
    type: cmd.type,
    command: cmd,
    volume: { kind: 'lvm', vg: VG, lv: LV },
    lockKey: `volume:lvm:${VG}/${LV}`,
    replyTo: null,
    correlationId: null,
    state: 'running',
    sequence: 1,
    acceptedAt: now,
    startedAt: now,
    finishedAt: null,
    runs: 1,
    steps: {},
    stepsWritten: false,
    terminal: null,
  };
}

/**
 * Prints each step as it starts (the host reads the last one before the cut); `onFirstStep` runs
 * once, when the first step starts (the planning before it changes nothing on disk).
 */
function tracing(journal: StepJournal, onFirstStep?: () => void): StepJournal {
  const seen = new Set<string>();
  return {
    read: journal.read,
    write: async (patch) => {
      await journal.write(patch);
      const record = patch.engine as EngineRecord | undefined;
      for (const [step, state] of Object.entries(record?.steps ?? {})) {
        const key = `${step}:${state}`;
        if (state === 'started' && !seen.has(key)) {
          if (seen.size === 0) onFirstStep?.();
          process.stdout.write(`POWERCUT-STEP ${step}\n`);
        }
        seen.add(key);
      }
    },
  };
}

async function runJob(
  journal: JobJournal,
  cmd: Command,
  recovering: boolean,
  onFirstStep?: () => void,
): Promise<{ ok: true } | { ok: false; code: string; rolledBack: unknown; step: unknown }> {
  const ctx = {
    jobId: cmd.id,
    command: cmd,
    logger: silentLogger(),
    signal: new AbortController().signal,
    progress: () => {},
    journal: tracing(journal.stepJournal(cmd.id), onFirstStep),
    recovering,
  };
  try {
    await createSnapshot(ctx as Parameters<typeof createSnapshot>[0], deps);
    await journal.update(cmd.id, (r) => {
      r.state = 'succeeded';
      r.finishedAt = new Date().toISOString();
    });
    return { ok: true };
  } catch (error) {
    const e = error instanceof AgentError ? error : new AgentError('INTERNAL', String(error));
    await journal.update(cmd.id, (r) => {
      r.state = 'failed';
      r.finishedAt = new Date().toISOString();
    });
    return { ok: false, code: e.code, rolledBack: e.details.rolledBack, step: e.details.step };
  }
}

/** Start-up recovery of the cut job and every check; returns the problems found (none expected). */
async function recoverAndCheck(model: Model, newest = 1): Promise<Record<string, unknown>> {
  const problems: string[] = [];
  const report: Record<string, unknown> = { problems };
  const journal = new JobJournal(STATE);
  try {
    await journal.open();
  } catch (error) {
    // Start-up must name the damaged record and refuse to guess; that is a finding here too.
    problems.push(`journal unreadable: ${String(error)}`);
    return report;
  }
  const pending = model.pending;
  if (pending !== null) {
    const record = journal.get(pending.id);
    report.journal = record?.state ?? 'absent';
    let published = false;
    if (record === undefined) {
      // Cut before the job was journaled: it never started, its name must be free.
      if (existsSync(join(STORE_DIR, pending.name)))
        problems.push(`${pending.name} exists but its job was never journaled`);
    } else if (record.state === 'running' || record.state === 'queued') {
      const outcome = await runJob(journal, record.command, true);
      mark('recovered');
      report.recovery = outcome;
      published = outcome.ok;
      if (!outcome.ok && outcome.rolledBack !== true) {
        if (existsSync(join(STORE_DIR, pending.name))) model.orphans.push(pending.name);
        problems.push(`recovery left the job half done: ${JSON.stringify(outcome)}`);
      }
    } else published = record.state === 'succeeded';
    if (published) model.parents.push(pending.name);
    model.pending = null;
    await saveModel(model);
  }
  // Published snapshots: complete and equal to the volume at their moment. One job runs per boot,
  // so each is checked at the boot after it was published (the newest); no later job writes it.
  for (const name of model.parents.slice(-newest)) {
    const path = join(STORE_DIR, name);
    if (!existsSync(path)) {
      problems.push(`${name} is published but missing`);
      continue;
    }
    for (const p of [await checkOk(path), await differs(path, join(REFS, `${name}.raw`))])
      if (p) problems.push(p);
  }
  // The volume: opens through its chain and holds every acknowledged write.
  for (const p of [await checkOk(VOLUME), await differs(VOLUME, LIVE)]) if (p) problems.push(p);
  // Nothing temporary left, nothing unknown under a snapshot name.
  const lvs = (await lvm.listVolumes(VG)).map((v) => v.name);
  if (lvs.join(',') !== LV) problems.push(`LVs left: ${lvs.join(',')}`);
  const files = existsSync(STORE_DIR) ? readdirSync(STORE_DIR) : [];
  const unknown = files.filter((f) => !model.parents.includes(f) && !model.orphans.includes(f));
  if (unknown.length > 0) problems.push(`store files nobody published: ${unknown.join(',')}`);
  return report;
}

/** Guest writes, then one snapshot job (the host cuts it after /job/armed appears, at its first step). */
async function snapshotJob(model: Model, strategy: Strategy): Promise<Record<string, unknown>> {
  await guestWrites(model);
  model.counter++;
  const name = `snap-${model.counter}`;
  const id = `pc-${model.counter}-${strategy}`;
  // The reference of this snapshot is durable before the job can publish it. Sparse (qemu-img
  // convert): a plain copy of 32 MiB per cut filled the 1 GiB state disk after 30 cuts. Only the
  // newest references are checked again, older ones go.
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', LIVE, join(REFS, `${name}.raw`)]);
  fsyncPath(join(REFS, `${name}.raw`));
  for (const old of model.parents.slice(0, -3)) rmSync(join(REFS, `${old}.raw`), { force: true });
  model.pending = { id, name, strategy };
  await saveModel(model);
  const journal = new JobJournal(STATE);
  await journal.open();
  const cmd = command(id, name, strategy, model.parents);
  await journal.create(jobRecord(cmd));
  // The host's clock for the cut starts at the first step: the cuts spread over the steps, not the planning.
  let started = performance.now();
  const outcome = await runJob(journal, cmd, false, () => {
    mark('armed');
    writeFileSync('/job/armed', `${Date.now()}\n`);
    started = performance.now();
  });
  const ms = Math.round(performance.now() - started);
  if (outcome.ok) model.parents.push(name);
  model.pending = null;
  await saveModel(model);
  return { strategy, name, ms, outcome };
}

async function setup(jobMs?: number): Promise<void> {
  await loadModules();
  await run('pvcreate', ['-q', '-y', '-ff', '/dev/vda']);
  await run('vgcreate', ['-q', '-s', '4m', VG, '/dev/vda']);
  const { fullyAllocatedBytes } = await qemuImg.measure({ sizeBytes: VIRTUAL });
  await lvm.createVolume({ vg: VG, name: LV, sizeBytes: fullyAllocatedBytes });
  await qemuImg.create({ path: VOLUME, sizeBytes: VIRTUAL });
  for (const disk of ['/dev/vdb', '/dev/vdc']) await run('mke2fs', ['-q', '-F', '-t', 'ext4', disk]);
  mkdirSync(STORE, { recursive: true });
  mkdirSync(STATE, { recursive: true });
  await run('mount', ['-t', 'ext4', '/dev/vdb', STORE]);
  await run('mount', ['-t', 'ext4', '/dev/vdc', STATE]);
  mkdirSync(REFS, { recursive: true });
  await run('truncate', ['-s', String(VIRTUAL), LIVE]);
  const model: Model = { parents: [], orphans: [], pending: null, counter: 0, round: 0 };
  await saveModel(model);
  const timings: Record<string, number> = {};
  for (const strategy of ['offline', 'lvm-cow'] as const) {
    if (jobMs !== undefined) {
      timings[strategy] = jobMs;
      continue;
    }
    const job = await snapshotJob(model, strategy);
    if (!(job.outcome as { ok: boolean }).ok) throw new Error(`setup job failed: ${JSON.stringify(job)}`);
    timings[strategy] = job.ms as number;
  }
  const check = await recoverAndCheck(model, 2);
  process.stdout.write(`POWERCUT-TIMING ${JSON.stringify(timings)}\n`);
  process.stdout.write(`POWERCUT-CHECK ${JSON.stringify(check)}\n`);
}

/** Where the time of a boot goes (milliseconds since node started). */
const mark = (phase: string) =>
  process.stdout.write(`POWERCUT-T ${phase} ${Math.round(performance.now())}\n`);

async function cycle(strategy: Strategy): Promise<void> {
  mark('start');
  mkdirSync(STORE, { recursive: true });
  mkdirSync(STATE, { recursive: true });
  await bringUp();
  mark('up');
  const model = loadModel();
  const check = await recoverAndCheck(model);
  mark('checked');
  process.stdout.write(`POWERCUT-CHECK ${JSON.stringify(check)}\n`);
  const job = await snapshotJob(model, strategy);
  process.stdout.write(`POWERCUT-UNCUT ${JSON.stringify(job)}\n`);
}

/** The last boot: recovery and checks only. */
async function check(): Promise<void> {
  mkdirSync(STORE, { recursive: true });
  mkdirSync(STATE, { recursive: true });
  await bringUp();
  process.stdout.write(`POWERCUT-CHECK ${JSON.stringify(await recoverAndCheck(loadModel()))}\n`);
}

const [mode, arg] = process.argv.slice(2);
if (mode === 'setup') await setup(arg === undefined ? undefined : Number(arg));
else if (mode === 'check') await check();
else if (mode === 'cycle' && (arg === 'offline' || arg === 'lvm-cow')) await cycle(arg);
else {
  process.stderr.write('usage: guest.ts setup [MS] | check | cycle offline|lvm-cow\n');
  process.exit(2);
}
