// L5 (docs/reliability.md) against a real QEMU: a commit into a base QEMU still has writable (its
// own read-only reopen at the end of an earlier commit failed) leaves the merged clusters' QCOW2
// tables only in QEMU's memory, so the base read from disk lacks them. QemuBlockGraph.sealLayer
// reopens the base read-only, which writes them, and reports a failing flush as QEMU's error.
// Oracle: qemu-io pattern reads of the base from outside QEMU. (A bare QEMU stands in for libvirt:
// no libvirt operation leaves a base writable on a healthy disk.)
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { QmpError } from '../../../src/errors/index.js';
import { type BlockGraphLibvirt, QemuBlockGraph } from '../../../src/host/block-graph.js';
import {
  type BlockdevOptions,
  chainFromGraph,
  type QmpBlockDeviceInfo,
  type QmpBlockGraph,
} from '../../../src/host/qmp.js';
import { QmpClient } from '../../support/lab/lab.js';

const MiB = 1024 * 1024;
const disk = { domain: 'vm', target: 'vda' };

/** The two libvirt calls sealLayer makes, over a bare QEMU's QMP socket. */
function bareLibvirt(client: QmpClient): BlockGraphLibvirt {
  const adapter = {
    async diskChain() {
      const graph = (await client.execute('x-debug-query-block-graph')) as QmpBlockGraph;
      const nodes = (await client.execute('query-named-block-nodes', { flat: true })) as QmpBlockDeviceInfo[];
      return chainFromGraph('vm', 'top', graph, nodes);
    },
    async blockdevReopen(_domain: string, options: BlockdevOptions[]) {
      await client.execute('blockdev-reopen', { options }); // QEMU's refusal: a QmpError
    },
  };
  return adapter as unknown as BlockGraphLibvirt;
}

/** base ← mid (0xab at 11 MiB) ← top, as QCOW2 files. */
async function images(dir: string): Promise<{ base: string; mid: string; top: string }> {
  const [base, mid, top] = ['base', 'mid', 'top'].map((n) => join(dir, `${n}.qcow2`)) as [
    string,
    string,
    string,
  ];
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', base, '64M']);
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', mid]);
  await execa('qemu-io', ['-c', `write -P 0xab ${11 * MiB} ${4 * MiB}`, mid]);
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', mid, '-F', 'qcow2', top]);
  return { base, mid, top };
}

/** Whether the base, read from disk by another process, holds the merged pattern. */
async function baseHoldsMerge(base: string): Promise<boolean> {
  const r = await execa('qemu-io', ['-U', '-r', '-c', `read -P 0xab ${11 * MiB} ${4 * MiB}`, base], {
    reject: false,
    timeout: 60_000,
  });
  if (r.exitCode === 0) return true;
  if (/Pattern verification failed/.test(r.stdout)) return false;
  throw new Error(`qemu-io failed (${r.exitCode}): ${r.stderr}${r.stdout}`);
}

describe('QemuBlockGraph.sealLayer (real QEMU)', () => {
  let dir: string;
  let qemu: ResultPromise;
  let client: QmpClient;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'seal-'));
    const socket = join(dir, 'qmp.sock');
    qemu = execa(
      'qemu-system-x86_64',
      [
        '-machine',
        'none',
        '-nodefaults',
        '-display',
        'none',
        '-accel',
        'tcg',
        '-qmp',
        `unix:${socket},server=on,wait=off`,
      ],
      { reject: false, timeout: 120_000 },
    );
    client = await QmpClient.connect(socket);
  });
  afterEach(async () => {
    client.close();
    qemu.kill('SIGKILL');
    await qemu;
    await rm(dir, { recursive: true, force: true });
  });

  /** Opens the chain with the base writable, as a failed read-only reopen leaves it. */
  async function openChain(
    paths: { base: string; mid: string; top: string },
    baseFile: Record<string, unknown>,
  ): Promise<void> {
    await client.execute('blockdev-add', {
      driver: 'qcow2',
      'node-name': 'base',
      'read-only': false,
      file: baseFile,
      backing: null,
    });
    await client.execute('blockdev-add', {
      driver: 'qcow2',
      'node-name': 'mid',
      'read-only': true,
      file: { driver: 'file', filename: paths.mid, 'node-name': 'mid-file' },
      backing: 'base',
    });
    await client.execute('blockdev-add', {
      driver: 'qcow2',
      'node-name': 'top',
      file: { driver: 'file', filename: paths.top, 'node-name': 'top-file' },
      backing: 'mid',
    });
  }

  async function commitMidIntoBase(): Promise<void> {
    await client.execute('block-commit', {
      device: 'top',
      'job-id': 'c',
      'top-node': 'mid',
      'base-node': 'base',
    });
    for (;;) {
      const jobs = (await client.execute('query-jobs')) as unknown[];
      if (jobs.length === 0) return;
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  it('a commit into a writable base leaves its tables in QEMU; sealing writes them and makes it read-only', async () => {
    const paths = await images(dir);
    await openChain(paths, { driver: 'file', filename: paths.base, 'node-name': 'base-file' });
    await commitMidIntoBase();
    // L5 itself: QEMU reads the merge, the disk does not have it.
    expect(await baseHoldsMerge(paths.base)).toBe(false);

    const graph = new QemuBlockGraph(bareLibvirt(client));
    await graph.sealLayer(disk, paths.base);
    expect(await baseHoldsMerge(paths.base)).toBe(true);
    const chain = await bareLibvirt(client).diskChain('vm', 'vda');
    expect(chain.map((n) => [n.filename, n.readOnly])).toEqual([
      [paths.top, false],
      [paths.base, true],
    ]);
    // Sealed once: a second call has nothing to do (and the top is never touched).
    await graph.sealLayer(disk, paths.base);
    await graph.sealLayer(disk, paths.top);
    expect((await qemuImgCheck(paths.base)).exitCode).toBe(0);
  });

  it("a base whose flush fails: sealLayer rejects with QEMU's error and the base stays writable", async () => {
    const paths = await images(dir);
    // The base's device fails every request from its first flush on (the commit does not flush).
    await openChain(paths, {
      driver: 'blkdebug',
      'node-name': 'base-file',
      'inject-error': [{ event: 'flush_to_os', errno: 5, once: false, immediately: false }],
      image: { driver: 'file', filename: paths.base, 'node-name': 'base-raw' },
    });
    await commitMidIntoBase();
    expect(await baseHoldsMerge(paths.base)).toBe(false);
    const graph = new QemuBlockGraph(bareLibvirt(client));
    // QEMU names a layer on blkdebug by a blkdebug: pseudo filename.
    const baseName = (await graph.chain(disk)).at(-1)!.filename;
    expect(baseName).toContain(paths.base);
    const sealed = graph.sealLayer(disk, baseName);
    await expect(sealed).rejects.toBeInstanceOf(QmpError);
    await expect(sealed).rejects.toMatchObject({ desc: expect.stringMatching(/flush/i) });
    expect(await baseHoldsMerge(paths.base)).toBe(false);
    expect((await graph.chain(disk)).at(-1)!.readOnly).toBe(false);
  });
});

function qemuImgCheck(path: string) {
  return execa('qemu-img', ['check', '-U', path], { reject: false, timeout: 60_000 });
}
