// The symlink race: a snapshot job's paths are confined at intake, then the pool directory is
// swapped for a symlink to a directory outside the roots while the export runs (slowed with the
// host's export bandwidth limit). Every later qemu-img call re-resolves its paths: the job fails with
// PATH_ESCAPES_ROOTS, and the files outside the roots are neither read (atime) nor written.
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rename, rm, stat, symlink, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../../src/config/index.js';
import { AgentError } from '../../../src/errors/index.js';
import { silentLogger } from '../../../src/observability/logger.js';
import { createSnapshot, createSnapshotDeps } from '../../../src/snapshot/index.js';
import { makeQcow2 } from '../../support/images.js';
import { command, FileStepJournal, jobContext } from '../../support/snapshot-harness.js';

const MiB = 1024 * 1024;

/** Content hash, size, mtime and whether the file was read since armAtime, of every file under `dir`. */
async function fingerprint(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    const path = join(entry.parentPath, entry.name);
    const s = await stat(path);
    if (!entry.isFile()) continue;
    const hash = createHash('sha256')
      .update(await readFile(path))
      .digest('hex');
    // Our own read moved the atime: put it back, so that a read by anyone else still shows.
    await utimes(path, new Date(s.atimeMs), new Date(s.mtimeMs));
    // armAtime set whole seconds, which utimes restores exactly; atime "still before mtime" means
    // nobody read the file in between.
    out[path] = `${hash} size=${s.size} mtime=${s.mtimeMs} unread=${s.atimeMs < s.mtimeMs - 1000}`;
  }
  return out;
}

/**
 * Sets atime an hour before mtime (with relatime, the next read of the file moves its atime), both
 * in whole seconds: utimes takes seconds as a double, so sub-second times come back changed.
 */
async function armAtime(path: string): Promise<void> {
  const s = await stat(path);
  const mtime = Math.floor(s.mtimeMs / 1000) * 1000;
  await utimes(path, new Date(mtime - 3600_000), new Date(mtime));
}

describe('symlink swapped in during a running job', () => {
  let base: string;
  beforeAll(async () => {
    base = await mkdtemp(join(tmpdir(), 'i12-symlink-'));
  });
  afterAll(async () => {
    if (base) await rm(base, { recursive: true, force: true });
  });

  it('fails the job with a path code once the pool is swapped mid-export; qemu-img refuses swapped paths (PATH_ESCAPES_ROOTS); nothing outside the roots is read or written', async () => {
    const poolRoot = join(base, 'pools');
    const storeRoot = join(base, 'store');
    const pool = join(poolRoot, 'pool1');
    const outside = join(base, 'outside');
    await mkdir(pool, { recursive: true });
    await mkdir(storeRoot, { recursive: true });
    await mkdir(join(outside, 'pool1'), { recursive: true });
    const active = await makeQcow2(join(pool, 'vol.qcow2'), 16 * MiB);
    await execa('qemu-io', ['-f', 'qcow2', '-c', `write -q -P 0x5a 0 ${6 * MiB}`, active], {
      timeout: 60_000,
    });
    // What the swapped-in symlink leads to: an image of the same name outside the roots.
    const bait = await makeQcow2(join(outside, 'pool1', 'vol.qcow2'), 16 * MiB);
    await armAtime(bait);

    // Precondition of the read oracle: a read on this file system moves an armed atime.
    const control = await makeQcow2(join(base, 'control.qcow2'), MiB);
    await armAtime(control);
    const before = (await stat(control)).atimeMs;
    await readFile(control);
    expect((await stat(control)).atimeMs, 'atime does not move on reads here (noatime?)').toBeGreaterThan(
      before,
    );

    const { config } = loadConfig({
      env: {},
      overrides: {
        store: { roots: [storeRoot] },
        pools: { fileRoots: [poolRoot] },
        log: { level: 'silent' },
        limits: { exportBytesPerSecond: MiB },
      },
    });
    const deps = createSnapshotDeps(config, silentLogger());
    const outsideBefore = await fingerprint(outside);

    const cmd = command('snapshot.create', {
      volume: { kind: 'file', pool, file: 'vol.qcow2' },
      vm: null,
      store: { root: storeRoot, dir: 'vol' },
      parents: [],
      snapshot: 'snap-1',
      options: { strategy: 'offline' },
    });
    let swapped: Promise<void> | undefined;
    const ctx = jobContext(cmd, new FileStepJournal(join(base, 'journal.json')), {
      onProgress: (u) => {
        // Planned and checked; the export is running: swap the pool directory for a symlink out.
        if (swapped || u.step !== 'export' || !((u.percent ?? 0) > 0)) return;
        swapped = (async () => {
          await rename(pool, `${pool}.moved`);
          await symlink(join(outside, 'pool1'), pool);
        })();
      },
    });
    const error = await createSnapshot(ctx, deps).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(swapped, 'the export never reported progress: the swap did not happen').toBeDefined();
    await swapped;
    expect(error).toBeInstanceOf(AgentError);
    // The engine's own re-confinement of the next step's paths, or the qemu-img guard, whichever
    // touches the swapped directory first.
    expect(['PATH_OUTSIDE_ROOTS', 'PATH_ESCAPES_ROOTS'], String(error)).toContain((error as AgentError).code);
    expect(String((error as AgentError).message)).toContain(join(outside, 'pool1'));
    expect(await fingerprint(outside)).toEqual(outsideBefore);
    // Nothing was created outside either (no overlay, no snapshot file).
    expect((await readdir(join(outside, 'pool1'))).sort()).toEqual(['vol.qcow2']);

    // The qemu-img adapter itself (as the agent wires it): a path confined earlier, swapped since,
    // is refused before qemu-img runs, also as a relative backing file; the bait is not read.
    await expect(deps.qemuImg.info(active)).rejects.toMatchObject({ code: 'PATH_ESCAPES_ROOTS' });
    await rm(pool);
    await rename(`${pool}.moved`, pool);
    await symlink(join(outside, 'pool1', 'vol.qcow2'), join(pool, 'link.qcow2'));
    await expect(
      deps.qemuImg.create({
        path: join(pool, 'top.qcow2'),
        backing: { file: 'link.qcow2', format: 'qcow2' },
      }),
    ).rejects.toMatchObject({ code: 'PATH_ESCAPES_ROOTS' });
    expect(await fingerprint(outside)).toEqual(outsideBefore);
    // And an unswapped path still works through the same adapter.
    expect((await deps.qemuImg.info(active)).format).toBe('qcow2');
  });
});
