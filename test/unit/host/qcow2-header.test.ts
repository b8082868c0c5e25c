// The in-process QCOW2 header reader against images qemu-img made, with qemu-img info as the oracle
// (virtual size, cluster size, backing name as written and resolved, backing format, whole chains).
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  chainFromHeaders,
  readQcow2Header,
  resolveBackingPath,
  topLayerDataBytes,
} from '../../../src/host/qcow2-header.js';
import { dataBytes, type MapEntry } from '../../../src/host/qemu-img.js';

interface Info {
  filename: string;
  'virtual-size': number;
  'cluster-size'?: number;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
}

async function qemuImgChain(path: string): Promise<Info[]> {
  const { stdout } = await execa('qemu-img', ['info', '--output=json', '--backing-chain', '-U', path]);
  return JSON.parse(stdout) as Info[];
}

async function create(path: string, size: string, ...opts: string[]): Promise<void> {
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', ...opts, path, size]);
}

describe('QCOW2 header reader', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'h16-qcow2-header-'));
    await mkdir(join(dir, 'sub'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('reads what qemu-img info reads, for v2 and v3 images, any cluster size, relative and absolute backings', async () => {
    const base = join(dir, 'base.qcow2');
    await create(base, '1G', '-o', 'cluster_size=2M');
    const v2 = join(dir, 'v2.qcow2');
    await create(v2, '3000M', '-o', 'compat=0.10,cluster_size=512', '-b', 'base.qcow2', '-F', 'qcow2');
    const abs = join(dir, 'sub', "it's a long name with spaces é.qcow2");
    await create(abs, '5G', '-b', v2, '-F', 'qcow2');
    const rel = join(dir, 'sub', 'rel.qcow2');
    await create(rel, '5G', '-b', "it's a long name with spaces é.qcow2", '-F', 'qcow2');
    const dotted = join(dir, 'sub', 'dotted.qcow2');
    await create(dotted, '1G', '-b', '../base.qcow2', '-F', 'qcow2');

    for (const top of [base, v2, abs, rel, dotted]) {
      const oracle = await qemuImgChain(top);
      const ours = await chainFromHeaders(top);
      expect(ours).not.toBeNull();
      expect(
        ours!.map((m) => ({
          filename: m.filename,
          virtualSize: m.virtualSize,
          backingFile: m.backingFile,
          fullBackingFile: m.fullBackingFile,
          backingFormat: m.backingFormat,
        })),
      ).toEqual(
        oracle.map((i) => ({
          filename: i.filename,
          virtualSize: i['virtual-size'],
          backingFile: i['backing-filename'] ?? null,
          fullBackingFile: i['full-backing-filename'] ?? null,
          backingFormat: i['backing-filename-format'] ?? null,
        })),
      );
      const header = await readQcow2Header(top);
      expect(header?.clusterSize).toBe(oracle[0]!['cluster-size']);
    }
    expect((await readQcow2Header(v2))?.version).toBe(2);
    // As qemu-img: the relative name appended to the image's directory, not normalized.
    expect((await chainFromHeaders(dotted))?.map((m) => m.filename)).toEqual([
      dotted,
      `${dir}/sub/../base.qcow2`,
    ]);
  });

  it('leaves to qemu-img what only it reads: raw files and bases, protocols, missing files, loops', async () => {
    const raw = join(dir, 'disk.raw');
    await writeFile(raw, Buffer.alloc(1024 * 1024));
    expect(await readQcow2Header(raw)).toBeNull();
    expect(await chainFromHeaders(raw)).toBeNull();

    const onRaw = join(dir, 'on-raw.qcow2');
    await create(onRaw, '1M', '-b', 'disk.raw', '-F', 'raw');
    expect(await chainFromHeaders(onRaw)).toBeNull();
    expect((await readQcow2Header(onRaw))?.backingFormat).toBe('raw');

    const nbd = join(dir, 'nbd.qcow2');
    await create(nbd, '1M', '-u', '-b', 'nbd:127.0.0.1:1', '-F', 'raw');
    expect(resolveBackingPath(nbd, 'nbd:127.0.0.1:1')).toBeNull();
    expect(await chainFromHeaders(nbd)).toBeNull();

    const dangling = join(dir, 'dangling.qcow2');
    await create(dangling, '1M', '-u', '-b', 'gone.qcow2', '-F', 'qcow2');
    expect(await chainFromHeaders(dangling)).toBeNull();

    const a = join(dir, 'loop-a.qcow2');
    const b = join(dir, 'loop-b.qcow2');
    await create(a, '1M', '-u', '-b', 'loop-b.qcow2', '-F', 'qcow2');
    await create(b, '1M', '-u', '-b', 'loop-a.qcow2', '-F', 'qcow2');
    expect(await chainFromHeaders(a)).toBeNull();
  });

  it('sees a backing name rewritten by qemu-img rebase -u', async () => {
    const base = join(dir, 'rb-base.qcow2');
    const other = join(dir, 'rb-other.qcow2');
    const top = join(dir, 'rb-top.qcow2');
    await create(base, '1M');
    await create(other, '1M');
    await create(top, '1M', '-b', 'rb-base.qcow2', '-F', 'qcow2');
    await execa('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', other, '-F', 'qcow2', top]);
    expect(await readQcow2Header(top)).toMatchObject({ backingFile: other, backingFormat: 'qcow2' });
  });

  it("counts the top layer's data as qemu-img map does (zeros, discards, compressed, partial last cluster)", async () => {
    const oracle = async (path: string) => {
      const { stdout } = await execa('qemu-img', ['map', '--output=json', '-U', '-f', 'qcow2', path]);
      return dataBytes(JSON.parse(stdout) as MapEntry[], { topOnly: true });
    };
    const io = (path: string, ...cmds: string[]) =>
      execa('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), path]);
    const base = join(dir, 'map-base.qcow2');
    await create(base, '64M');
    await io(base, 'write -P 1 0 8M');
    const cases: Array<{ name: string; opts: string[]; size: string; cmds: string[] }> = [
      { name: 'empty', opts: [], size: '64M', cmds: [] },
      {
        name: 'writes, zeros, discard',
        opts: ['-b', 'map-base.qcow2', '-F', 'qcow2'],
        size: '64M',
        cmds: [
          'write -P 2 100k 300k',
          'write -P 3 9M 5M',
          'write -z 20M 2M',
          'write -P 4 30M 1M',
          'discard 30M 64k',
        ],
      },
      {
        name: 'zero with allocation',
        opts: [],
        size: '64M',
        cmds: ['write -P 5 0 1M', 'write -z 512k 256k'],
      },
      { name: 'partial last cluster', opts: [], size: '1000000', cmds: ['write -P 6 900000 100000'] },
      {
        name: '512-byte clusters v2',
        opts: ['-o', 'cluster_size=512,compat=0.10'],
        size: '8M',
        cmds: ['write -P 7 3k 70k'],
      },
      {
        name: '2 MiB clusters',
        opts: ['-o', 'cluster_size=2M'],
        size: '1G',
        cmds: ['write -P 8 5M 1k', 'write -P 8 700M 3M'],
      },
    ];
    for (const c of cases) {
      const path = join(dir, `map-${c.name.replaceAll(' ', '-')}.qcow2`);
      await create(path, c.size, ...c.opts);
      if (c.cmds.length > 0) await io(path, ...c.cmds);
      expect({ name: c.name, bytes: await topLayerDataBytes(path) }).toEqual({
        name: c.name,
        bytes: await oracle(path),
      });
    }
    // Compressed clusters (qemu-img convert -c) count as data.
    const compressed = join(dir, 'map-compressed.qcow2');
    await execa('qemu-img', ['convert', '-c', '-f', 'qcow2', '-O', 'qcow2', base, compressed]);
    expect(await topLayerDataBytes(compressed)).toBe(await oracle(compressed));
    expect(await topLayerDataBytes(compressed)).toBe(8 * 1024 * 1024);
    // Extended L2 entries (subclusters): left to qemu-img.
    const extended = join(dir, 'map-extended.qcow2');
    await create(extended, '8M', '-o', 'extended_l2=on');
    expect(await topLayerDataBytes(extended)).toBeNull();
  });
});
