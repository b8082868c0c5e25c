// snapshot.delete (first, middle, last; refusals), snapshot.revert (overlay, flatten) and
// chain.verify (good and damaged chains) on a file pool, plus cancel during an export.
// Oracles: raw references written with qemu-io, qemu-img compare/check/info.
import { copyFile, open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Command } from '../../../src/protocol/index.js';
import { createSnapshot, deleteSnapshot, revertSnapshot, verifyChain } from '../../../src/snapshot/index.js';
import { checkExitCode, infoOf, makeQcow2 } from '../../support/images.js';
import {
  assertLibvirtReady,
  Cleanup,
  removeDomain,
  startTestDomain,
} from '../../support/libvirt-fixtures.js';
import { differsFromReference, ReferenceDisk, roundWrites } from '../../support/reference-images.js';
import {
  command,
  FileStepJournal,
  type Harness,
  jobContext,
  makeHarness,
} from '../../support/snapshot-harness.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
const cleanup = new Cleanup();
let h: Harness;
const volume = () => ({ kind: 'file' as const, pool: h.pool, file: 'vol1.qcow2' });
const store = () => ({ root: h.storeRoot, dir: 'vol1' });
const snap = (n: number) => join(h.storeRoot, 'vol1', `snap-${n}`);
let active: string;
let live: ReferenceDisk;
const refs = new Map<number, ReferenceDisk>();

async function run(
  type: 'snapshot.create' | 'snapshot.delete' | 'snapshot.revert' | 'chain.verify',
  params: unknown,
  opts: { signal?: AbortSignal; onProgress?: (u: { step: string; percent?: number }) => void } = {},
): Promise<Record<string, unknown>> {
  const cmd: Command = command(type, params);
  const ctx = jobContext(cmd, new FileStepJournal(join(h.base, `${cmd.id}.json`)), opts);
  const handler = {
    'snapshot.create': createSnapshot,
    'snapshot.delete': deleteSnapshot,
    'snapshot.revert': revertSnapshot,
    'chain.verify': verifyChain,
  }[type] as (c: typeof ctx, d: typeof h.deps) => Promise<Record<string, unknown>>;
  return handler(ctx, h.deps);
}

async function expectMatches(path: string, ref: ReferenceDisk): Promise<void> {
  expect(await differsFromReference(path, ref)).toBeNull();
  expect(await checkExitCode(path)).toBe(0);
}

beforeAll(async () => {
  await assertLibvirtReady();
  h = await makeHarness('ops');
  cleanup.add('harness', () => h.cleanup());
  active = join(h.pool, 'vol1.qcow2');
  await makeQcow2(active, SIZE);
  live = await ReferenceDisk.create(join(h.base, 'live.raw'), SIZE);
  const names: string[] = [];
  for (let n = 1; n <= 5; n++) {
    const writes = roundWrites(100 + n, SIZE);
    await execa('qemu-io', [
      '-f',
      'qcow2',
      ...writes.flatMap((w) => ['-c', `write -q -P ${w.pattern} ${w.offset} ${w.length}`]),
      active,
    ]);
    await live.apply(writes);
    await run('snapshot.create', {
      volume: volume(),
      vm: null,
      store: store(),
      parents: names,
      snapshot: `snap-${n}`,
    });
    names.push(`snap-${n}`);
    refs.set(n, await live.freeze(join(h.base, `ref-${n}.raw`)));
  }
});
afterAll(() => cleanup.run());

describe('snapshot.delete', () => {
  it('refuses while a running VM has the chain open (no live merge), changing nothing', async () => {
    const dom = await startTestDomain(cleanup, { label: 'opsdel', disk: { type: 'file', path: active } });
    try {
      const chain = ['snap-1', 'snap-2', 'snap-3', 'snap-4', 'snap-5'];
      for (const target of ['snap-5', 'snap-3']) {
        const error = await run('snapshot.delete', {
          volume: volume(),
          vm: dom.name,
          store: store(),
          chain,
          snapshot: target,
        }).catch((e: unknown) => e);
        expect(error).toMatchObject({ code: 'SNAPSHOT_IN_USE', details: { rolledBack: true } });
        expect((error as Error).message).toMatch(/running VM/);
      }
    } finally {
      await removeDomain(dom.name);
    }
    for (let n = 1; n <= 5; n++) await expectMatches(snap(n), refs.get(n)!);
  });

  it('deletes a middle snapshot: its child takes its data and backs onto its parent by relative name', async () => {
    const result = await run('snapshot.delete', {
      volume: volume(),
      vm: null,
      store: store(),
      chain: ['snap-1', 'snap-2', 'snap-3', 'snap-4', 'snap-5'],
      snapshot: 'snap-3',
    });
    expect(result).toMatchObject({ deleted: 'snap-3', mergedInto: snap(4), childBacking: 'snap-2' });
    expect((await infoOf(snap(4)))['backing-filename']).toBe('snap-2');
    for (const n of [1, 2, 4, 5]) await expectMatches(snap(n), refs.get(n)!);
    await expectMatches(active, live);
  });

  it('deletes the first snapshot: the next one becomes standalone', async () => {
    await run('snapshot.delete', {
      volume: volume(),
      vm: null,
      store: store(),
      chain: ['snap-1', 'snap-2', 'snap-4', 'snap-5'],
      snapshot: 'snap-1',
    });
    expect((await infoOf(snap(2)))['backing-filename']).toBeUndefined();
    for (const n of [2, 4, 5]) await expectMatches(snap(n), refs.get(n)!);
  });

  it('deletes the last snapshot (stopped VM): the active volume takes its data and backs onto its parent', async () => {
    await run('snapshot.delete', {
      volume: volume(),
      vm: null,
      store: store(),
      chain: ['snap-2', 'snap-4', 'snap-5'],
      snapshot: 'snap-5',
    });
    expect((await infoOf(active))['backing-filename']).toBe(snap(4));
    await expectMatches(active, live);
    await expectMatches(snap(4), refs.get(4)!);
    expect((await readdir(join(h.storeRoot, 'vol1'))).sort()).toEqual(['snap-2', 'snap-4']);
  });

  it('refuses a chain that is not what the command says', async () => {
    const error = await run('snapshot.delete', {
      volume: volume(),
      vm: null,
      store: store(),
      chain: ['snap-4', 'snap-2'],
      snapshot: 'snap-4',
    }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'CHAIN_INVALID', details: { rolledBack: true } });
  });
});

describe('snapshot.revert', () => {
  it('refuses while the VM runs', async () => {
    const dom = await startTestDomain(cleanup, { label: 'opsrev', disk: { type: 'file', path: active } });
    try {
      const error = await run('snapshot.revert', {
        volume: volume(),
        vm: dom.name,
        store: store(),
        chain: ['snap-2', 'snap-4'],
        snapshot: 'snap-2',
      }).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'VM_STATE_INVALID', details: { rolledBack: true } });
    } finally {
      await removeDomain(dom.name);
    }
  });

  it('overlay: the volume becomes an empty overlay on the snapshot (same path), reading its data', async () => {
    const result = await run('snapshot.revert', {
      volume: volume(),
      vm: null,
      store: store(),
      chain: ['snap-2', 'snap-4'],
      snapshot: 'snap-2',
    });
    expect(result).toMatchObject({ activePath: active, mode: 'overlay', backing: snap(2) });
    expect((await infoOf(active))['backing-filename']).toBe(snap(2));
    await expectMatches(active, refs.get(2)!);
    expect(await readdir(h.pool)).toEqual(['vol1.qcow2']);
  });

  it('a snapshot with two children (snap-4 and the reverted volume) is not deleted', async () => {
    const error = await run('snapshot.delete', {
      volume: volume(),
      vm: null,
      store: store(),
      chain: ['snap-2', 'snap-4'],
      snapshot: 'snap-2',
    }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'SNAPSHOT_IN_USE', retryable: false });
    expect((error as Error).message).toMatch(/also backs onto it/);
  });

  it('flatten: the volume becomes a standalone copy of the snapshot', async () => {
    const result = await run('snapshot.revert', {
      volume: volume(),
      vm: null,
      store: store(),
      chain: ['snap-2', 'snap-4'],
      snapshot: 'snap-4',
      mode: 'flatten',
    });
    expect(result).toMatchObject({ mode: 'flatten', backing: null });
    expect((await infoOf(active))['backing-filename']).toBeUndefined();
    await expectMatches(active, refs.get(4)!);
    expect(await readdir(h.pool)).toEqual(['vol1.qcow2']);
  });
});

describe('chain.verify', () => {
  it('passes a good chain and compares a snapshot with an image', async () => {
    const refQcow = join(h.storeRoot, 'ref-4.qcow2');
    await execa('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', refs.get(4)!.path, refQcow]);
    const result = await run('chain.verify', {
      store: store(),
      chain: ['snap-2', 'snap-4'],
      volume: volume(),
      compare: { snapshot: 'snap-4', image: refQcow },
    });
    expect(result).toMatchObject({ ok: true, compare: { identical: true } });
    expect(result.members).toHaveLength(2);
  });

  it('finds the damage in a damaged chain: absolute backing names, corruption, a wrong compare', async () => {
    const dir = join(h.storeRoot, 'damaged');
    await execa('mkdir', ['-p', dir]);
    for (const n of [2, 4]) await copyFile(snap(n), join(dir, `snap-${n}`));
    // Seed defect 4: an absolute backing path between store files.
    await execa('qemu-img', [
      'rebase',
      '-u',
      '-f',
      'qcow2',
      '-b',
      join(dir, 'snap-2'),
      '-F',
      'qcow2',
      join(dir, 'snap-4'),
    ]);
    let error = await run('chain.verify', {
      store: { root: h.storeRoot, dir: 'damaged' },
      chain: ['snap-2', 'snap-4'],
    }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'CHAIN_INVALID', details: { rolledBack: true } });
    expect((error as Error).message).toMatch(/absolute path/);

    // Corruption: garbage over snap-2's refcount table.
    const file = await open(join(dir, 'snap-2'), 'r+');
    await file.write(Buffer.alloc(64 * 1024, 0xff), 0, 64 * 1024, 64 * 1024);
    await file.close();
    error = await run('chain.verify', {
      store: { root: h.storeRoot, dir: 'damaged' },
      chain: ['snap-2'],
    }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'CHAIN_INVALID' });
    expect((error as Error).message).toMatch(/snap-2: qemu-img check/);

    const other = join(h.storeRoot, 'ref-2.qcow2');
    await execa('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', refs.get(2)!.path, other]);
    error = await run('chain.verify', {
      store: store(),
      chain: ['snap-2', 'snap-4'],
      compare: { snapshot: 'snap-4', image: other },
    }).catch((e: unknown) => e);
    expect((error as Error).message).toMatch(/snap-4 differs/);
  });
});

describe('cancel during the export', () => {
  it('stops the export, rolls everything back and leaves no temporary file', async () => {
    const slow = await makeHarness('opscancel', { failpoints: 'export-rate=4M' });
    try {
      const vol = join(slow.pool, 'big.qcow2');
      await makeQcow2(vol, 64 * MiB);
      await execa('qemu-io', ['-f', 'qcow2', '-c', 'write -q -P 0x5a 0 40M', vol]);
      const before = join(slow.base, 'before.qcow2');
      await copyFile(vol, before);
      const controller = new AbortController();
      const cmd = command('snapshot.create', {
        volume: { kind: 'file', pool: slow.pool, file: 'big.qcow2' },
        vm: null,
        store: { root: slow.storeRoot, dir: 'big' },
        snapshot: 'snap-1',
      });
      const ctx = jobContext(cmd, new FileStepJournal(join(slow.base, 'j.json')), {
        signal: controller.signal,
        onProgress: (u) => {
          if (u.step === 'export' && (u.percent ?? 0) > 0) controller.abort();
        },
      });
      const started = Date.now();
      const error = await createSnapshot(ctx, slow.deps).catch((e: unknown) => e);
      expect(error).toMatchObject({
        code: 'JOB_CANCELLED',
        details: { rolledBack: true, step: 'export' },
      });
      expect(Date.now() - started).toBeLessThan(8000); // 40 MiB at 4 MiB/s would take 10 s
      expect(await readdir(slow.pool)).toEqual(['big.qcow2']);
      expect(await readdir(join(slow.storeRoot, 'big'))).toEqual([]);
      expect((await infoOf(vol))['backing-filename']).toBeUndefined();
      expect(await execa('qemu-img', ['compare', vol, before]).then((r) => r.exitCode)).toBe(0);
    } finally {
      await slow.cleanup();
    }
  });
});
