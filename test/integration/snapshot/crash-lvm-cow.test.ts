// Crash matrix, lvm-cow strategy (reflink file pool on XFS, running type='qemu' VM), through
// RabbitMQ with real agent processes; includes kills while the agent has the VM paused.
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { HostBus } from '../../support/agent-process.js';
import { type CrashSetup, crashAt } from '../../support/crash-matrix.js';
import {
  assertLibvirtReady,
  Cleanup,
  createQcow2,
  guestFlush,
  guestWrite,
  makeTempDir,
  startTestDomain,
} from '../../support/libvirt-fixtures.js';
import { ReferenceDisk } from '../../support/reference-images.js';
import { mountXfs } from '../../support/xfs.js';

const cleanup = new Cleanup();
let s: CrashSetup;

beforeAll(async () => {
  await assertLibvirtReady();
  const base = await makeTempDir(cleanup, 'crashcow');
  const xfs = await mountXfs(`clvmt-crashcow-${process.pid}`);
  cleanup.add('xfs', () => xfs.cleanup());
  const pool = join(xfs.mountPoint, 'p1');
  const storeRoot = join(base, 'store');
  await mkdir(pool, { recursive: true });
  await mkdir(storeRoot, { recursive: true });
  const active = join(pool, 'vol.qcow2');
  await createQcow2(active, 32);
  const dom = await startTestDomain(cleanup, { label: 'crashcow', disk: { type: 'file', path: active } });
  const bus = await HostBus.open(`h7cow-${randomBytes(3).toString('hex')}`);
  cleanup.add('bus', () => bus.close());
  s = {
    bus,
    base,
    poolRoot: xfs.mountPoint,
    pool,
    storeRoot,
    volumeFile: 'vol.qcow2',
    vm: dom.name,
    live: await ReferenceDisk.create(join(base, 'live.raw'), 32 * 1024 * 1024),
    write: async (writes) => {
      for (const w of writes) await guestWrite(dom, w.pattern, w.offset, w.length);
    },
    settle: () => guestFlush(dom),
    strategy: 'lvm-cow',
    chain: [],
    refs: [],
    round: 0,
    agentStarts: 0,
  };
});
afterAll(() => cleanup.run());

// Point of no return: repoint (the active image's header names the new snapshot).
const cells: Array<[string, boolean]> = [
  ['lvm-cow:repoint:after', false],
  ['lvm-cow:clone:before', true],
  ['lvm-cow:clone:during', true], // VM paused by the agent
  ['lvm-cow:clone:after', true],
  ['lvm-cow:export:during', true],
  ['lvm-cow:export:after', true],
  ['lvm-cow:publish:after', true],
  ['lvm-cow:verify:after', true],
  ['lvm-cow:remove-clone:after', true],
  ['lvm-cow:repoint:during', true], // VM paused by the agent, header not yet changed
];

describe('crash matrix: lvm-cow with a running VM', () => {
  it.each(cells)(
    'kill -9 at %s, restart: rolled back = %s, chain intact, VM running, one terminal event',
    async (point, back) => {
      await crashAt(s, point, back);
    },
  );
});
