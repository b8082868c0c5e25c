// live-rotate crashes where the VM also changes while the agent is dead (kill -9 through
// AGENT_FAILPOINTS, real agent processes, RabbitMQ): the guest writes, then the domain is destroyed
// (and maybe started again, opening the chain by itself) before the agent restarts. Recovery must
// finish on whatever it finds (a stopped VM: the header is set offline; a fresh QEMU: the repoint
// works on libvirt's node names) and keep every flushed guest write: the live disk, read back
// through the domain's QEMU, equals the reference. A VM started again on the old top before the
// overlay took the volume's name is the one case that cannot finish: the agent stops and keeps
// the overlay (see the `keep` cells).
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventKindOf } from '../../../src/protocol/index.js';
import { checkExitCode, infoOf } from '../../helpers/images.js';
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
} from '../../helpers/libvirt-fixtures.js';
import {
  differsFromReference,
  type PatternWrite,
  ReferenceDisk,
  roundWrites,
} from '../../helpers/reference-images.js';
import { blockCensus, readBackThroughQemu } from '../../helpers/vm-watch.js';
import { AgentProcess, HostBus } from './agent-process.js';

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

/**
 * Kill at `failpoint`; while the agent is dead the guest writes and flushes, then the domain is
 * destroyed and (`restart`) started again; the agent restarts. `finish`: the job must finish.
 * `keep`: the VM was started again on the old top before the overlay got the volume's name, so the
 * guest no longer sees the overlay's writes; the agent must stop without promoting or deleting it.
 */
async function crashWithVmChange(
  failpoint: string,
  vm: 'destroy' | 'restart',
  outcome: 'finish' | 'keep',
): Promise<void> {
  round += 1;
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
  if (vm === 'restart') await virsh(['start', dom.name]);

  const second = AgentProcess.start(agentEnv());
  let data: { rolledBack?: boolean; error?: { code: string } };
  try {
    await bus.waitForStarted(++starts);
    const terminal = await bus.waitForTerminal(jobId);
    await new Promise((resolve) => setTimeout(resolve, 700));
    expect(bus.terminalsOf(jobId)).toHaveLength(1);
    data = terminal.data as typeof data;
    expect(eventKindOf(terminal.type), JSON.stringify(data)).toBe(
      outcome === 'finish' ? 'succeeded' : 'failed',
    );
  } finally {
    await second.stop();
  }
  const active = join(pool, 'vol.qcow2');
  if (outcome === 'finish') {
    chain.push(name);
    refs.push(ref);
    expect(await readdir(pool)).toEqual(['vol.qcow2']);
  } else {
    // Nothing was promoted and nothing deleted: the overlay holds exactly the writes made while
    // the agent was dead (read without its backing), which the restarted guest no longer sees.
    expect(data.rolledBack).toBe(false);
    expect(data.error?.code).toBe('VOLUME_STATE_UNEXPECTED');
    const left = (await readdir(pool)).filter((f) => f !== 'vol.qcow2');
    expect(left).toHaveLength(1);
    expect(left[0]).toMatch(/^vol\.qcow2\.stg-/);
    const overlay = join(pool, left[0]!);
    const alone = await ReferenceDisk.create(join(base, `overlay-${round}.raw`), SIZE);
    await alone.apply(whileDown);
    const standalone = `json:${JSON.stringify({
      driver: 'qcow2',
      file: { driver: 'file', filename: overlay },
      backing: null,
    })}`;
    expect(await differsFromReference(standalone, alone)).toBeNull();
    live = await ref.freeze(join(base, `live-${round}.raw`));
    await rm(overlay); // the operator's decision, after inspection
  }
  expect((await readdir(join(storeRoot, 'vol'))).sort()).toEqual([...chain].sort());
  for (const [i, member] of chain.entries()) {
    const path = join(storeRoot, 'vol', member);
    expect(await checkExitCode(path)).toBe(0);
    expect(await differsFromReference(path, refs[i]!)).toBeNull();
  }
  if (chain.length > 0)
    expect((await infoOf(active))['backing-filename']).toBe(join(storeRoot, 'vol', chain.at(-1)!));
  if (vm === 'destroy') {
    expect(await checkExitCode(active)).toBe(0);
    expect(await differsFromReference(active, live)).toBeNull();
    await virsh(['start', dom.name]);
  } else {
    const census = await blockCensus(dom.name);
    expect(census.qcow2Nodes).toHaveLength(census.chainDepth);
    expect(census.fdsets).toEqual(census.fdsetsInUse);
  }
  // The guest's view, through the domain's QEMU.
  const out = join(base, `readback-${round}.raw`);
  await readBackThroughQemu(dom.name, out, SIZE);
  const compare = await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', out, live.path], {
    reject: false,
  });
  expect(compare.exitCode, String(compare.stdout)).toBe(0);
}

describe('live-rotate: kill -9, and the VM is destroyed (and started) before the agent restarts', () => {
  it.each([
    ['live-rotate:promote-overlay:after', 'restart', 'finish'],
    ['live-rotate:export:after', 'destroy', 'finish'],
    ['live-rotate:switch:after', 'destroy', 'finish'],
    ['live-rotate:switch:during', 'destroy', 'finish'],
    ['live-rotate:verify:after', 'restart', 'finish'],
    // Started again before the overlay got the volume's name: the restart already dropped the
    // overlay's writes from the guest's view; the agent neither promotes nor deletes them.
    ['live-rotate:switch:after', 'restart', 'keep'],
    ['live-rotate:switch:during', 'restart', 'keep'],
    ['live-rotate:retire-active:after', 'restart', 'keep'],
    ['live-rotate:export:after', 'restart', 'finish'], // and the volume rotates again afterwards
  ] as const)('kill -9 at %s, VM %s: %s', async (point, vm, outcome) => {
    await crashWithVmChange(point, vm, outcome);
  });
});
