// live-rotate snapshot sizes: each snapshot holds exactly the clusters the guest wrote since the
// previous one. The guest writes whole 64 KiB clusters (the QCOW2 cluster size), so the expected
// data is the number of distinct clusters written in the round times 64 KiB: the snapshot's top
// layer maps exactly that many data bytes (`qemu-img map`, an oracle we did not write), and its
// allocated size (the result's physicalSize and `qemu-img info`'s actual-size) lies between that
// and that plus 1 MiB of QCOW2 metadata. Rewrites of old clusters count again; a round with no
// writes gives an empty delta.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { infoOf, mapOf } from '../../support/images.js';
import { guestFlush, guestWrite } from '../../support/libvirt-fixtures.js';
import { chainCommand, libvirtSuite, runningVolume } from '../../support/libvirt-suite.js';
import { differsFromReference, type PatternWrite } from '../../support/reference-images.js';
import { runCreate } from '../../support/snapshot-harness.js';

const MiB = 1024 * 1024;
const CLUSTER = 64 * 1024;
const METADATA = 1 * MiB;
const { h, cleanup } = libvirtSuite('lrsize');

/** Writes of whole clusters: [first cluster, cluster count, pattern]. */
function clusters(spec: Array<[number, number, number]>): PatternWrite[] {
  return spec.map(([first, count, pattern]) => ({
    pattern,
    offset: first * CLUSTER,
    length: count * CLUSTER,
  }));
}

/** Distinct clusters the writes touch, times the cluster size. */
function distinctBytes(writes: PatternWrite[]): number {
  const touched = new Set<number>();
  for (const w of writes) {
    for (let c = w.offset / CLUSTER; c < (w.offset + w.length) / CLUSTER; c++) touched.add(c);
  }
  return touched.size * CLUSTER;
}

/** Data bytes allocated in the image's own top layer (depth 0), from `qemu-img map`. */
async function topLayerDataBytes(path: string): Promise<number> {
  return (await mapOf(path)).filter((e) => e.depth === 0 && e.data).reduce((sum, e) => sum + e.length, 0);
}

// The 32 MiB disk has 512 clusters.
const rounds: PatternWrite[][] = [
  clusters([[0, 40, 0x11]]), // full: 40 clusters
  clusters([
    [100, 10, 0x21],
    [105, 10, 0x22], // overlaps the previous write: 15 distinct
    [0, 4, 0x23], // rewrites clusters of snapshot 1: they count again
  ]),
  [], // nothing written: an empty delta
  clusters([[200, 64, 0x41]]), // 4 MiB at once
  clusters([
    [10, 1, 0x51],
    [300, 1, 0x52],
    [511, 1, 0x53], // the disk's last cluster
  ]),
];

describe('live-rotate: a snapshot holds exactly the bytes written since the previous one', () => {
  it('sizes match the guest writes, round by round', async () => {
    const { active, dom, live } = await runningVolume(h, cleanup, { label: 'lrsize' });
    const names: string[] = [];
    const report: string[] = [];

    for (const [i, writes] of rounds.entries()) {
      const round = i + 1;
      for (const w of writes) await guestWrite(dom, w.pattern, w.offset, w.length);
      await live.apply(writes);
      const cmd = chainCommand(h, { dom, file: 'vol.qcow2', dir: 'vol', names }, `snap-${round}`, {
        strategy: 'live-rotate',
      });
      const result = await runCreate(h, cmd);
      names.push(`snap-${round}`);
      const frozen = await live.freeze(join(h.base, `ref-${round}.raw`));

      const path = result.snapshot.path;
      const expected = distinctBytes(writes);
      const actualSize = Number((await infoOf(path))['actual-size']);
      report.push(
        `snap-${round}: wrote ${expected}, data ${await topLayerDataBytes(path)}, ` +
          `physicalSize ${result.snapshot.physicalSize}, actual-size ${actualSize}`,
      );
      expect(result.strategy.name).toBe('live-rotate');
      expect(result.snapshot.kind).toBe(round === 1 ? 'full' : 'delta');
      expect(await topLayerDataBytes(path), report.at(-1)).toBe(expected);
      for (const size of [result.snapshot.physicalSize, actualSize]) {
        expect(size, report.at(-1)).toBeGreaterThanOrEqual(expected);
        expect(size, report.at(-1)).toBeLessThanOrEqual(expected + METADATA);
      }
      // The sizes say nothing if the content is wrong.
      expect(await differsFromReference(path, frozen)).toBeNull();
    }
    await guestFlush(dom);
    expect(await differsFromReference(active, live)).toBeNull();
    console.log(report.join('\n'));
  });
});
