// A real NFS store: the kernel NFS server in the lab guest exports a tmpfs over loopback (NFSv4.2),
// mounted by the same guest as the agent's store root, once `hard` and once `soft,timeo=10,retrans=2`
// (a major timeout of about 3 s: 1 s + 2 s). In the middle of an export (at its first progress
// between 0 and 100 %, the copy slowed with the export-rate failpoint) the server goes away for N
// seconds: unreachable (a blackhole route; it keeps its state) or restarted (`rpc.nfsd 0`, started
// again N s later; it drops every client's state and starts a grace period).
//
//   hard, unreachable 4 s      the export resumes, the snapshot matches its reference
//   soft, unreachable 1 s      below the soft timeout: absorbed like on a hard mount
//   soft, nfsd stopped 15 s    the job fails with a retryable code before the server is back (the
//                              soft timeout alone does not bound it: calls wait for the client's
//                              state recovery; the agent's deadlines, export 8 s and store 6 s, do); nothing
//                              under the snapshot's name; store-health says down meanwhile
//   hard, nfsd stopped 25 s    longer than the agent's timeouts (export 8 s, store calls 4 s): the
//                              stuck qemu-img is killed (or, blocked in the kernel, abandoned) and the
//                              job fails HOST_TIMEOUT before the server is back; store-health answers
//                              within its own timeout and says down
//   hard, restarted after 4 s  one clear outcome (qemu-img's lock on the part file is not reclaimed:
//                              a retryable I/O error, rolled back), nothing half-published
//   store gone under the volume: what reads of the volume and a new job get.
//
// After every outage the server is back, the volume matches its reference, and the next snapshot
// succeeds and matches. Oracles: qemu-img compare against raw references written with qemu-io,
// qemu-img check. Findings (timelines, outcomes, the kernel's NFS log) are printed at the end.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { Gauge } from 'prom-client';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/errors/index.js';
import { type RunOptions, runTool } from '../../../src/host/exec.js';
import { FilePool } from '../../../src/host/file-pool.js';
import { Libvirt } from '../../../src/host/libvirt.js';
import { Lvm } from '../../../src/host/lvm.js';
import { QemuImg } from '../../../src/host/qemu-img.js';
import { SnapshotStore } from '../../../src/host/store.js';
import type { ProgressUpdate } from '../../../src/jobs/types.js';
import { StoreHealth } from '../../../src/observability/store-health.js';
import { createSnapshot, type SnapshotDeps } from '../../../src/snapshot/index.js';
import { Failpoints } from '../../support/failpoints.js';
import { dropCaches } from '../../support/lab/faults.js';
import { NfsServer, processState, threadStates } from '../../support/lab/nfs.js';
import { differsFromReference, ReferenceDisk } from '../../support/reference-images.js';
import { command, jobContext, MemoryJournal } from '../../support/snapshot-harness.js';
import { waitFor } from '../../support/wait.js';

const MiB = 1024 * 1024;
const VIRTUAL = 32 * MiB;
const SOFT = 'soft,timeo=10,retrans=2';
const HARD = 'hard,timeo=10';

interface Volume {
  file: string;
  path: string;
  storeRoot: string;
  live: ReferenceDisk;
  parents: string[];
  counter: number;
  round: number;
}

let server: NfsServer;
let work: string;
const volumes: Record<'hard' | 'soft', Volume> = {} as never;
const findings: string[] = [];

interface DepsOptions {
  storeRoot: string;
  slow?: boolean;
  exportTimeoutMs?: number;
  storeTimeoutMs?: number;
  killGraceMs?: number;
  onConvert?: (pid: number) => void;
}

function deps(o: DepsOptions): SnapshotDeps {
  const run = (file: string, args: readonly string[], options: RunOptions) =>
    runTool(file, args, {
      ...options,
      ...(o.killGraceMs === undefined ? {} : { killGraceMs: o.killGraceMs }),
      onSpawn: (pid) => {
        options.onSpawn?.(pid);
        if (args[0] === 'convert') o.onConvert?.(pid);
      },
    });
  const qemuImg = new QemuImg({
    timeoutMs: 30_000,
    exportTimeoutMs: o.exportTimeoutMs ?? 120_000,
    run: o.slow ? Failpoints.parse('export-rate=4M').wrapRunner(run) : run,
  });
  return {
    qemuImg,
    store: new SnapshotStore({
      roots: [o.storeRoot],
      qemuImg,
      timeoutMs: o.storeTimeoutMs ?? 60_000,
      publishTimeoutMs: o.storeTimeoutMs ?? 60_000,
    }),
    filePool: new FilePool({ roots: [work], qemuImg, timeoutMs: 30_000 }),
    lvm: new Lvm({ timeoutMs: 30_000 }),
    libvirt: new Libvirt({ uri: 'qemu:///system', timeoutMs: 30_000 }), // never reached: no VM
  };
}

beforeAll(async () => {
  server = await NfsServer.start('/srv/h14-nfs');
  await server.mount('hard', '/mnt/h14-nfs-hard', HARD);
  await server.mount('soft', '/mnt/h14-nfs-soft', SOFT);
  work = mkdtempSync(join(tmpdir(), 'nfs-pool-'));
  for (const kind of ['hard', 'soft'] as const) {
    const file = `vol-${kind}.qcow2`;
    const path = join(work, file);
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', path, String(VIRTUAL)]);
    const live = await ReferenceDisk.create(join(work, `vol-${kind}.raw`), VIRTUAL);
    volumes[kind] = {
      file,
      path,
      storeRoot: `/mnt/h14-nfs-${kind}`,
      live,
      parents: [],
      counter: 0,
      round: 0,
    };
  }
});

// Once nfsd cannot start, every later case would wait on a dead mount until its timeout.
beforeEach(() => {
  if (server?.wedged) throw new Error(`the NFS server is wedged: ${server.wedged}`);
});

afterAll(async () => {
  const kernel = (await execa('dmesg', [], { reject: false })).stdout
    .split('\n')
    .filter((l) => /nfs|rpc|lockd|grace/i.test(l))
    .slice(-40);
  // Reclaim blocked on the stopped loopback server can keep nfsd from starting: say how full RAM was.
  const memory = readFileSync('/proc/meminfo', 'utf8')
    .split('\n')
    .filter((l) => /^(MemTotal|MemAvailable|Shmem|Dirty|Writeback):/.test(l))
    .map((l) => l.replace(/\s+/g, ' '));
  console.log(
    [
      'nfs store findings:',
      ...findings,
      `guest memory: ${memory.join(', ')}`,
      'kernel log (nfs):',
      ...kernel,
    ].join('\n  '),
  );
  await server?.shutdown();
  if (work) rmSync(work, { recursive: true, force: true });
});

/** The guest writes 16 MiB somewhere new (qemu-io), the reference gets the same writes. */
async function guestWrites(v: Volume): Promise<void> {
  v.round++;
  const pattern = 1 + ((v.round * 37) % 250);
  const offset = ((v.round * 3) % 16) * MiB;
  await execa('qemu-io', ['-f', 'qcow2', '-c', `write -q -P ${pattern} ${offset} ${16 * MiB}`, v.path]);
  await v.live.apply([{ pattern, offset, length: 16 * MiB }]);
}

function runJob(v: Volume, name: string, d: SnapshotDeps, onProgress?: (u: ProgressUpdate) => void) {
  const cmd = command('snapshot.create', {
    volume: { kind: 'file', pool: work, file: v.file },
    vm: null,
    store: { root: v.storeRoot, dir: 'vol' },
    parents: v.parents,
    snapshot: name,
    options: { strategy: 'offline', verify: 'metadata' },
  });
  return createSnapshot(jobContext(cmd, new MemoryJournal(), { onProgress }), d);
}

type OutageKind = 'partition' | 'restart';

/**
 * Takes the server away at the export's first progress between 0 and 100 % and brings it back
 * `seconds` later: a partition (unreachable, state kept) or a restart (nfsd stopped, then started).
 */
function outageMidExport(kind: OutageKind, seconds: number) {
  const state = { stoppedAt: 0, resumedAt: 0, percent: 0, back: Promise.resolve() };
  const onProgress = (u: ProgressUpdate) => {
    if (state.stoppedAt > 0 || u.step !== 'export') return;
    if ((u.percent ?? 0) <= 0 || (u.percent ?? 100) >= 100) return;
    state.stoppedAt = performance.now();
    state.percent = u.percent ?? 0;
    const away = kind === 'partition' ? server.partition() : server.stop();
    state.back = away.then(
      () =>
        new Promise<void>((resolve, reject) =>
          setTimeout(() => {
            (kind === 'partition' ? server.heal() : server.resume()).then(() => {
              state.resumedAt = performance.now();
              resolve();
            }, reject);
          }, seconds * 1000),
        ),
    );
  };
  return { state, onProgress };
}

async function expectSnapshotMatches(v: Volume, name: string, reference: ReferenceDisk): Promise<void> {
  const path = join(v.storeRoot, 'vol', name);
  expect((await execa('qemu-img', ['check', '-q', path], { reject: false })).exitCode).toBe(0);
  expect(await differsFromReference(path, reference)).toBeNull();
}

async function expectVolumeMatches(v: Volume): Promise<void> {
  expect(await differsFromReference(v.path, v.live)).toBeNull();
}

/**
 * Waits until the volume's chain opens again after the server came back (a soft mount fails calls
 * with EIO while its client recovers its state in the server's grace period); returns how long.
 */
async function untilChainOpens(v: Volume, timeoutMs = 60_000): Promise<number> {
  const started = performance.now();
  let stderr = '';
  await waitFor(
    async () => {
      const info = await execa('qemu-img', ['info', '-U', '--backing-chain', v.path], {
        reject: false,
        timeout: 30_000,
      });
      stderr = info.stderr;
      return info.exitCode === 0 ? true : undefined;
    },
    timeoutMs,
    () => `the volume's chain to open after the server's return (last: ${stderr})`,
  );
  return Math.round(performance.now() - started);
}

/**
 * The agent's store-health signal on one mount (clvm_agent_store_up); `probe` refreshes it as a
 * scrape does, checks it answered within its own timeout (1 s, plus slack for the loaded host) and
 * returns the gauge.
 */
function storeHealth(v: Volume, label: string, store: SnapshotStore) {
  const up = new Gauge({ name: `h14_${label}_up`, help: 'up', labelNames: ['root'], registers: [] });
  const free = new Gauge({ name: `h14_${label}_free`, help: 'free', labelNames: ['root'], registers: [] });
  const health = new StoreHealth({
    roots: [v.storeRoot],
    freeBytes: (root) => store.freeBytes(root),
    up,
    free,
    timeoutMs: 1000,
  });
  return {
    async probe(): Promise<number | undefined> {
      const started = performance.now();
      await health.refresh();
      expect(performance.now() - started).toBeLessThan(5_000);
      return (await up.get()).values[0]?.value;
    },
  };
}

/** The next snapshot, the server up: succeeds and matches; only snapshots the caller knows carry a name. */
async function nextSnapshotIsCorrect(v: Volume): Promise<void> {
  const reference = await v.live.freeze(join(work, `${v.file}-next-${v.counter + 1}.raw`));
  const name = `snap-${++v.counter}`;
  await runJob(v, name, deps({ storeRoot: v.storeRoot }));
  v.parents.push(name);
  await expectSnapshotMatches(v, name, reference);
  await expectVolumeMatches(v);
  const visible = readdirSync(join(v.storeRoot, 'vol')).filter((f) => !f.startsWith('.'));
  expect(visible.sort()).toEqual([...v.parents].sort());
}

/** Runs a job through an outage of `seconds`; returns its outcome and the times. */
async function jobThroughOutage(
  v: Volume,
  kind: OutageKind,
  seconds: number,
  d: Omit<DepsOptions, 'storeRoot'> = {},
) {
  await guestWrites(v);
  const reference = await v.live.freeze(join(work, `${v.file}-ref-${v.round}.raw`));
  const name = `snap-${++v.counter}`;
  const outage = outageMidExport(kind, seconds);
  let error: AgentError | undefined;
  try {
    await runJob(v, name, deps({ storeRoot: v.storeRoot, slow: true, ...d }), outage.onProgress);
  } catch (e) {
    expect(e).toBeInstanceOf(AgentError);
    error = e as AgentError;
  }
  const settledAt = performance.now();
  expect(outage.state.stoppedAt, 'the server was stopped during the export').toBeGreaterThan(0);
  const at = (t: number) => (t > 0 ? `${Math.round((t - outage.state.stoppedAt) / 100) / 10}s` : '-');
  const timeline = `stopped at export ${outage.state.percent}%, job settled ${at(settledAt)} after the stop (server back ${at(outage.state.resumedAt)}): ${error ? `failed ${error.code} retryable=${error.retryable} rolledBack=${error.details.rolledBack} step=${error.details.step}: ${error.message.slice(0, 160)}` : 'succeeded'}`;
  return { name, reference, error, settledAt, outage: outage.state, timeline };
}

describe('the snapshot store on a real NFS server (kernel nfsd over loopback)', () => {
  it.each([
    ['hard', 4],
    ['soft', 1],
  ] as const)(
    '%s mount, the server unreachable for %i s mid-export (a soft mount: below its timeout): the export resumes and the snapshot is correct',
    async (mount, seconds) => {
      const v = volumes[mount];
      const run = await jobThroughOutage(v, 'partition', seconds);
      findings.push(`${mount}, unreachable ${seconds} s: ${run.timeline}`);
      await run.outage.back;
      expect(run.error, run.error?.message).toBeUndefined();
      expect(run.settledAt).toBeGreaterThan(run.outage.resumedAt);
      v.parents.push(run.name);
      await expectSnapshotMatches(v, run.name, run.reference);
      await expectVolumeMatches(v);
      await nextSnapshotIsCorrect(v);
    },
  );

  it('soft mount, nfsd stopped for 15 s: the job fails retryable before the server is back, nothing published, store-health down', async () => {
    const v = volumes.soft;
    const health = storeHealth(v, 'soft', deps({ storeRoot: v.storeRoot }).store);
    const run = await jobThroughOutage(v, 'restart', 15, {
      exportTimeoutMs: 8_000,
      storeTimeoutMs: 6_000,
      killGraceMs: 1_000,
    });
    findings.push(`soft, 15 s outage: ${run.timeline}`);
    expect(server.up, 'the job ended while the server was still down').toBe(false);
    expect(await health.probe()).toBe(0);
    await run.outage.back;
    expect(run.error).toBeDefined();
    const e = run.error!;
    expect(['HOST_IO_ERROR', 'HOST_TIMEOUT']).toContain(e.code);
    expect(e.retryable).toBe(true);
    expect(existsSync(join(v.storeRoot, 'vol', run.name)), 'nothing under the snapshot name').toBe(false);
    findings.push(
      `soft, 15 s outage: the volume's chain opened ${await untilChainOpens(v)} ms after the server was back`,
    );
    await expectVolumeMatches(v);
    await nextSnapshotIsCorrect(v);
    expect(await health.probe()).toBe(1);
  });

  it('hard mount, nfsd stopped for 25 s (past the agent timeouts): qemu-img is killed or abandoned, the job fails HOST_TIMEOUT before the server is back', async () => {
    const v = volumes.hard;
    const health = storeHealth(v, 'hard', deps({ storeRoot: v.storeRoot, storeTimeoutMs: 4_000 }).store);
    let convertPid = 0;
    const run = await jobThroughOutage(v, 'restart', 25, {
      exportTimeoutMs: 8_000,
      storeTimeoutMs: 4_000,
      killGraceMs: 1_000,
      onConvert: (pid) => {
        convertPid = pid;
      },
    });
    expect(server.up, 'the job ended while the server was still down').toBe(false);
    const left = { state: processState(convertPid), threads: threadStates(convertPid).join('') };
    // store-health answers within its own timeout, twice (the second finds the first probe still stuck).
    for (let i = 0; i < 2; i++) expect(await health.probe()).toBe(0);
    await run.outage.back;
    expect(run.error).toBeDefined();
    const e = run.error!;
    findings.push(
      `hard, 25 s outage: failed ${e.code} rolledBack=${e.details.rolledBack} step=${e.details.step} ${Math.round((run.settledAt - run.outage.stoppedAt) / 100) / 10} s after the stop; qemu-img ${convertPid} then: state ${left.state ?? 'gone'} threads ${left.threads || '-'}: ${e.message.slice(0, 200)}`,
    );
    expect(e.code).toBe('HOST_TIMEOUT');
    expect(e.retryable).toBe(true);
    // The abandoned qemu-img goes once the server answers again.
    const deadline = performance.now() + 90_000;
    while (
      processState(convertPid) !== null &&
      processState(convertPid) !== 'Z' &&
      performance.now() < deadline
    ) {
      await new Promise((r) => setTimeout(r, 500));
    }
    expect(['Z', null]).toContain(processState(convertPid));
    expect(existsSync(join(v.storeRoot, 'vol', run.name)), 'nothing under the snapshot name').toBe(false);
    await expectVolumeMatches(v);
    await nextSnapshotIsCorrect(v);
    // The stuck probe answers once the server is back: up again (a drain condition, not a sleep).
    const upDeadline = performance.now() + 60_000;
    while (performance.now() < upDeadline && (await health.probe()) !== 1);
    expect(await health.probe()).toBe(1);
  });

  it('hard mount, nfsd restarted mid-export (4 s down): one clear outcome, nothing half-published, the next snapshot is correct', async () => {
    const v = volumes.hard;
    const run = await jobThroughOutage(v, 'restart', 4);
    findings.push(`hard, nfsd restart after 4 s: ${run.timeline}`);
    await run.outage.back;
    const snapshot = join(v.storeRoot, 'vol', run.name);
    if (run.error === undefined) {
      v.parents.push(run.name);
      await expectSnapshotMatches(v, run.name, run.reference);
    } else {
      // The restart drops the server's state; what the client cannot reclaim fails its writes.
      expect(run.error.retryable).toBe(true);
      expect(run.error.details.rolledBack).toBe(true);
      expect(existsSync(snapshot), 'nothing under the snapshot name').toBe(false);
    }
    await expectVolumeMatches(v);
    await nextSnapshotIsCorrect(v);
  });

  it('the store gone under the volume: an offline volume reads its older data from the store; the agent fails the next job fast', async () => {
    const v = volumes.soft;
    if (v.parents.length === 0) await nextSnapshotIsCorrect(v);
    const chain = JSON.parse(
      (await execa('qemu-img', ['info', '-U', '--backing-chain', '--output=json', v.path])).stdout,
    ) as Array<{ filename: string }>;
    const fromStore = chain.filter((m) => m.filename.startsWith(v.storeRoot)).length;
    expect(fromStore, 'after an offline snapshot the volume backs onto the store').toBeGreaterThan(0);
    const pattern = 1 + ((v.round * 37) % 250);
    const offset = ((v.round * 3) % 16) * MiB;
    await server.stop();
    try {
      // What the guest would see: data the client still caches reads fine; the rest waits or fails.
      // The page cache only: the slab shrinkers would block on the stopped server (see dropCaches).
      dropCaches();
      const read = await execa(
        'qemu-io',
        ['-r', '-U', '-f', 'qcow2', '-c', `read -P ${pattern} ${offset} ${MiB}`, v.path],
        {
          reject: false,
          timeout: 60_000,
        },
      );
      findings.push(
        `store gone, soft mount: qemu-io read of the volume (caches dropped) exited ${read.exitCode}${read.timedOut ? ' (still waiting after 60 s, killed)' : ''}: ${`${read.stdout} ${read.stderr}`.trim().slice(0, 160)}`,
      );
      const started = performance.now();
      const error = await runJob(
        v,
        `snap-${++v.counter}`,
        deps({ storeRoot: v.storeRoot, storeTimeoutMs: 4_000, exportTimeoutMs: 8_000, killGraceMs: 1_000 }),
      ).then(
        () => undefined,
        (e: unknown) => e as AgentError,
      );
      findings.push(
        `store gone, soft mount: the next job ${error ? `failed ${error.code} retryable=${error.retryable} step=${error.details.step ?? '-'} in ${Math.round((performance.now() - started) / 100) / 10} s: ${error.message.slice(0, 120)}` : 'succeeded'}`,
      );
      expect(error).toBeInstanceOf(AgentError);
      expect(error!.retryable).toBe(true);
    } finally {
      await server.resume();
    }
    findings.push(
      `store gone, soft mount: the volume's chain opened ${await untilChainOpens(v)} ms after the server was back`,
    );
    await expectVolumeMatches(v);
    await nextSnapshotIsCorrect(v);
  });
});
