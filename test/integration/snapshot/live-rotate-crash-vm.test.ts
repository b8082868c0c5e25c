// live-rotate crashes where the VM also changes while the agent is dead (kill -9 through
// AGENT_FAILPOINTS, real agent processes, RabbitMQ): the guest writes, then the domain is destroyed
// (and maybe started again) before the agent restarts. libvirt tracked the switch, so a domain
// started again opens the new chain from libvirt's own description; recovery finishes on whatever
// it finds (a stopped VM: the old layers stay in the chain, described by libvirt, and the next
// rotation merges them) and keeps every flushed guest write: the live disk, read back through the
// domain's QEMU, equals the reference. The one case that cannot finish is a domain started from a
// description older than the switch (`stale`: a management plane that did not apply volumePath):
// the guest runs on the old top again; the agent stops and keeps the new layer (`keep`).
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentEvent, eventKindOf } from '../../../src/protocol/index.js';
import { AgentProcess, HostBus } from '../../support/agent-process.js';
import { checkExitCode } from '../../support/images.js';
import {
  assertLibvirtReady,
  Cleanup,
  createQcow2,
  guestFlush,
  guestWrite,
  makeTempDir,
  startTestDomain,
  type TestDomain,
  virsh,
} from '../../support/libvirt-fixtures.js';
import {
  differsFromReference,
  type PatternWrite,
  ReferenceDisk,
  roundWrites,
} from '../../support/reference-images.js';
import { blockCensus, readBackThroughQemu } from '../../support/vm-watch.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
const cleanup = new Cleanup();
let base: string;
let pool: string;
let storeRoot: string;
let bus: HostBus;
let dom: TestDomain;
let live: ReferenceDisk;
const chain: string[] = [];
const refs: ReferenceDisk[] = [];
let round = 0;
let starts = 0;

beforeAll(async () => {
  await assertLibvirtReady();
  base = await makeTempDir(cleanup, 'lrcrashvm');
  pool = join(base, 'pools', 'p1');
  storeRoot = join(base, 'store');
  await mkdir(pool, { recursive: true });
  await mkdir(storeRoot, { recursive: true });
  await createQcow2(join(pool, 'vol.qcow2'), SIZE / MiB);
  dom = await startTestDomain(cleanup, {
    label: 'lrcrashvm',
    disk: { type: 'file', path: join(pool, 'vol.qcow2') },
  });
  bus = await HostBus.open(`h7lrvm-${randomBytes(3).toString('hex')}`);
  cleanup.add('bus', () => bus.close());
  live = await ReferenceDisk.create(join(base, 'live.raw'), SIZE);
});
afterAll(() => cleanup.run());

async function write(writes: PatternWrite[]): Promise<void> {
  for (const w of writes) await guestWrite(dom, w.pattern, w.offset, w.length);
  await live.apply(writes);
}

function agentEnv() {
  return {
    hostId: bus.hostId,
    stateDir: join(base, 'state'),
    storeRoot,
    poolRoot: join(base, 'pools'),
    logFile: join(base, 'agent.log'),
    liveRotate: 'enabled' as const,
  };
}

/** The chain libvirt describes for the domain's disk (live, or the persistent one), top first. */
async function described(inactive = false): Promise<string[]> {
  const xml = await virsh(['dumpxml', ...(inactive ? ['--inactive'] : []), dom.name]);
  const disk = /<disk[\s\S]*?<\/disk>/.exec(xml)?.[0] ?? '';
  return [...disk.matchAll(/<source file='([^']+)'/g)].map((m) => m[1]!);
}

/**
 * Kill at `failpoint`; while the agent is dead the guest writes and flushes, then the domain is
 * destroyed and (`restart`) started again, or (`stale`) started from its description saved before
 * the job; the agent restarts. `finish`: the job must finish. `keep`: the guest runs on the old top
 * and no longer sees the new layer's writes; the agent must stop without merging or deleting it.
 */
async function crashWithVmChange(
  failpoint: string,
  vm: 'destroy' | 'restart' | 'stale',
  outcome: 'finish' | 'keep',
): Promise<void> {
  round += 1;
  const before = join(base, `before-${round}.xml`);
  await writeFile(before, await virsh(['dumpxml', '--inactive', dom.name]));
  await write(roundWrites(900 + round, SIZE));
  const ref = await live.freeze(join(base, `ref-${round}.raw`));
  const name = `snap-${round}`;
  const first = AgentProcess.start({ ...agentEnv(), failpoints: failpoint });
  await bus.waitForStarted(++starts);
  const jobId = bus.send('snapshot.create', {
    volume: { kind: 'file', pool, file: 'vol.qcow2' },
    vm: dom.name,
    store: { root: storeRoot, dir: 'vol' },
    parents: chain,
    snapshot: name,
    options: { strategy: 'live-rotate' },
  });
  expect((await first.exited).signal).toBe('SIGKILL');

  const whileDown = roundWrites(950 + round, SIZE);
  await write(whileDown);
  await guestFlush(dom);
  await virsh(['destroy', dom.name]);
  if (vm === 'stale') await virsh(['define', before]);
  if (vm !== 'destroy') await virsh(['start', dom.name]);

  const second = AgentProcess.start(agentEnv());
  let terminal: AgentEvent;
  try {
    await bus.waitForStarted(++starts);
    terminal = await bus.waitForTerminal(jobId);
  } finally {
    await second.stop();
  }
  // One terminal event, counted once the agent is gone and all it sent has arrived.
  await bus.drain(agentEnv().stateDir);
  expect(bus.terminalsOf(jobId)).toHaveLength(1);
  const data = terminal.data as {
    rolledBack?: boolean;
    error?: { code: string; details?: Record<string, unknown> };
  };
  expect(eventKindOf(terminal.type), JSON.stringify(data)).toBe(
    outcome === 'finish' ? 'succeeded' : 'failed',
  );
  if (outcome === 'finish') {
    chain.push(name);
    refs.push(ref);
  } else {
    // Nothing was merged and nothing deleted: the new layer holds exactly the writes made while
    // the agent was dead (read without its backing), which the restarted guest no longer sees.
    expect(data.rolledBack).toBe(false);
    expect(data.error?.code).toBe('VOLUME_STATE_UNEXPECTED');
    const layer = data.error?.details?.volumePath as string;
    expect(layer).toMatch(/\/vol\.qcow2\.lr-[a-d]$/);
    const alone = await ReferenceDisk.create(join(base, `overlay-${round}.raw`), SIZE);
    await alone.apply(whileDown);
    const standalone = `json:${JSON.stringify({
      driver: 'qcow2',
      file: { driver: 'file', filename: layer },
      backing: null,
    })}`;
    expect(await differsFromReference(standalone, alone)).toBeNull();
    live = await ref.freeze(join(base, `live-${round}.raw`));
    await rm(layer); // the operator's decision, after inspection
  }
  expect((await readdir(join(storeRoot, 'vol'))).sort()).toEqual([...chain].sort());
  for (const [i, member] of chain.entries()) {
    const path = join(storeRoot, 'vol', member);
    expect(await checkExitCode(path)).toBe(0);
    expect(await differsFromReference(path, refs[i]!)).toBeNull();
  }
  // libvirt's description (persistent while stopped) is a chain of the volume's own files in the
  // pool that holds the live data, and no other file of the volume is left there.
  const layers = await described(vm === 'destroy');
  expect(layers.at(-1)).toBe(join(pool, 'vol.qcow2'));
  expect((await readdir(pool)).filter((f) => !f.startsWith('.')).sort()).toEqual(
    layers.map((l) => l.slice(pool.length + 1)).sort(),
  );
  if (vm === 'destroy') {
    expect(await checkExitCode(layers[0]!)).toBe(0);
    expect(await differsFromReference(layers[0]!, live)).toBeNull();
    await virsh(['start', dom.name]);
  }
  expect(await described()).toEqual(layers);
  const census = await blockCensus(dom.name);
  expect(census.qcow2Nodes).toHaveLength(census.chainDepth);
  expect(census.fdsets).toEqual(census.fdsetsInUse);
  // The guest's view, through the domain's QEMU.
  const out = join(base, `readback-${round}.raw`);
  await readBackThroughQemu(dom.name, out, SIZE);
  const compare = await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', out, live.path], {
    reject: false,
  });
  expect(compare.exitCode, String(compare.stdout)).toBe(0);
}

describe('live-rotate: kill -9, and the VM is destroyed (and started) before the agent restarts', () => {
  // A stopped VM keeps its old layers (libvirt's description names them); the next rotation of
  // the running VM merges them: destroy and restart cells alternate.
  it.each([
    ['live-rotate:switch:during', 'destroy', 'finish'],
    ['live-rotate:verify:after', 'restart', 'finish'],
    ['live-rotate:switch:after', 'destroy', 'finish'],
    ['live-rotate:record-layer:after', 'restart', 'finish'],
    ['live-rotate:export:after', 'destroy', 'finish'],
    ['live-rotate:switch:after', 'restart', 'finish'],
    ['live-rotate:commit-frozen:before', 'destroy', 'finish'],
    ['live-rotate:switch:during', 'restart', 'finish'],
    // Started from the description saved before the job: the guest runs on the old top again.
    ['live-rotate:switch:after', 'stale', 'keep'],
  ] as const)('kill -9 at %s, VM %s: %s', async (point, vm, outcome) => {
    await crashWithVmChange(point, vm, outcome);
  });
});
