// The crash matrix driver: for one strategy, kill -9 the agent (AGENT_FAILPOINTS) at every step
// boundary and inside the export (and while the VM is paused), restart it, and check what
// recovery did: one terminal event, rolled back before the point of no return and finished after
// it, the chain intact (qemu-img check + compare with raw references), no temporary file, the VM running.
// live-rotate adds its own checks (liveRotateCrashAt) and guest writes while the agent is dead.
import { randomBytes } from 'node:crypto';
import { mkdir, readdir } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentEvent, eventKindOf } from '../../src/protocol/index.js';
import { AgentProcess, HostBus } from './agent-process.js';
import { checkExitCode } from './images.js';
import {
  assertLibvirtReady,
  Cleanup,
  createQcow2,
  guestFlush,
  guestWrite,
  makeTempDir,
  startTestDomain,
  virsh,
} from './libvirt-fixtures.js';
import { differsFromReference, type PatternWrite, ReferenceDisk, roundWrites } from './reference-images.js';
import { blockCensus, qemuChain } from './vm-watch.js';

export interface CrashSetup {
  bus: HostBus;
  base: string;
  poolRoot: string;
  pool: string;
  storeRoot: string;
  volumeFile: string;
  vm: string | null;
  live: ReferenceDisk;
  /** Makes the guest write (qemu-io on the image, or inside the running VM). */
  write(writes: PatternWrite[]): Promise<void>;
  /** Before reading the active image from outside (a running VM: flush QEMU's caches). */
  settle(): Promise<void>;
  strategy: 'offline' | 'lvm-cow' | 'live-rotate';
  /**
   * The guest also writes while the agent is dead (a running VM only): after a finished job these
   * writes belong to the live disk but not to the snapshot (taken before them).
   */
  writeWhileDown?: boolean;
  /** The volume's active layer now (live-rotate moves it); default: the volume file. */
  activeImage?: () => Promise<string>;
  chain: string[];
  refs: ReferenceDisk[];
  round: number;
  agentStarts: number;
}

const SIZE = 32 * 1024 * 1024;

/** Kills leftover qemu-img processes of a killed agent that work on this test's files (by pid). */
async function killOrphans(base: string): Promise<void> {
  const { stdout } = await execa('ps', ['-eo', 'pid=,args=']);
  for (const line of stdout.split('\n')) {
    const match = /^\s*(\d+)\s+(.*)$/.exec(line);
    if (match && /qemu-img/.test(match[2]!) && match[2]!.includes(base))
      process.kill(Number(match[1]), 'SIGKILL');
  }
}

/** One cell of the matrix. `rollsBack`: the failpoint lies before the point of no return. */
export async function crashAt(s: CrashSetup, failpoint: string, rollsBack: boolean): Promise<void> {
  s.round += 1;
  const writes = roundWrites(300 + s.round, SIZE);
  await s.write(writes);
  await s.live.apply(writes);
  const name = `snap-${s.round}`;
  // The snapshot must hold exactly the guest's disk as it was when the command was sent.
  const ref = await s.live.freeze(join(s.base, `ref-${s.round}.raw`));
  const env = {
    hostId: s.bus.hostId,
    stateDir: join(s.base, 'state'),
    storeRoot: s.storeRoot,
    poolRoot: s.poolRoot,
    logFile: join(s.base, 'agent.log'),
    liveRotate: 'enabled' as const,
  };
  const slow = failpoint.includes(':export:during') ? ',export-rate=1M' : '';
  const first = AgentProcess.start({ ...env, failpoints: `${failpoint}${slow}` });
  await s.bus.waitForStarted(++s.agentStarts);
  const jobId = s.bus.send('snapshot.create', {
    volume: { kind: 'file', pool: s.pool, file: s.volumeFile },
    vm: s.vm,
    store: { root: s.storeRoot, dir: 'vol' },
    parents: s.chain,
    snapshot: name,
    options: { strategy: s.strategy },
  });
  const exit = await Promise.race([
    first.exited,
    new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error(`${failpoint} never fired`)), 60_000),
    ),
  ]);
  expect(exit.signal, `agent should die at ${failpoint}`).toBe('SIGKILL');
  expect(s.bus.terminalsOf(jobId)).toHaveLength(0);
  await killOrphans(s.base);
  if (s.writeWhileDown) {
    const down = roundWrites(700 + s.round, SIZE);
    await s.write(down);
    await s.live.apply(down);
  }

  const second = AgentProcess.start(env);
  let terminal: AgentEvent;
  try {
    await s.bus.waitForStarted(++s.agentStarts);
    terminal = await s.bus.waitForTerminal(jobId);
  } finally {
    await second.stop();
  }
  // One terminal event, counted once the agent is gone and all it sent has arrived.
  await s.bus.drain(env.stateDir);
  expect(s.bus.terminalsOf(jobId)).toHaveLength(1);
  const kind = eventKindOf(terminal.type);
  const data = terminal.data as {
    rolledBack?: boolean;
    error?: { code: string };
    result?: { snapshot?: { name: string } };
  };
  if (rollsBack) {
    expect(kind, JSON.stringify(data)).toBe('failed');
    expect(data.rolledBack).toBe(true);
  } else {
    expect(kind, JSON.stringify(data)).toBe('succeeded');
    expect(data.result?.snapshot?.name).toBe(name);
  }
  if (!rollsBack) {
    s.chain.push(name);
    s.refs.push(ref);
  }

  // Chain intact, data right, nothing temporary left, VM running.
  expect((await readdir(join(s.storeRoot, 'vol'))).sort()).toEqual([...s.chain].sort());
  const active = s.activeImage === undefined ? join(s.pool, s.volumeFile) : await s.activeImage();
  // The volume file (live-rotate: its base and its active layer); no temporary file.
  const files = [...new Set([s.volumeFile, basename(active)])].sort();
  expect((await readdir(s.pool)).filter((f) => !f.startsWith('.')).sort()).toEqual(files);
  for (const [i, member] of s.chain.entries()) {
    const path = join(s.storeRoot, 'vol', member);
    expect(await checkExitCode(path)).toBe(0);
    expect(await differsFromReference(path, s.refs[i]!)).toBeNull();
  }
  await s.settle();
  expect(await checkExitCode(active)).toBe(0);
  expect(await differsFromReference(active, s.live)).toBeNull();
  if (s.vm !== null) {
    const { stdout } = await execa('virsh', ['-c', 'qemu:///system', 'domstate', s.vm]);
    expect(stdout.trim()).toBe('running');
  }
}

const MiB = 1024 * 1024;

/**
 * A matrix's world: a file pool (in `poolRoot`, default a temp dir) holding vol.qcow2, a store, the
 * raw reference of the live disk, a HostBus, and with `vm` a running type='qemu' VM on the volume
 * (else the "guest" writes with qemu-io). live-rotate: the guest also writes while the agent is
 * dead, and the active layer is what libvirt says. `cleanup` removes all of it.
 */
export async function crashSetup(
  cleanup: Cleanup,
  label: string,
  opts: { strategy: CrashSetup['strategy']; vm: boolean; poolRoot?: string },
): Promise<CrashSetup> {
  if (opts.vm) await assertLibvirtReady();
  const base = await makeTempDir(cleanup, label);
  const poolRoot = opts.poolRoot ?? join(base, 'pools');
  const pool = join(poolRoot, 'p1');
  const storeRoot = join(base, 'store');
  await mkdir(pool, { recursive: true });
  await mkdir(storeRoot, { recursive: true });
  const active = join(pool, 'vol.qcow2');
  await createQcow2(active, SIZE / MiB);
  const bus = await HostBus.open(`h7${label}-${randomBytes(3).toString('hex')}`);
  cleanup.add('bus', () => bus.close());
  const world = {
    bus,
    base,
    poolRoot,
    pool,
    storeRoot,
    volumeFile: 'vol.qcow2',
    live: await ReferenceDisk.create(join(base, 'live.raw'), SIZE),
    strategy: opts.strategy,
    chain: [],
    refs: [],
    round: 0,
    agentStarts: 0,
  };
  if (!opts.vm) {
    return {
      ...world,
      vm: null,
      write: async (writes) => {
        const commands = writes.flatMap((w) => ['-c', `write -q -P ${w.pattern} ${w.offset} ${w.length}`]);
        await execa('qemu-io', ['-f', 'qcow2', ...commands, active]);
      },
      settle: async () => {},
    };
  }
  const dom = await startTestDomain(cleanup, { label, disk: { type: 'file', path: active } });
  return {
    ...world,
    vm: dom.name,
    write: async (writes) => {
      for (const w of writes) await guestWrite(dom, w.pattern, w.offset, w.length);
    },
    settle: () => guestFlush(dom),
    ...(opts.strategy === 'live-rotate'
      ? { writeWhileDown: true, activeImage: async () => (await libvirtChain(dom.name))[0]! }
      : {}),
  };
}

/**
 * The frame of a crash-matrix file: `setup` before all cells, its clean-up after them, one test per
 * cell `[failpoint, rolls back]`, run by `at` (default crashAt).
 */
export function crashMatrixSuite(opts: {
  title: string;
  cellTitle: string;
  setup: (cleanup: Cleanup) => Promise<CrashSetup>;
  cells: Array<[string, boolean]>;
  at?: (s: CrashSetup, failpoint: string, rollsBack: boolean) => Promise<void>;
}): void {
  const cleanup = new Cleanup();
  let s: CrashSetup;
  beforeAll(async () => {
    s = await opts.setup(cleanup);
  });
  afterAll(() => cleanup.run());
  const at = opts.at ?? crashAt;
  describe(opts.title, () => {
    it.each(opts.cells)(opts.cellTitle, async (point, back) => {
      await at(s, point, back);
    });
  });
}

/** The chain libvirt describes for the domain's disk (live XML), top first. */
async function libvirtChain(domain: string): Promise<string[]> {
  const disk = /<disk[\s\S]*?<\/disk>/.exec(await virsh(['dumpxml', domain]))?.[0] ?? '';
  return [...disk.matchAll(/<source file='([^']+)'/g)].map((m) => m[1]!);
}

/**
 * One live-rotate cell: crashAt, then what is special to live rotation: the VM was never paused
 * (libvirt's reason is still "booted"), libvirt describes exactly the chain QEMU reads, which is the
 * active layer on the volume's base (both on primary storage, nothing from the store), and QEMU
 * holds no leaked layer or fdset.
 */
export async function liveRotateCrashAt(s: CrashSetup, failpoint: string, rollsBack: boolean): Promise<void> {
  if (failpoint.endsWith(':export:during')) {
    // A frozen layer big enough that the export at 1 MiB/s is still running at its first progress.
    const big = { pattern: 0x5a, offset: 8 * MiB, length: 4 * MiB };
    await s.write([big]);
    await s.live.apply([big]);
  }
  await crashAt(s, failpoint, rollsBack);
  const vm = s.vm!;
  expect((await virsh(['domstate', '--reason', vm])).trim()).toBe('running (booted)');
  const described = await libvirtChain(vm);
  expect((await qemuChain(vm)).map((l) => l.filename)).toEqual(described);
  const base = join(s.pool, s.volumeFile);
  expect(described.at(-1)).toBe(base);
  expect(described.length).toBe(s.chain.length === 0 ? 1 : 2);
  const census = await blockCensus(vm);
  expect(census.qcow2Nodes).toHaveLength(census.chainDepth);
  expect(census.fdsets).toEqual(census.fdsetsInUse);
}
