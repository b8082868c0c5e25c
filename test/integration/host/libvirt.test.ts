// Libvirt adapter against real libvirtd + QEMU (TCG, no guest OS): versions, state, suspend/resume,
// disks, node names of a two-layer chain, change-backing-file, QMP/HMP errors, guest-agent absence.
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostCommandError, QmpError, ValidationError } from '../../../src/errors/index.js';
import { Libvirt } from '../../../src/host/libvirt.js';
import {
  assertLibvirtReady,
  Cleanup,
  checkImage,
  createQcow2,
  expectPattern,
  guestFlush,
  guestWrite,
  imageInfo,
  LIBVIRT_URI,
  makeDisk,
  makeTempDir,
  startTestDomain,
  sweepStaleTestResources,
  type TestDomain,
  uniqueName,
} from '../../support/libvirt-fixtures.js';

const KiB = 1024;
const MiB = 1024 * KiB;

describe('Libvirt adapter (file disk with a backing file)', () => {
  const cleanup = new Cleanup();
  const libvirt = new Libvirt({ uri: LIBVIRT_URI, timeoutMs: 30_000 });
  let dir: string;
  let dom: TestDomain;
  let plainDom: TestDomain;

  beforeAll(async () => {
    await assertLibvirtReady();
    await sweepStaleTestResources();
    dir = await makeTempDir(cleanup, 'libvirt');
    // base.qcow2 holds 0x5a at 1 MiB; the domain's disk is top.qcow2 with a RELATIVE backing name.
    const base = join(dir, 'base.qcow2');
    await createQcow2(base, 16);
    await execa('qemu-io', ['-f', 'qcow2', '-c', `write -q -P 0x5a ${MiB} ${64 * KiB}`, base]);
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2'], {
      cwd: dir,
    });
    dom = await startTestDomain(cleanup, {
      label: 'libvirt',
      disk: { type: 'file', path: join(dir, 'top.qcow2') },
      guestAgentChannel: true,
    });
    const plainDisk = await makeDisk(cleanup, { dir, type: 'file', sizeMiB: 4 });
    plainDom = await startTestDomain(cleanup, { label: 'libvirt_plain', disk: plainDisk });
  });

  afterAll(() => cleanup.run());

  it('reports libvirt and QEMU versions and the QMP commands of a running domain', async () => {
    const versions = await libvirt.versions();
    expect(versions.libvirt).toMatch(/^\d+\.\d+\.\d+$/);
    expect(versions.qemu).toMatch(/^\d+\.\d+\.\d+$/);

    const qemu = await libvirt.qemuVersion(dom.name);
    expect(`${qemu.major}.${qemu.minor}.${qemu.micro}`).toBe(versions.qemu);

    const commands = await libvirt.qmpCommands(dom.name);
    for (const name of ['blockdev-add', 'blockdev-snapshot', 'blockdev-reopen', 'blockdev-del']) {
      expect(commands.has(name), name).toBe(true);
    }
    expect(commands.has('change-backing-file')).toBe(true);
    expect(commands.has('no-such-command')).toBe(false);
  });

  it('reads the domain state and reason, and suspends and resumes', async () => {
    expect(await libvirt.domainState(dom.name)).toEqual({ state: 'running', reason: 'booted' });
    expect(await libvirt.isRunning(dom.name)).toBe(true);
    try {
      await libvirt.suspend(dom.name);
      expect(await libvirt.domainState(dom.name)).toEqual({ state: 'paused', reason: 'user' });
      expect(await libvirt.isRunning(dom.name)).toBe(false);
    } finally {
      await libvirt.resume(dom.name);
    }
    expect(await libvirt.domainState(dom.name)).toEqual({ state: 'running', reason: 'unpaused' });
  });

  it('lists disks with type, device, target and source', async () => {
    expect(await libvirt.disks(dom.name)).toEqual([
      { type: 'file', device: 'disk', target: 'vda', source: join(dir, 'top.qcow2') },
    ]);
    expect(await libvirt.diskAlias(dom.name, 'vda')).toBe(dom.qdevId);
  });

  it('returns the node names of the chain, top first', async () => {
    const chain = await libvirt.diskChain(dom.name, 'vda');
    expect(chain).toHaveLength(2);
    const [top, base] = chain;
    expect(top).toMatchObject({
      driver: 'qcow2',
      fileDriver: 'file',
      filename: join(dir, 'top.qcow2'),
      backingFilename: join(dir, 'base.qcow2'),
      readOnly: false,
    });
    expect(base).toMatchObject({
      driver: 'qcow2',
      fileDriver: 'file',
      filename: join(dir, 'base.qcow2'),
      backingFilename: null,
      readOnly: true,
    });
    // The names are the ones QEMU knows: a query of each node succeeds.
    const names = new Set(
      (
        await libvirt.qmp<Array<{ 'node-name': string }>>(dom.name, 'query-named-block-nodes', { flat: true })
      ).map((n) => n['node-name']),
    );
    for (const node of chain) {
      expect(names.has(node.nodeName)).toBe(true);
      expect(names.has(node.fileNodeName ?? '')).toBe(true);
    }
    expect(top?.nodeName).not.toBe(base?.nodeName);
  });

  it('rewrites the backing file name of the running top image (change-backing-file)', async () => {
    const [top] = await libvirt.diskChain(dom.name, 'vda');
    if (!top) throw new Error('no top node');
    // The guest writes into top; a copy of base becomes the new backing.
    await guestWrite(dom, 0x77, 0, 64 * KiB);
    await guestFlush(dom);
    await execa(
      'qemu-img',
      ['convert', '-U', '-f', 'qcow2', '-O', 'qcow2', 'base.qcow2', 'base-copy.qcow2'],
      {
        cwd: dir,
      },
    );

    await libvirt.changeBackingFile(dom.name, {
      device: top.nodeName,
      imageNodeName: top.nodeName,
      backingFile: 'base-copy.qcow2',
    });

    const info = await imageInfo(join(dir, 'top.qcow2'));
    expect(info['backing-filename']).toBe('base-copy.qcow2');
    expect(info['backing-filename-format']).toBe('qcow2');
    // Only the header changed: QEMU keeps reading the base it has open.
    expect((await libvirt.diskChain(dom.name, 'vda'))[0]?.backingFilename).toBe(join(dir, 'base.qcow2'));
    // Read outside QEMU through the new header: guest data on top, base data from the copy.
    await expectPattern(join(dir, 'top.qcow2'), 0x77, 0, 64 * KiB);
    await expectPattern(join(dir, 'top.qcow2'), 0x5a, MiB, 64 * KiB);
    await checkImage(join(dir, 'top.qcow2'));
    expect(await libvirt.isRunning(dom.name)).toBe(true);
  });

  it('maps QMP errors to QmpError with the QEMU class and description', async () => {
    const badDel = await libvirt.blockdevDel(dom.name, 'no-such-node').catch((e: unknown) => e);
    expect(badDel).toBeInstanceOf(QmpError);
    expect(badDel).toMatchObject({
      code: 'QMP_GENERIC_ERROR',
      qmpClass: 'GenericError',
      command: 'blockdev-del',
      domain: dom.name,
    });
    expect((badDel as QmpError).desc).toContain('no-such-node');

    const [top] = await libvirt.diskChain(dom.name, 'vda');
    const badChange = await libvirt
      .changeBackingFile(dom.name, { device: top!.nodeName, imageNodeName: 'no-such-node', backingFile: 'x' })
      .catch((e: unknown) => e);
    expect(badChange).toBeInstanceOf(QmpError);
    expect((badChange as QmpError).desc).toMatch(/no-such-node/);

    const unknown = await libvirt.qmp(dom.name, 'no-such-command').catch((e: unknown) => e);
    expect(unknown).toMatchObject({ code: 'QMP_COMMAND_NOT_FOUND', qmpClass: 'CommandNotFound' });

    const hmpError = await libvirt
      .hmp(dom.name, 'qemu-io -d no-such-device "flush"')
      .catch((e: unknown) => e);
    expect(hmpError).toBeInstanceOf(QmpError);
    expect(hmpError).toMatchObject({ qmpClass: 'HmpError', code: 'QMP_HMP_ERROR' });
    expect((hmpError as QmpError).desc).toMatch(/no-such-device/);

    expect(await libvirt.hmp(dom.name, 'info version')).toMatch(/^\d+\.\d+\.\d+/);
  });

  it('fails with typed errors for a missing domain and for bad names', async () => {
    const missing = await libvirt.domainState(uniqueName('missing')).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(HostCommandError);
    expect(missing).toMatchObject({ kind: 'not-found', code: 'HOST_NOT_FOUND' });

    await expect(libvirt.domainState('--all')).rejects.toBeInstanceOf(ValidationError);
    await expect(libvirt.diskChain(dom.name, 'vda --x')).rejects.toMatchObject({
      code: 'INVALID_DISK_TARGET',
    });
    await expect(libvirt.diskChain(dom.name, 'vdz')).rejects.toMatchObject({ code: 'DISK_TARGET_NOT_FOUND' });
  });

  it('returns "unavailable" for fsfreeze/thaw when no guest agent answers', async () => {
    // Channel configured, nobody listening inside (no guest OS).
    const frozen = await libvirt.guestFreeze(dom.name);
    expect(frozen).toEqual({ unavailable: expect.stringMatching(/not connected|not responding/i) });
    const thawed = await libvirt.guestThaw(dom.name);
    expect(thawed).toEqual({ unavailable: expect.stringMatching(/not connected|not responding/i) });
    // No channel at all.
    expect(await libvirt.guestFreeze(plainDom.name)).toEqual({
      unavailable: expect.stringMatching(/not configured/i),
    });
    // A domain that does not exist is a real failure, not "unavailable".
    await expect(libvirt.guestFreeze(uniqueName('missing'))).rejects.toBeInstanceOf(HostCommandError);
  });

  it('times out a call that takes longer than its timeout', async () => {
    // A virsh process takes ~16 ms to start (the session answers in under 1 ms; its time-outs are
    // tested in test/unit/host/virsh-session.test.ts).
    const impatient = new Libvirt({ uri: LIBVIRT_URI, timeoutMs: 1, session: 'process' });
    await expect(impatient.versions()).rejects.toMatchObject({ kind: 'timeout', code: 'HOST_TIMEOUT' });
  });
});
