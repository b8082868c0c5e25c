import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { createSnapshot } from '../../../src/snapshot/index.js';
import { libvirtSuite } from '../../support/libvirt-suite.js';
import { rotatingLoopLvmVolume } from '../../support/live-rotate-truth.js';
import { differsFromReference } from '../../support/reference-images.js';
import { command, FileStepJournal, jobContext } from '../../support/snapshot-harness.js';

const MiB = 1024 * 1024;
const { h, cleanup } = libvirtSuite('lrbcrash');
const SUPPORT = join(import.meta.dirname, '../../support');
const CHILD = join(SUPPORT, 'loop-lvm-create-child.ts');
const FAILPOINTS = join(SUPPORT, 'failpoints-preload.ts');

// Point of no return: the switch. Finishing cells first, so the rolled-back one is a delta too.
const cells: Array<[string, boolean]> = [
  ['live-rotate:switch:during', false], // libvirt switched, the journal still says started
  ['live-rotate:record-layer:after', false], // three layers: the commit is still to come
  ['live-rotate:commit-frozen:during', false], // libvirt's commit runs on without the agent
  ['live-rotate:remove-frozen:before', false], // merged, the old top's device still there
  ['live-rotate:create-overlay:after', true], // a new empty layer that must go
];

describe('crash matrix: live-rotate on block devices named like LVs', () => {
  it('kill -9 at each cell, recover: rolled back before the switch, finished after it; chain, devices and data right', async () => {
    const { vg, deps, dom, live, pool, r } = await rotatingLoopLvmVolume(h, cleanup, {
      label: 'lrbcrash',
      sizeBytes: 32 * MiB,
    });
    await r.write();
    await r.snapshot('first');

    for (const [point, rollsBack] of cells) {
      await r.write();
      const name = `snap-${r.names.length + 1}`;
      const ref = await live.freeze(join(h.base, `ref-${name}.raw`));
      const cmd = command('snapshot.create', {
        volume: pool.volumeRef('vol'),
        vm: dom.name,
        store: { root: h.storeRoot, dir: 'vol' },
        parents: r.names,
        snapshot: name,
      });
      const journal = join(h.base, `${cmd.id}.json`);
      const child = await execa(
        'node',
        [
          '--import',
          'tsx',
          '--import',
          FAILPOINTS,
          CHILD,
          JSON.stringify({ lvm: vg.spec, storeRoot: h.storeRoot, command: cmd, journal }),
        ],
        { reject: false, timeout: 300_000, env: { AGENT_FAILPOINTS: point }, all: true },
      );
      expect(child.signal, `${point}: ${child.all}`).toBe('SIGKILL');
      await r.write(); // while the "agent" is dead

      const recovery = createSnapshot(
        jobContext(cmd, await FileStepJournal.load(journal), { recovering: true }),
        deps,
      );
      if (rollsBack) {
        await expect(recovery, point).rejects.toMatchObject({ details: { rolledBack: true } });
      } else {
        const result = await recovery;
        expect(result.activePath, point).toBe(r.current);
        r.current = result.volumePath!;
        r.names.push(name);
        r.refs.push(ref.path);
        expect(await differsFromReference(result.snapshot.path, ref), point).toBeNull();
      }
      expect((await pool.layers()).sort(), point).toEqual(
        ['vol', r.current.slice(`/dev/${vg.vg}/`.length)].sort(),
      );
      await r.libvirtIsTruthful();
      await r.readBack();
      await r.snapshot(`after ${point}`);
    }
    await r.snapshotsStillRight();
  }, 600_000);
});
