// Offline strategy (stopped VM / no VM) on a file pool: a chain of 12 snapshots with writes between
// them; after every snapshot each snapshot (through its own chain) equals the reference at its
// moment and the active disk equals the current data. Oracles: qemu-img compare/check, raw references.
import { open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runTool } from '../../../src/host/exec.js';
import { QemuImg } from '../../../src/host/qemu-img.js';
import { SnapshotStore } from '../../../src/host/store.js';
import { createSnapshot } from '../../../src/snapshot/index.js';
import { checkExitCode, infoOf, makeQcow2 } from '../../support/images.js';
import { differsFromReference, ReferenceDisk, roundWrites } from '../../support/reference-images.js';
import {
  command,
  FileStepJournal,
  type Harness,
  jobContext,
  makeHarness,
} from '../../support/snapshot-harness.js';
import { STEP_ORDER } from '../../support/step-order.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
let h: Harness;

beforeAll(async () => {
  h = await makeHarness('offline');
});
afterAll(async () => {
  await h?.cleanup();
});

async function qemuIoWrite(image: string, writes: ReturnType<typeof roundWrites>): Promise<void> {
  const commands = writes.flatMap((w) => ['-c', `write -q -P ${w.pattern} ${w.offset} ${w.length}`]);
  await execa('qemu-io', ['-f', 'qcow2', ...commands, image], { timeout: 60_000 });
}

describe('offline strategy, file pool, no VM', () => {
  it('builds a 12-snapshot chain; every snapshot and the active disk match independent references', async () => {
    const active = join(h.pool, 'vol1.qcow2');
    await makeQcow2(active, SIZE);
    const live = await ReferenceDisk.create(join(h.base, 'ref-live.raw'), SIZE);
    const frozen: ReferenceDisk[] = [];
    const names: string[] = [];
    const store = { root: h.storeRoot, dir: 'vol1' };

    for (let round = 1; round <= 12; round++) {
      const writes = roundWrites(round, SIZE);
      await qemuIoWrite(active, writes);
      await live.apply(writes);
      const name = `snap-${round}`;
      const cmd = command('snapshot.create', {
        volume: { kind: 'file', pool: h.pool, file: 'vol1.qcow2' },
        vm: null,
        store,
        parents: names,
        snapshot: name,
        options: { strategy: 'auto', verify: round % 4 === 0 ? 'full' : 'metadata', maxChainLength: 8 },
      });
      const journal = new FileStepJournal(join(h.base, `${cmd.id}.json`));
      const ctx = jobContext(cmd, journal);
      const result = await createSnapshot(ctx, h.deps);
      names.push(name);
      frozen.push(await live.freeze(join(h.base, `ref-${round}.raw`)));

      expect(result.strategy.name).toBe('offline');
      expect(result.activePath).toBe(active);
      // Full on the first and when the chain reaches maxChainLength (8), delta otherwise.
      const expectFull = round === 1 || round === 9;
      expect(result.snapshot.kind).toBe(expectFull ? 'full' : 'delta');
      if (expectFull) expect(result.snapshot.fullReason).toBeTruthy();
      expect(result.snapshot.chainDepth).toBe(round <= 8 ? round : round - 8);
      expect(result.snapshot.parent).toBe(expectFull ? null : `snap-${round - 1}`);
      expect(result.steps.map((s) => s.name)).toEqual(STEP_ORDER.offline);
      expect(result.vmPauseMs).toBe(0);
      // Progress for every step, with bytes during the export.
      expect(new Set(ctx.updates.map((u) => u.step)).size).toBe(8);
      expect(ctx.updates.some((u) => u.step === 'export' && u.bytesTotal !== undefined)).toBe(true);

      // Relative backing between store files, absolute from the active volume.
      const snapInfo = await infoOf(join(h.storeRoot, 'vol1', name));
      expect(snapInfo['backing-filename']).toBe(expectFull ? undefined : `snap-${round - 1}`);
      expect((await infoOf(active))['backing-filename']).toBe(join(h.storeRoot, 'vol1', name));

      for (const [i, ref] of frozen.entries()) {
        const path = join(h.storeRoot, 'vol1', `snap-${i + 1}`);
        expect(await differsFromReference(path, ref)).toBeNull();
        expect(await checkExitCode(path)).toBe(0);
      }
      expect(await differsFromReference(active, live)).toBeNull();
      expect(await checkExitCode(active)).toBe(0);
    }
    // No temporary file left in the pool or the store.
    expect(await readdir(h.pool)).toEqual(['vol1.qcow2']);
    expect((await readdir(join(h.storeRoot, 'vol1'))).sort()).toEqual([...names].sort());
  });
});

describe('verify: metadata checks the new snapshot, not the whole chain', () => {
  it('runs qemu-img check once per snapshot at chain depth 5, and still fails a damaged new snapshot', async () => {
    const active = join(h.pool, 'vol2.qcow2');
    await makeQcow2(active, 8 * MiB);
    const calls: string[][] = [];
    const qemuImg = new QemuImg({
      timeoutMs: 60_000,
      exportTimeoutMs: 60_000,
      run: (file, args, options) => {
        calls.push([...args]);
        return runTool(file, args, options);
      },
    });
    const store = new SnapshotStore({ roots: [h.storeRoot], qemuImg });
    const deps = { ...h.deps, qemuImg, store };
    const names: string[] = [];
    const create = (name: string, d = deps) => {
      const cmd = command('snapshot.create', {
        volume: { kind: 'file', pool: h.pool, file: 'vol2.qcow2' },
        vm: null,
        store: { root: h.storeRoot, dir: 'vol2' },
        parents: names,
        snapshot: name,
        options: { strategy: 'offline', verify: 'metadata' },
      });
      return createSnapshot(jobContext(cmd, new FileStepJournal(join(h.base, `${cmd.id}.json`))), d);
    };
    for (let round = 1; round <= 5; round++) {
      await qemuIoWrite(active, roundWrites(round, 8 * MiB));
      calls.length = 0;
      const result = await create(`snap-${round}`);
      expect(result.snapshot.chainDepth).toBe(round);
      names.push(`snap-${round}`);
      const checks = calls.filter((a) => a[0] === 'check');
      expect(checks).toHaveLength(1);
      expect(checks[0]!.at(-1)).toBe(join(h.storeRoot, 'vol2', `snap-${round}`));
    }

    // A new snapshot damaged between publish and verify: its first refcount block zeroed (the
    // image still opens; only qemu-img check sees used clusters with refcount 0).
    const damaging = Object.create(store) as SnapshotStore;
    damaging.publish = async (part: string, final: string) => {
      await store.publish(part, final);
      const file = await open(final, 'r+');
      const header = Buffer.alloc(72);
      await file.read(header, 0, 72, 0);
      const table = Buffer.alloc(8);
      await file.read(table, 0, 8, Number(header.readBigUInt64BE(48)));
      await file.write(Buffer.alloc(4096), 0, 4096, Number(table.readBigUInt64BE(0)));
      await file.close();
    };
    await qemuIoWrite(active, roundWrites(6, 8 * MiB));
    const error = await create('snap-6', { ...deps, store: damaging }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'CHAIN_INVALID', details: { step: 'verify' } });
    expect((error as Error).message).toMatch(/snap-6: qemu-img check/);
    expect(await readdir(join(h.storeRoot, 'vol2'))).not.toContain('snap-6');
  });
});
