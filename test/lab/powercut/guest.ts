// The power-cut matrix, inside the lab guest (run by test/lab/powercut/run.ts, one boot per cut).
//
//   guest.ts setup              pool, store and state disks from nothing
//   guest.ts check              start-up recovery and the checks only (the last boot)
//   guest.ts cycle <strategy>   start-up recovery of whatever the last cut interrupted, the checks, then
//                               guest writes + one snapshot job that the host cuts (at a step it chose,
//                               named in /job/steps as each starts, plus a random delay)
//
// Disks (kept across boots by run.sh --disk-dir): /dev/vda the LVM pool (VG pcvg, volume LV `vol`,
// QCOW2 32 MiB), /dev/vdb the store (ext4, journaled: what a store's file system does in a power
// loss), /dev/vdc the agent's state (ext4: the real job journal, src/jobs/journal.ts, and this
// program's model: which writes were acknowledged, which snapshots were published, their references).
//
// live-rotate has its own volume, LV `rot` (its layers `rot.lr-a|b|c|d` are LVs of the same VG),
// held by a running VM: the bare QEMU of test/support/lab/bare-qemu.ts (the lab has no libvirtd),
// started at each live-rotate cycle on the volume's active layer as the engine finds it (a power cut
// leaves no VM running). The guest writes go through that QEMU and are flushed there. What libvirt
// keeps of the domain across a power loss, its persistent definition (the disk's chain), is a file
// on the state disk, saved after each chain change QEMU completed, as libvirt saves its XML; after a
// boot the engine sees the domain "shut off" with that definition (stoppedDomain below).
//
// Lines on stdout for the host: `POWERCUT-STEP <step>` as each step starts (stdout reaches the host
// at once over the cache=none job share, so the last one before a cut names the step it hit),
// `POWERCUT-CHECK <json>` after recovery.
// Oracles: qemu-img check, qemu-img compare against raw references written with qemu-io.
import {
  appendFileSync,
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
import { writeFileAtomic } from '../../../src/atomic-file.js';
import { AgentError } from '../../../src/errors/index.js';
import { failedToolError } from '../../../src/host/exec.js';
import { FilePool } from '../../../src/host/file-pool.js';
import { Libvirt } from '../../../src/host/libvirt.js';
import { Lvm } from '../../../src/host/lvm.js';
import { QemuImg } from '../../../src/host/qemu-img.js';
import { SnapshotStore } from '../../../src/host/store.js';
import { JobJournal, type JobRecord } from '../../../src/jobs/journal.js';
import type { StepJournal } from '../../../src/jobs/types.js';
import { silentLogger } from '../../../src/observability/logger.js';
import { type Command, commandSchema } from '../../../src/protocol/index.js';
import { createSnapshot, type EngineRecord, type SnapshotDeps } from '../../../src/snapshot/index.js';
import { activeLayerBackend, localLayers } from '../../../src/snapshot/live-layers.js';
import { BareQemu } from '../../support/lab/bare-qemu.js';

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
const STRATEGIES = ['offline', 'lvm-cow', 'live-rotate'] as const;
type Strategy = (typeof STRATEGIES)[number];
/** live-rotate's volume (base LV), its running VM and that VM's persistent definition. */
const RLV = 'rot';
const RSTORE_DIR = join(STORE, RLV);
const DOMAIN = 'pc-vm';
const DEFINITION = join(STATE, 'domain-pc-vm.json');
const QEMU_DIR = '/tmp/pc-vm';

/** One volume's published snapshots as the caller knows them. */
interface VolumeModel {
  /** Published snapshots the caller knows, oldest first (each has refs/<name>.raw). */
  parents: string[];
  /** Snapshots published by jobs that failed past their point of no return. */
  orphans: string[];
}

/** What the guest knows for sure (written atomically before each fact can be relied on). */
interface Model extends VolumeModel {
  /** live-rotate's volume `rot` (the fields above are `vol`'s, used by offline and lvm-cow). */
  rot: VolumeModel;
  /** The job that may have been cut: its id and snapshot name (live-rotate: its chain's layers before it). */
  pending: { id: string; name: string; strategy: Strategy; layersBefore?: number } | null;
  /** The strategy of the newest job: its volume is checked at the next boot. */
  last?: Strategy;
  counter: number;
  round: number;
}

/** The volume a strategy's jobs work on in this matrix. */
const volumeOf = (strategy: Strategy) =>
  strategy === 'live-rotate'
    ? { lv: RLV, dir: RSTORE_DIR, live: join(STATE, 'refs', 'rot-live.raw') }
    : { lv: LV, dir: STORE_DIR, live: join(STATE, 'refs', 'live.raw') };
const modelOf = (model: Model, strategy: Strategy): VolumeModel =>
  strategy === 'live-rotate' ? model.rot : model;

const lvm = new Lvm({ timeoutMs: 120_000 });
const qemuImg = new QemuImg({ timeoutMs: 120_000, exportTimeoutMs: 300_000 });
const deps: SnapshotDeps = {
  qemuImg,
  store: new SnapshotStore({ roots: [STORE], qemuImg }),
  filePool: new FilePool({ roots: [STATE], qemuImg, timeoutMs: 60_000 }),
  lvm,
  // offline and lvm-cow have no VM (never reached); live-rotate's VM: stopped after a boot, the
  // bare QEMU while a cycle runs it.
  libvirt: new Libvirt({ uri: 'qemu:///system', timeoutMs: 60_000 }),
  cowPollMs: 500,
};

/** libvirt's persistent definition of the domain's disk: its chain, top first. */
function definition(): string[] {
  return (JSON.parse(readFileSync(DEFINITION, 'utf8')) as { chain: string[] }).chain;
}
const saveDefinition = (chain: string[]) => writeFileAtomic(DEFINITION, `${JSON.stringify({ chain })}\n`);

/**
 * The domain after a power loss, as libvirt reports a defined domain with no QEMU process: shut
 * off, its disk as the persistent definition names it. What needs a running QEMU fails as virsh does.
 */
const notRunning = (command: string) => async () => {
  throw failedToolError(
    'virsh',
    [command],
    'error: Requested operation is not valid: domain is not running',
    1,
  );
};
const stoppedDomain = {
  domainState: async () => ({ state: 'shut off', reason: 'unknown' }),
  isRunning: async () => false,
  disks: async () => [{ type: 'block', device: 'disk', target: 'vda', source: definition()[0]! }],
  diskSources: async () => definition(),
  diskChain: notRunning('domblklist'),
  externalSnapshot: notRunning('snapshot-create-as'),
  startBlockCommit: notRunning('blockcommit'),
  waitForBlockJob: notRunning('blockjob'),
  blockResize: notRunning('blockresize'),
} as unknown as Libvirt;
deps.libvirt = stoppedDomain;

/**
 * Starts the VM on `top` and makes it the engine's libvirt: the persistent definition is saved after
 * each chain change QEMU completed (libvirt saves its XML once QEMU's snapshot or commit is done).
 */
async function startVm(top: string): Promise<BareQemu> {
  rmSync(QEMU_DIR, { recursive: true, force: true });
  mkdirSync(QEMU_DIR, { recursive: true });
  const vm = await BareQemu.start(top, QEMU_DIR);
  const externalSnapshot = vm.externalSnapshot.bind(vm);
  vm.externalSnapshot = async (...args) => {
    await externalSnapshot(...args);
    await saveDefinition(await vm.diskSources());
  };
  const waitForBlockJob = vm.waitForBlockJob.bind(vm);
  vm.waitForBlockJob = async () => {
    await waitForBlockJob();
    await saveDefinition(await vm.diskSources());
  };
  deps.libvirt = vm as unknown as Libvirt;
  return vm;
}

/** live-rotate's volume: its active layer as the engine finds it with the VM stopped, and its chain. */
async function rotChain(): Promise<{ active: string; layers: string[] }> {
  const backend = await activeLayerBackend({ kind: 'lvm', vg: VG, lv: RLV }, null, deps);
  const chain = (await deps.store.readChain(backend.activePath)).map((m) => m.path);
  return { active: backend.activePath, layers: localLayers(backend, chain) };
}

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

/**
 * The guest writes 1-3 extents and flushes; then the reference of its volume gets them. Without a
 * VM through qemu-io (it exits after its flush), with one through QEMU (write, then flush there).
 */
async function guestWrites(model: Model, strategy: Strategy, vm?: BareQemu): Promise<void> {
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
  if (vm === undefined) await run('qemu-io', ['-f', 'qcow2', ...cmds(writes), '-c', 'flush', VOLUME]);
  else for (const w of writes) await vm.guestWrite(w.pattern, w.offset, w.length);
  // Acknowledged: the reference follows, durably, before anything can depend on it.
  const live = volumeOf(strategy).live;
  await run('qemu-io', ['-f', 'raw', ...cmds(writes), '-c', 'flush', live]);
  fsyncPath(live);
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
  const { lv } = volumeOf(strategy);
  return commandSchema.parse({
    id,
    type: 'snapshot.create',
    params: {
      volume: { kind: 'lvm', vg: VG, lv },
      vm: strategy === 'live-rotate' ? DOMAIN : null,
      store: { root: STORE, dir: lv },
      parents,
      snapshot: name,
      options: { strategy, verify: 'metadata' },
    },
  });
}

/** A job record as the job runner writes it when a command is accepted and started. */
function jobRecord(cmd: Command, lv: string): JobRecord {
  const now = new Date().toISOString();
  return {
    version: 1,
    id: cmd.id,
    type: cmd.type,
    command: cmd,
    volume: { kind: 'lvm', vg: VG, lv },
    lockKey: `volume:lvm:${VG}/${lv}`,
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
 * Prints each step as it starts (the host reads the last one before the cut) and hands it to
 * `onStep`, `first` for the first step (the planning before it changes nothing on disk).
 */
function tracing(journal: StepJournal, onStep?: (step: string, first: boolean) => void): StepJournal {
  const seen = new Set<string>();
  return {
    read: journal.read,
    write: async (patch) => {
      await journal.write(patch);
      const record = patch.engine as EngineRecord | undefined;
      for (const [step, state] of Object.entries(record?.steps ?? {})) {
        const key = `${step}:${state}`;
        if (state === 'started' && !seen.has(key)) {
          onStep?.(step, seen.size === 0);
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
  onStep?: (step: string, first: boolean) => void,
): Promise<{ ok: true } | { ok: false; code: string; rolledBack: unknown; step: unknown }> {
  const ctx = {
    jobId: cmd.id,
    command: cmd,
    logger: silentLogger(),
    signal: new AbortController().signal,
    progress: () => {},
    journal: tracing(journal.stepJournal(cmd.id), onStep),
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

/**
 * Start-up recovery of the cut job and every check; returns the problems found (none expected).
 * `volumes`: whose snapshots and chain to check (the cut job's volume; every one at set-up and the end).
 */
async function recoverAndCheck(
  model: Model,
  volumes: readonly Strategy[],
  newest = 1,
): Promise<Record<string, unknown>> {
  const report: Record<string, unknown> = { problems: [] };
  try {
    await recoverAndCheckInto(report, model, volumes, newest);
  } catch (error) {
    // A check that cannot run (a volume the engine cannot read) is a problem, not a crash.
    (report.problems as string[]).push(`check failed: ${String(error)}`);
  }
  return report;
}

async function recoverAndCheckInto(
  report: Record<string, unknown>,
  model: Model,
  volumes: readonly Strategy[],
  newest: number,
): Promise<void> {
  const problems = report.problems as string[];
  const journal = new JobJournal(STATE);
  try {
    await journal.open();
  } catch (error) {
    // Start-up must name the damaged record and refuse to guess; that is a finding here too.
    problems.push(`journal unreadable: ${String(error)}`);
    return;
  }
  const pending = model.pending;
  if (pending !== null) {
    const record = journal.get(pending.id);
    const { dir } = volumeOf(pending.strategy);
    const vm = modelOf(model, pending.strategy);
    report.journal = record?.state ?? 'absent';
    let published = false;
    if (record === undefined) {
      // Cut before the job was journaled: it never started, its name must be free.
      if (existsSync(join(dir, pending.name)))
        problems.push(`${pending.name} exists but its job was never journaled`);
    } else if (record.state === 'running' || record.state === 'queued') {
      // No VM runs after the boot: live-rotate's job is recovered with its domain shut off.
      const outcome = await runJob(journal, record.command, true);
      mark('recovered');
      report.recovery = outcome;
      published = outcome.ok;
      if (!outcome.ok && outcome.rolledBack !== true) {
        if (existsSync(join(dir, pending.name))) vm.orphans.push(pending.name);
        problems.push(`recovery left the job half done: ${JSON.stringify(outcome)}`);
      }
    } else published = record.state === 'succeeded';
    if (published) vm.parents.push(pending.name);
    model.pending = null;
    await saveModel(model);
    if (pending.strategy === 'live-rotate') {
      const { layers } = await rotChain();
      report.layers = layers.length;
      // Past the switch with the VM gone the old top stays (the next rotation merges it): one more.
      const bound = Math.max(2, pending.layersBefore ?? 2) + 1;
      if (layers.length > bound)
        problems.push(
          `${layers.length} layers in rot's chain (${layers.length - 1} above the base, at most ${bound} expected)`,
        );
    }
  }
  for (const strategy of new Set(volumes.map((v) => (v === 'live-rotate' ? v : 'offline')))) {
    const { lv, dir } = volumeOf(strategy);
    const vm = modelOf(model, strategy);
    // Published snapshots: complete and equal to the volume at their moment. One job runs per boot,
    // so each is checked at the boot after it was published (the newest); no later job writes it.
    for (const name of vm.parents.slice(-newest)) {
      const path = join(dir, name);
      if (!existsSync(path)) {
        problems.push(`${name} is published but missing`);
        continue;
      }
      for (const p of [await checkOk(path), await differs(path, join(REFS, `${name}.raw`))])
        if (p) problems.push(p);
    }
    const files = existsSync(dir) ? readdirSync(dir) : [];
    const unknown = files.filter((f) => !vm.parents.includes(f) && !vm.orphans.includes(f));
    if (unknown.length > 0) problems.push(`store files nobody published in ${lv}: ${unknown.join(',')}`);
  }
  // The volumes: open through their chains and hold every acknowledged write.
  const lvs = (await lvm.listVolumes(VG)).map((v) => v.name);
  if (volumes.some((v) => v !== 'live-rotate')) {
    for (const p of [await checkOk(VOLUME), await differs(VOLUME, volumeOf('offline').live)])
      if (p) problems.push(p);
  }
  // Nothing temporary left.
  const own = lvs.filter((n) => n !== RLV && !n.startsWith(`${RLV}.`));
  if (own.join(',') !== LV) problems.push(`LVs left: ${own.join(',')}`);
  if (volumes.includes('live-rotate')) {
    // The chain from the active layer the engine finds (with the VM stopped, from the headers and
    // LVs) is the one libvirt would start the VM on; every layer checks clean; every LV of the
    // volume is a layer of that chain (no stray LV).
    const { active, layers } = await rotChain();
    report.rotChain = layers;
    const defined = definition();
    if (defined[0] !== active)
      problems.push(`libvirt's definition starts the VM on ${defined[0]}, the engine finds ${active}`);
    for (const layer of layers) {
      const p = await checkOk(layer);
      if (p) problems.push(p);
    }
    const p = await differs(active, volumeOf('live-rotate').live);
    if (p) problems.push(p);
    const stray = lvs
      .filter((n) => n === RLV || n.startsWith(`${RLV}.`))
      .filter((n) => !layers.includes(`/dev/${VG}/${n}`));
    if (stray.length > 0) problems.push(`LVs of rot outside its chain: ${stray.join(',')}`);
  }
}

/**
 * Guest writes, then one snapshot job. `arm`: the host cuts it (its clock starts at /job/armed,
 * written at the first step); otherwise the job runs to its end here.
 */
async function snapshotJob(
  model: Model,
  strategy: Strategy,
  opts: { vm?: BareQemu; arm?: boolean } = {},
): Promise<Record<string, unknown>> {
  const arm = opts.arm ?? true;
  const vm = modelOf(model, strategy);
  await guestWrites(model, strategy, opts.vm);
  model.counter++;
  const name = `snap-${model.counter}`;
  const id = `pc-${model.counter}-${strategy}`;
  // The reference of this snapshot is durable before the job can publish it. Sparse (qemu-img
  // convert): a plain copy of 32 MiB per cut filled the 1 GiB state disk after 30 cuts. Only the
  // newest references are checked again, older ones go.
  await run('qemu-img', [
    'convert',
    '-f',
    'raw',
    '-O',
    'raw',
    volumeOf(strategy).live,
    join(REFS, `${name}.raw`),
  ]);
  fsyncPath(join(REFS, `${name}.raw`));
  for (const old of vm.parents.slice(0, -3)) rmSync(join(REFS, `${old}.raw`), { force: true });
  const layersBefore = strategy === 'live-rotate' ? (await rotChain()).layers.length : undefined;
  model.pending = { id, name, strategy, ...(layersBefore === undefined ? {} : { layersBefore }) };
  model.last = strategy;
  await saveModel(model);
  const journal = new JobJournal(STATE);
  await journal.open();
  const cmd = command(id, name, strategy, vm.parents);
  await journal.create(jobRecord(cmd, volumeOf(strategy).lv));
  // The job is armed at its first step (the planning before it changes nothing); the host's cut waits
  // for the step it aimed at in /job/steps.
  let started = performance.now();
  const outcome = await runJob(journal, cmd, false, (step, first) => {
    if (first) {
      if (arm) {
        mark('armed');
        writeFileSync('/job/armed', `${Date.now()}\n`);
      }
      started = performance.now();
    }
    if (arm) appendFileSync('/job/steps', `${step}\n`); // the host's cut may wait for one step
  });
  const ms = Math.round(performance.now() - started);
  if (outcome.ok) vm.parents.push(name);
  else if (existsSync(join(volumeOf(strategy).dir, name))) vm.orphans.push(name);
  model.pending = null;
  await saveModel(model);
  return { strategy, name, ms, outcome };
}

/**
 * live-rotate's VM, started as after a power loss: on the active layer the engine finds. A chain
 * that kept the old tops of several rotations cut past their switch (the VM was gone, nothing
 * merged them) first gets one uncut rotation, which merges them (a fifth layer name does not exist);
 * its snapshot is checked at once. Returns the VM and that rotation's problems.
 */
async function bootVm(model: Model): Promise<{ vm: BareQemu; problems: string[]; catchUp?: unknown }> {
  const { active, layers } = await rotChain();
  const vm = await startVm(active);
  mark('vm');
  if (layers.length < 4) return { vm, problems: [] };
  const job = await snapshotJob(model, 'live-rotate', { vm, arm: false });
  const problems: string[] = [];
  if (!(job.outcome as { ok: boolean }).ok) problems.push(`catch-up rotation failed: ${JSON.stringify(job)}`);
  else {
    const path = join(RSTORE_DIR, job.name as string);
    for (const p of [await checkOk(path), await differs(path, join(REFS, `${job.name}.raw`))])
      if (p) problems.push(p);
    const after = (await rotChain()).layers.length;
    if (after !== 2) problems.push(`catch-up rotation left ${after} layers`);
  }
  return { vm, problems, catchUp: { layersBefore: layers.length, ...job } };
}

async function setup(): Promise<void> {
  await loadModules();
  await run('pvcreate', ['-q', '-y', '-ff', '/dev/vda']);
  await run('vgcreate', ['-q', '-s', '4m', VG, '/dev/vda']);
  const { fullyAllocatedBytes } = await qemuImg.measure({ sizeBytes: VIRTUAL });
  for (const lv of [LV, RLV]) {
    await lvm.createVolume({ vg: VG, name: lv, sizeBytes: fullyAllocatedBytes });
    await qemuImg.create({ path: `/dev/${VG}/${lv}`, sizeBytes: VIRTUAL });
  }
  for (const disk of ['/dev/vdb', '/dev/vdc']) await run('mke2fs', ['-q', '-F', '-t', 'ext4', disk]);
  mkdirSync(STORE, { recursive: true });
  mkdirSync(STATE, { recursive: true });
  await run('mount', ['-t', 'ext4', '/dev/vdb', STORE]);
  await run('mount', ['-t', 'ext4', '/dev/vdc', STATE]);
  mkdirSync(REFS, { recursive: true });
  for (const strategy of ['offline', 'live-rotate'] as const)
    await run('truncate', ['-s', String(VIRTUAL), volumeOf(strategy).live]);
  await saveDefinition([`/dev/${VG}/${RLV}`]);
  const model: Model = {
    parents: [],
    orphans: [],
    rot: { parents: [], orphans: [] },
    pending: null,
    counter: 0,
    round: 0,
  };
  await saveModel(model);
  const check = await recoverAndCheck(model, STRATEGIES, 2);
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
  const check = await recoverAndCheck(model, model.last === undefined ? [] : [model.last]);
  let vm: BareQemu | undefined;
  if (strategy === 'live-rotate') {
    const started = await bootVm(model);
    vm = started.vm;
    (check.problems as string[]).push(...started.problems);
    if (started.catchUp !== undefined) check.catchUp = started.catchUp;
  }
  mark('checked');
  process.stdout.write(`POWERCUT-CHECK ${JSON.stringify(check)}\n`);
  const job = await snapshotJob(model, strategy, { vm });
  process.stdout.write(`POWERCUT-UNCUT ${JSON.stringify(job)}\n`);
  await vm?.quit();
}

/** The last boot: recovery and checks only. */
async function check(): Promise<void> {
  mkdirSync(STORE, { recursive: true });
  mkdirSync(STATE, { recursive: true });
  await bringUp();
  process.stdout.write(`POWERCUT-CHECK ${JSON.stringify(await recoverAndCheck(loadModel(), STRATEGIES))}\n`);
}

const [mode, arg] = process.argv.slice(2);
if (mode === 'setup') await setup();
else if (mode === 'check') await check();
else if (mode === 'cycle' && (STRATEGIES as readonly string[]).includes(arg ?? ''))
  await cycle(arg as Strategy);
else {
  process.stderr.write(`usage: guest.ts setup | check | cycle ${STRATEGIES.join('|')}\n`);
  process.exit(2);
}
