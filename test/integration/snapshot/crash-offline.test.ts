// Crash matrix, offline strategy (file pool, no VM), through RabbitMQ with real agent processes.
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { HostBus } from '../../support/agent-process.js';
import { type CrashSetup, crashAt } from '../../support/crash-matrix.js';
import { makeQcow2 } from '../../support/images.js';
import { ReferenceDisk } from '../../support/reference-images.js';

let s: CrashSetup;

beforeAll(async () => {
  const base = await mkdtemp(join(tmpdir(), `clvmt-crashoff-${process.pid}-`));
  const poolRoot = join(base, 'pools');
  const pool = join(poolRoot, 'p1');
  const storeRoot = join(base, 'store');
  await mkdir(pool, { recursive: true });
  await mkdir(storeRoot, { recursive: true });
  const active = join(pool, 'vol.qcow2');
  await makeQcow2(active, 32 * 1024 * 1024);
  s = {
    bus: await HostBus.open(`h7off-${randomBytes(3).toString('hex')}`),
    base,
    poolRoot,
    pool,
    storeRoot,
    volumeFile: 'vol.qcow2',
    vm: null,
    live: await ReferenceDisk.create(join(base, 'live.raw'), 32 * 1024 * 1024),
    write: async (writes) => {
      const commands = writes.flatMap((w) => ['-c', `write -q -P ${w.pattern} ${w.offset} ${w.length}`]);
      await execa('qemu-io', ['-f', 'qcow2', ...commands, active]);
    },
    settle: async () => {},
    strategy: 'offline',
    chain: [],
    refs: [],
    round: 0,
    agentStarts: 0,
  };
});
afterAll(async () => {
  await s?.bus.close();
  if (s) await rm(s.base, { recursive: true, force: true });
});

// Point of no return: promote-staging (the volume name opens the new overlay from then on).
// The finishing cells run first so the rolled-back ones are deltas on an existing chain.
const cells: Array<[string, boolean]> = [
  ['offline:promote-staging:after', false],
  ['offline:remove-retired:after', false],
  ['offline:create-staging:before', true],
  ['offline:create-staging:after', true],
  ['offline:export:during', true],
  ['offline:export:after', true],
  ['offline:publish:after', true],
  ['offline:verify:after', true],
  ['offline:rebase-staging:after', true],
  ['offline:retire-active:after', true],
];

describe('crash matrix: offline', () => {
  it.each(cells)(
    'kill -9 at %s, restart: rolled back = %s, chain intact, one terminal event',
    async (point, back) => {
      await crashAt(s, point, back);
    },
  );
});
