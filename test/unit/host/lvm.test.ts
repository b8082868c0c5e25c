// Command construction and report parsing of the LVM adapter. This host has no device-mapper, so the
// runner is a fake that records argv and answers with outputs recorded from real lvm2 2.03.16 in the lab
// guest (test/fixtures/lvm, recorded by test/lab/record-lvm-fixtures.sh). Real LVM runs in test/lab/suites.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  HostCommandError,
  LvmReportError,
  LvmVolumeInUseError,
  LvmVolumeNotFoundError,
  ValidationError,
} from '../../../src/errors/index.js';
import { classifyFailure, type RunOptions, type RunResult } from '../../../src/host/exec.js';
import { Lvm, parseLvsReport, parseVgsReport } from '../../../src/host/lvm.js';

const FIXTURES = join(import.meta.dirname, '../../fixtures/lvm');

interface Recorded {
  stdout: string;
  stderr: string;
  exitCode: number;
}

/** One recorded lvm2 call: stdout (NAME.json or NAME.out), stderr (NAME.err), exit code (NAME.rc). */
function fixture(name: string): Recorded {
  const read = (ext: string) => {
    const file = join(FIXTURES, `${name}.${ext}`);
    return existsSync(file) ? readFileSync(file, 'utf8') : undefined;
  };
  const rc = read('rc');
  if (rc === undefined) throw new Error(`no fixture ${name}.rc in ${FIXTURES}`);
  return { stdout: read('json') ?? read('out') ?? '', stderr: read('err') ?? '', exitCode: Number(rc) };
}

interface Call {
  file: string;
  args: string[];
  options: RunOptions;
}

/**
 * A runner answering each call with the next fixture, failing like runTool does on a non-zero exit;
 * device flushes are recorded (`flushed`), and fail for the devices in `failFlush` (an errno code).
 */
function fakeLvm(
  answers: Array<string | Recorded>,
  opts: { binaryDir?: string; failFlush?: Record<string, string> } = {},
) {
  const calls: Call[] = [];
  const flushed: string[] = [];
  const flushDevice = async (path: string): Promise<void> => {
    const code = opts.failFlush?.[path];
    if (code) throw Object.assign(new Error(`${code}: flush ${path}`), { code });
    flushed.push(path);
  };
  const queue = answers.map((a) => (typeof a === 'string' ? fixture(a) : a));
  const run = async (file: string, args: readonly string[], options: RunOptions): Promise<RunResult> => {
    calls.push({ file, args: [...args], options });
    const answer = queue.shift();
    if (!answer) throw new Error(`unexpected call: ${file} ${args.join(' ')}`);
    if (answer.exitCode !== 0) {
      throw new HostCommandError(classifyFailure(answer.stderr), `${file} failed`, {
        command: file,
        args,
        exitCode: answer.exitCode,
        stderr: answer.stderr,
      });
    }
    return { stdout: answer.stdout, stderr: answer.stderr, exitCode: 0, durationMs: 1 };
  };
  const lvm = new Lvm({ timeoutMs: 12_345, run, flushDevice, binaryDir: opts.binaryDir });
  return { lvm, calls, flushed, left: () => queue.length };
}

const ok = (stdout = ''): Recorded => ({ stdout, stderr: '', exitCode: 0 });
const REPORT = ['--reportformat', 'json', '--units', 'b', '--nosuffix'];
const LV_FIELDS = ['-o', 'lv_name,vg_name,lv_size,lv_attr,origin,lv_tags,data_percent,segtype'];
const MiB = 1024 * 1024;

describe('Lvm reports (real lvm2 2.03.16 output)', () => {
  it('reads the lvm2 version', async () => {
    const { lvm, calls } = fakeLvm(['lvm-version'], { binaryDir: '/sbin' });
    expect(await lvm.version()).toBe('2.03.16');
    expect(calls).toMatchObject([{ file: '/sbin/lvm', args: ['version'], options: { timeoutMs: 12_345 } }]);
  });

  it('lists LVs with size, activation, tags', async () => {
    const { lvm, calls } = fakeLvm(['lvs-volumes']);
    const volumes = await lvm.listVolumes('fixvg');
    expect(calls[0]).toMatchObject({ file: 'lvs', args: [...LV_FIELDS, ...REPORT, 'fixvg'] });
    expect(volumes.map((v) => v.name)).toEqual(['inactive', 'vol-1', 'vol.2+tagged']);
    const [inactive, vol1, tagged] = volumes;
    expect(inactive).toMatchObject({ activeHere: false, open: false, sizeBytes: 8 * MiB });
    expect(vol1).toEqual({
      vg: 'fixvg',
      name: 'vol-1',
      path: '/dev/fixvg/vol-1',
      sizeBytes: 12 * MiB,
      attr: '-wi-a-----',
      activeHere: true,
      open: false,
      origin: null,
      tags: [],
      snapshotPercent: null,
      snapshotInvalid: false,
      segType: 'linear',
    });
    expect(tagged?.tags).toEqual(['kind:qcow2', 'owner=agent']);
  });

  it('sees an LV held open (attr[5] == o), also after a rename', async () => {
    const { lvm } = fakeLvm(['lvs-open', 'lvs-renamed-open']);
    expect((await lvm.getVolume('fixvg', 'vol-1'))?.open).toBe(true);
    const renamed = (await lvm.listVolumes('fixvg')).find((v) => v.name === 'vol-1-renamed');
    expect(renamed).toMatchObject({ open: true, activeHere: true });
  });

  it('finds one LV through a selection, and undefined for a missing one', async () => {
    const { lvm, calls } = fakeLvm(['lvs-select-one', 'lvs-select-missing']);
    expect((await lvm.getVolume('fixvg', 'vol.2+tagged'))?.sizeBytes).toBe(8 * MiB);
    expect(await lvm.getVolume('fixvg', 'nothere')).toBeUndefined();
    expect(calls.map((c) => c.args)).toEqual([
      [...LV_FIELDS, ...REPORT, '--select', 'lv_name="vol.2+tagged"', 'fixvg'],
      [...LV_FIELDS, ...REPORT, '--select', 'lv_name="nothere"', 'fixvg'],
    ]);
  });

  it('fails with not-found when the VG is missing', async () => {
    const { lvm } = fakeLvm(['lvs-missing-vg', 'vgs-missing']);
    await expect(lvm.getVolume('novg', 'vol-1')).rejects.toMatchObject({ kind: 'not-found' });
    await expect(lvm.volumeGroup('novg')).rejects.toMatchObject({ code: 'HOST_NOT_FOUND' });
  });

  it('reads copy-on-write fill level and overflow', () => {
    const fresh = parseLvsReport(fixture('lvs-snapshot-fresh').stdout);
    expect(fresh.find((v) => v.name === 'vol-1')).toMatchObject({ origin: null, snapshotPercent: null });
    expect(fresh.find((v) => v.name === 'vol-1-cow')).toMatchObject({
      origin: 'vol-1',
      snapshotInvalid: false,
      sizeBytes: 4 * MiB,
    });
    const [partial] = parseLvsReport(fixture('lvs-snapshot-partial').stdout);
    expect(partial?.snapshotPercent).toBeGreaterThan(0);
    expect(partial?.snapshotPercent).toBeLessThan(100);
    const invalid = parseLvsReport(fixture('lvs-snapshot-invalid').stdout).find(
      (v) => v.name === 'vol-1-cow',
    );
    expect(invalid).toMatchObject({ snapshotInvalid: true, snapshotPercent: 100, origin: 'vol-1' });
  });

  it('reads VG size, free space, extent size and tags', async () => {
    const { lvm, calls } = fakeLvm(['vgs-used']);
    const vg = await lvm.volumeGroup('fixvg');
    expect(calls[0]?.args).toEqual([
      '-o',
      'vg_name,vg_size,vg_free,vg_extent_size,vg_tags,vg_attr',
      ...REPORT,
      'fixvg',
    ]);
    expect(vg).toMatchObject({ name: 'fixvg', extentSizeBytes: 4 * MiB, tags: ['pool-a'], shared: false });
    const [empty] = parseVgsReport(fixture('vgs-empty').stdout);
    // 12 + 8 + 8 MiB of LVs were created between the two reports.
    expect((empty?.freeBytes ?? 0) - vg.freeBytes).toBe(28 * MiB);
    expect(vg.sizeBytes).toBe(empty?.sizeBytes);
  });

  it('refuses a report it cannot read with a typed error', () => {
    expect(() => parseLvsReport('not json')).toThrow(LvmReportError);
    expect(() => parseLvsReport('{"report":[{"lv":[{"lv_name":"x"}]}]}')).toThrow(LvmReportError);
    const bad = fixture('lvs-open').stdout.replace('"12582912"', '"12.5"');
    expect(() => parseLvsReport(bad)).toThrow(/not whole bytes/);
  });
});

describe('Lvm commands', () => {
  it('rounds sizes up to whole extents', () => {
    const { lvm } = fakeLvm([]);
    expect(lvm.roundToExtents(1, 4 * MiB)).toBe(4 * MiB);
    expect(lvm.roundToExtents(4 * MiB, 4 * MiB)).toBe(4 * MiB);
    expect(lvm.roundToExtents(4 * MiB + 1, 4 * MiB)).toBe(8 * MiB);
    expect(() => lvm.roundToExtents(0, 4 * MiB)).toThrow(ValidationError);
  });

  it('creates an LV rounded up to the extent size, with tags', async () => {
    const { lvm, calls, flushed, left } = fakeLvm(['vgs-used', ok(), 'pvs-vg', 'lvs-select-one']);
    const created = await lvm.createVolume({
      vg: 'fixvg',
      name: 'vol.2+tagged',
      sizeBytes: 5 * MiB,
      tags: ['owner=agent', 'kind:qcow2'],
    });
    expect(calls[1]).toMatchObject({
      file: 'lvcreate',
      args: [
        '--yes',
        '--zero',
        'y',
        '--size',
        `${8 * MiB}b`,
        '--name',
        'vol.2+tagged',
        '--addtag',
        'owner=agent',
        '--addtag',
        'kind:qcow2',
        'fixvg',
      ],
    });
    expect(calls[2]).toMatchObject({
      file: 'pvs',
      args: ['-o', 'pv_name', ...REPORT, '--select', 'vg_name="fixvg"'],
    });
    expect(flushed).toEqual(['/dev/vda']);
    expect(created.name).toBe('vol.2+tagged');
    expect(left()).toBe(0);
    expect(calls.every((c) => c.options.timeoutMs === 12_345)).toBe(true);
  });

  it('reports no space and existing names as classified host errors', async () => {
    const noSpace = fakeLvm(['vgs-used', 'lvcreate-no-space']);
    await expect(
      noSpace.lvm.createVolume({ vg: 'fixvg', name: 'huge', sizeBytes: 2 ** 40 }),
    ).rejects.toMatchObject({ kind: 'no-space', code: 'HOST_NO_SPACE' });
    const exists = fakeLvm(['vgs-used', 'lvcreate-exists']);
    await expect(
      exists.lvm.createVolume({ vg: 'fixvg', name: 'vol-1', sizeBytes: MiB }),
    ).rejects.toBeInstanceOf(HostCommandError);
  });

  it('creates a copy-on-write snapshot', async () => {
    const { lvm, calls, flushed } = fakeLvm(['vgs-used', ok(), 'pvs-vg', 'lvs-snapshot-partial']);
    const snap = await lvm.createSnapshot({
      vg: 'fixvg',
      origin: 'vol-1',
      name: 'vol-1-cow',
      sizeBytes: 3 * MiB,
    });
    expect(calls[1]).toMatchObject({
      file: 'lvcreate',
      args: ['--yes', '--snapshot', '--size', `${4 * MiB}b`, '--name', 'vol-1-cow', 'fixvg/vol-1'],
    });
    expect(flushed).toEqual(['/dev/vda']);
    expect(snap.origin).toBe('vol-1');
  });

  it('removes an LV that is not open', async () => {
    const { lvm, calls, flushed } = fakeLvm(['lvs-select-one', 'lvremove-snapshot', 'pvs-vg']);
    await lvm.removeVolume('fixvg', 'vol.2+tagged');
    expect(calls[1]).toMatchObject({ file: 'lvremove', args: ['--yes', 'fixvg/vol.2+tagged'] });
    expect(flushed).toEqual(['/dev/vda']);
  });

  it('refuses to remove an open LV without calling lvremove', async () => {
    const { lvm, calls, flushed } = fakeLvm(['lvs-open']);
    const error = await lvm.removeVolume('fixvg', 'vol-1').catch((e: unknown) => e);
    expect(flushed).toEqual([]);
    expect(error).toBeInstanceOf(LvmVolumeInUseError);
    expect(error).toMatchObject({ code: 'LVM_VOLUME_IN_USE', retryable: true });
    expect(calls.map((c) => c.file)).toEqual(['lvs']);
  });

  it('maps lvremove "in use" (opened after the check) to LvmVolumeInUseError', async () => {
    const { lvm } = fakeLvm(['lvs-select-one', 'lvremove-open']);
    await expect(lvm.removeVolume('fixvg', 'vol.2+tagged')).rejects.toBeInstanceOf(LvmVolumeInUseError);
  });

  it('says when the LV to remove does not exist', async () => {
    const { lvm } = fakeLvm(['lvs-select-missing']);
    await expect(lvm.removeVolume('fixvg', 'nothere')).rejects.toBeInstanceOf(LvmVolumeNotFoundError);
  });

  it('renames and activates', async () => {
    const { lvm, calls } = fakeLvm(['lvrename-open', 'pvs-vg', ok(), ok(), ok(), ok()]);
    await lvm.renameVolume('fixvg', 'vol-1', 'vol-1-renamed');
    for (const mode of ['exclusive', 'shared', 'local', 'off'] as const)
      await lvm.activate('fixvg', 'vol-1', mode);
    expect(calls.map((c) => [c.file, ...c.args])).toEqual([
      ['lvrename', 'fixvg', 'vol-1', 'vol-1-renamed'],
      ['pvs', '-o', 'pv_name', ...REPORT, '--select', 'vg_name="fixvg"'],
      ['lvchange', '-aey', 'fixvg/vol-1'],
      ['lvchange', '-asy', 'fixvg/vol-1'],
      ['lvchange', '-aly', 'fixvg/vol-1'],
      ['lvchange', '-an', 'fixvg/vol-1'],
    ]);
  });
});

describe('Lvm makes its metadata changes durable (P5: lvm2 never flushes the disks)', () => {
  it('flushes every PV of the VG after each change, as pvs lists them then', async () => {
    const twoPvs = ok(
      JSON.stringify({ report: [{ pv: [{ pv_name: '/dev/vda' }, { pv_name: '/dev/vdb' }] }] }),
    );
    const { lvm, calls, flushed, left } = fakeLvm(['lvrename-open', 'pvs-vg', ok(), twoPvs, ok()]);
    await lvm.renameVolume('fixvg', 'vol-1', 'vol-1-old');
    await lvm.changeTags('fixvg', 'vol-1-old', { add: ['a'], remove: [] });
    await lvm.activate('fixvg', 'vol-1-old', 'exclusive'); // no metadata commit: no flush
    expect(calls.map((c) => c.file)).toEqual(['lvrename', 'pvs', 'lvchange', 'pvs', 'lvchange']);
    expect(flushed).toEqual(['/dev/vda', '/dev/vda', '/dev/vdb']);
    expect(left()).toBe(0);
  });

  it('throws a failed flush (never retried: a new descriptor would not see the error)', async () => {
    const { lvm, calls } = fakeLvm(['lvrename-open', 'pvs-vg'], { failFlush: { '/dev/vda': 'EIO' } });
    await expect(lvm.renameVolume('fixvg', 'vol-1', 'vol-1-old')).rejects.toMatchObject({ code: 'EIO' });
    expect(calls.map((c) => c.file)).toEqual(['lvrename', 'pvs']);
  });

  it('refuses a pvs report without a PV (nothing would be flushed)', async () => {
    const none = ok(JSON.stringify({ report: [{ pv: [] }] }));
    const { lvm } = fakeLvm(['lvrename-open', none]);
    await expect(lvm.renameVolume('fixvg', 'vol-1', 'vol-1-old')).rejects.toBeInstanceOf(LvmReportError);
  });
});

describe('Lvm refuses bad input before any tool runs', () => {
  const badNames = [
    '',
    'has space',
    "quo'te",
    'dq"uote',
    'semi;colon',
    '$(reboot)',
    '`id`',
    'new\nline',
    '-leading-dash',
    '--help',
    '.',
    '..',
    'a/b',
    '../etc',
    'snapshot1',
    'pvmove0',
    'vol_mlog',
    'vol_tmeta',
    'x'.repeat(128),
  ];

  it.each(badNames)('name %j', async (bad) => {
    const { lvm, calls } = fakeLvm([]);
    const attempts: Array<() => Promise<unknown>> = [
      () => lvm.listVolumes(bad),
      () => lvm.listVolumes('vg', bad),
      () => lvm.getVolume('vg', bad),
      () => lvm.volumeGroup(bad),
      () => lvm.createVolume({ vg: 'vg', name: bad, sizeBytes: MiB }),
      () => lvm.createVolume({ vg: bad, name: 'lv', sizeBytes: MiB }),
      () => lvm.createSnapshot({ vg: 'vg', origin: bad, name: 'cow', sizeBytes: MiB }),
      () => lvm.createSnapshot({ vg: 'vg', origin: 'lv', name: bad, sizeBytes: MiB }),
      () => lvm.removeVolume('vg', bad),
      () => lvm.renameVolume('vg', 'lv', bad),
      () => lvm.renameVolume('vg', bad, 'lv'),
      () => lvm.activate('vg', bad, 'exclusive'),
      () => lvm.activate(bad, 'lv', 'off'),
    ];
    for (const attempt of attempts) {
      const error = await attempt().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ValidationError);
      expect(error).toMatchObject({ code: 'INVALID_NAME' });
    }
    expect(calls).toEqual([]);
  });

  it.each([0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 60])('size %s', async (size) => {
    const { lvm, calls } = fakeLvm([]);
    await expect(lvm.createVolume({ vg: 'vg', name: 'lv', sizeBytes: size })).rejects.toMatchObject({
      code: 'INVALID_SIZE',
    });
    await expect(
      lvm.createSnapshot({ vg: 'vg', origin: 'lv', name: 'cow', sizeBytes: size }),
    ).rejects.toMatchObject({ code: 'INVALID_SIZE' });
    expect(calls).toEqual([]);
  });

  it.each(['', 'has space', 'semi;colon', '$(x)', 'new\nline', 'é'])('tag %j', async (tag) => {
    const { lvm, calls } = fakeLvm([]);
    await expect(
      lvm.createVolume({ vg: 'vg', name: 'lv', sizeBytes: MiB, tags: [tag] }),
    ).rejects.toMatchObject({ code: 'INVALID_TAG' });
    expect(calls).toEqual([]);
  });

  it('refuses an unknown activation mode', async () => {
    const { lvm, calls } = fakeLvm([]);
    // @ts-expect-error: a mode the type does not allow, as untyped input could carry.
    await expect(lvm.activate('vg', 'lv', 'both')).rejects.toBeInstanceOf(ValidationError);
    expect(calls).toEqual([]);
  });
});
