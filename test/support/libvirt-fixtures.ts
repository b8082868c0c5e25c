// Test fixtures for real libvirt + QEMU: temp dirs, QCOW2 files, loop devices, `type='qemu'` domains
// with one virtio disk, guest writes through HMP qemu-io, and read-back oracles outside QEMU.
// These call virsh, qemu-img, qemu-io and losetup directly: they are test oracles, not agent code.
//
// Usage:
//   const cleanup = new Cleanup();
//   afterAll(() => cleanup.run());          // or afterEach; runs even when a test failed
//   const dir = await makeTempDir(cleanup, 'rotation');
//   const disk = await makeDisk(cleanup, { dir, type: 'block', sizeMiB: 16 });
//   const dom = await startTestDomain(cleanup, { label: 'rotation', disk });
//   await guestWrite(dom, 0xab, 0, 65536); await guestFlush(dom);
//   await expectPattern(dom.disk.path, 0xab, 0, 65536);
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { uniqueSuffix } from './names.js';

/** libvirt URI of the tests (TEST_LIBVIRT_URI overrides). */
export const LIBVIRT_URI = process.env.TEST_LIBVIRT_URI ?? 'qemu:///system';

/** Every domain, temp dir and loop backing file the fixtures create starts with this. */
export const TEST_PREFIX = 'clvmt';

const TOOL_TIMEOUT_MS = 60_000;

/** A LIFO list of cleanup steps. `run()` runs every step even if some fail, then throws them all. */
export class Cleanup {
  private readonly steps: Array<{ label: string; fn: () => Promise<unknown> }> = [];

  add(label: string, fn: () => Promise<unknown>): void {
    this.steps.push({ label, fn });
  }

  async run(): Promise<void> {
    const errors: Error[] = [];
    for (let step = this.steps.pop(); step !== undefined; step = this.steps.pop()) {
      try {
        await step.fn();
      } catch (error) {
        errors.push(new Error(`cleanup "${step.label}" failed: ${String(error)}`, { cause: error }));
      }
    }
    if (errors.length > 0) throw new AggregateError(errors, errors.map((e) => e.message).join('; '));
  }
}

/** `clvmt-<label>-<pid>-<random>`: unique across test files running at the same time. */
export function uniqueName(label: string): string {
  return `${TEST_PREFIX}-${safeLabel(label)}-${uniqueSuffix()}`;
}

// Labels carry no '-', so sweepStaleTestResources can read the pid back out of a name.
function safeLabel(label: string): string {
  return label.replace(/[^A-Za-z0-9_]/g, '_');
}

export async function virsh(args: readonly string[]): Promise<string> {
  const { stdout } = await execa('virsh', ['-c', LIBVIRT_URI, ...args], { timeout: TOOL_TIMEOUT_MS });
  return stdout;
}

/** Fails with a message saying what is missing when libvirtd or QEMU cannot be used. */
export async function assertLibvirtReady(): Promise<void> {
  try {
    const out = await virsh(['version']);
    if (!/Running hypervisor: QEMU/.test(out)) throw new Error(`no QEMU hypervisor in:\n${out}`);
  } catch (error) {
    throw new Error(
      `libvirtd with QEMU is not usable at ${LIBVIRT_URI} (run: bash scripts/ensure-host.sh as root): ${String(error)}`,
    );
  }
}

/** A fresh directory under the system temp dir, removed by `cleanup`. */
export async function makeTempDir(cleanup: Cleanup, label: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `${TEST_PREFIX}-${safeLabel(label)}-${process.pid}-`));
  cleanup.add(`rm -r ${dir}`, () => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** `qemu-img create -f qcow2 [-u -b backing -F qcow2] path sizeMiB` (works on a block device too). */
export async function createQcow2(
  path: string,
  sizeMiB: number,
  opts: { backing?: string; unsafe?: boolean } = {},
): Promise<void> {
  const backing = opts.backing === undefined ? [] : ['-b', opts.backing, '-F', 'qcow2'];
  const unsafe = opts.unsafe && opts.backing !== undefined ? ['-u'] : [];
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', ...unsafe, ...backing, path, `${sizeMiB}M`], {
    timeout: TOOL_TIMEOUT_MS,
  });
}

/** A sparse file of `sizeMiB` attached to a free loop device; detached by `cleanup`. */
export async function makeLoopDevice(cleanup: Cleanup, dir: string, sizeMiB: number): Promise<string> {
  const file = join(dir, `loop-${randomBytes(3).toString('hex')}.img`);
  await execa('truncate', ['-s', `${sizeMiB}M`, file], { timeout: TOOL_TIMEOUT_MS });
  const { stdout } = await execa('losetup', ['--find', '--show', file], { timeout: TOOL_TIMEOUT_MS });
  const device = stdout.trim();
  if (!/^\/dev\/loop\d+$/.test(device)) throw new Error(`losetup printed ${JSON.stringify(stdout)}`);
  cleanup.add(`losetup -d ${device}`, () => detachLoop(device, file));
  return device;
}

async function detachLoop(device: string, file: string): Promise<void> {
  // Only detach if the device still serves our file (never another test's loop).
  const { stdout } = await execa('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE'], {
    timeout: TOOL_TIMEOUT_MS,
  });
  const list = JSON.parse(stdout || '{"loopdevices":[]}') as {
    loopdevices: Array<{ name: string; 'back-file': string | null }>;
  };
  const mine = list.loopdevices.some((d) => d.name === device && (d['back-file'] ?? '').startsWith(file));
  if (mine) await execa('losetup', ['-d', device], { timeout: TOOL_TIMEOUT_MS });
}

export interface TestDisk {
  type: 'file' | 'block';
  /** QCOW2 file, or the loop device holding a QCOW2. */
  path: string;
}

/** A QCOW2 disk of `sizeMiB` virtual size: a file in `dir`, or on a new loop device (2 MiB bigger). */
export async function makeDisk(
  cleanup: Cleanup,
  opts: { dir: string; type: 'file' | 'block'; sizeMiB: number; backing?: string; name?: string },
): Promise<TestDisk> {
  const path =
    opts.type === 'file'
      ? join(opts.dir, opts.name ?? `disk-${randomBytes(3).toString('hex')}.qcow2`)
      : await makeLoopDevice(cleanup, opts.dir, opts.sizeMiB + 2);
  await createQcow2(
    path,
    opts.sizeMiB,
    opts.backing === undefined ? {} : { backing: opts.backing, unsafe: true },
  );
  return { type: opts.type, path };
}

export interface TestDomain {
  name: string;
  /** Disk target inside the guest. */
  target: 'vda';
  /** QEMU qdev id of the disk (libvirt alias), for `qemu-io -d <qdevId>/virtio-backend`. */
  qdevId: string;
  disk: TestDisk;
}

/** Domain XML: TCG, 64 MiB, no OS, no network, no graphics, one virtio QCOW2 disk. */
export function domainXml(name: string, disk: TestDisk, opts: { guestAgentChannel?: boolean } = {}): string {
  const source =
    disk.type === 'file' ? `<source file='${xmlAttr(disk.path)}'/>` : `<source dev='${xmlAttr(disk.path)}'/>`;
  const agent = opts.guestAgentChannel
    ? "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
    : '';
  return `<domain type='qemu'>
  <name>${xmlAttr(name)}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='${disk.type}' device='disk'>
      <driver name='qemu' type='qcow2'/>
      ${source}
      <target dev='vda' bus='virtio'/>
    </disk>
    ${agent}
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

function xmlAttr(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;');
}

/**
 * Defines and starts a domain with `disk` as vda; `cleanup` destroys and undefines it.
 * `guestAgentChannel` adds the guest agent's virtio channel (no agent answers: there is no guest OS).
 */
export async function startTestDomain(
  cleanup: Cleanup,
  opts: { label: string; disk: TestDisk; guestAgentChannel?: boolean },
): Promise<TestDomain> {
  const name = uniqueName(opts.label);
  const dir = await mkdtemp(join(tmpdir(), `${TEST_PREFIX}-xml-`));
  try {
    const xmlFile = join(dir, 'domain.xml');
    await writeFile(xmlFile, domainXml(name, opts.disk, opts));
    await virsh(['define', xmlFile]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  cleanup.add(`destroy+undefine ${name}`, () => removeDomain(name));
  await virsh(['start', name]);
  const xml = await virsh(['dumpxml', name]);
  const qdevId = /<target dev='vda'[^>]*\/>\s*<alias name='([^']+)'\/>/.exec(xml)?.[1];
  if (qdevId === undefined) throw new Error(`no alias for vda in the live XML of ${name}`);
  return { name, target: 'vda', qdevId, disk: opts.disk };
}

/** Destroys (if running) and undefines a domain; a domain that is already gone is fine. */
export async function removeDomain(name: string): Promise<void> {
  const list = await virsh(['list', '--all', '--name']);
  if (!list.split('\n').some((line) => line.trim() === name)) return;
  const state = await virsh(['domstate', name]);
  if (state.trim() !== 'shut off') await virsh(['destroy', name]);
  // A transient domain disappears with destroy.
  const after = await virsh(['list', '--all', '--name']);
  if (after.split('\n').some((line) => line.trim() === name)) await virsh(['undefine', name]);
}

/**
 * Removes domains, loop devices and temp dirs left by test processes that no longer exist
 * (e.g. a killed vitest worker). Names carry the pid, so live tests are never touched.
 */
export async function sweepStaleTestResources(): Promise<void> {
  const dead = (name: string): boolean => {
    const pid = Number(new RegExp(`^${TEST_PREFIX}-[A-Za-z0-9_]+-(\\d+)-`).exec(name)?.[1]);
    if (!Number.isInteger(pid) || pid <= 0) return false;
    try {
      process.kill(pid, 0);
      return false;
    } catch {
      return true;
    }
  };
  for (const name of (await virsh(['list', '--all', '--name'])).split('\n').map((l) => l.trim())) {
    if (name.startsWith(`${TEST_PREFIX}-`) && dead(name)) await removeDomain(name);
  }
  const { stdout } = await execa('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE'], {
    timeout: TOOL_TIMEOUT_MS,
  });
  const loops = (
    JSON.parse(stdout || '{"loopdevices":[]}') as {
      loopdevices: Array<{ name: string; 'back-file': string | null }>;
    }
  ).loopdevices;
  const tmpPrefix = `${tmpdir()}/${TEST_PREFIX}-`;
  for (const loop of loops) {
    const backFile = loop['back-file'] ?? '';
    const dir = backFile.slice(tmpdir().length + 1).split('/')[0] ?? '';
    if (backFile.startsWith(tmpPrefix) && dead(dir)) {
      await execa('losetup', ['-d', loop.name], { timeout: TOOL_TIMEOUT_MS });
    }
  }
  for (const entry of await readdir(tmpdir())) {
    if (entry.startsWith(`${TEST_PREFIX}-`) && dead(entry)) {
      await rm(join(tmpdir(), entry), { recursive: true, force: true });
    }
  }
}

/** Sends an HMP command line through QMP `human-monitor-command`; throws if HMP printed an error. */
export async function hmp(domain: string, commandLine: string): Promise<string> {
  const reply = JSON.parse(
    await virsh([
      'qemu-monitor-command',
      domain,
      JSON.stringify({ execute: 'human-monitor-command', arguments: { 'command-line': commandLine } }),
    ]),
  ) as { return?: string; error?: { class: string; desc: string } };
  if (reply.error) throw new Error(`HMP ${commandLine}: ${reply.error.class}: ${reply.error.desc}`);
  const out = reply.return ?? '';
  if (/^\s*Error/.test(out)) throw new Error(`HMP ${commandLine}: ${out.trim()}`);
  return out;
}

/** The guest writes `length` bytes of `pattern` at `offset` (qemu-io inside QEMU, on the disk's device). */
export async function guestWrite(
  dom: TestDomain,
  pattern: number,
  offset: number,
  length: number,
): Promise<void> {
  await hmp(
    dom.name,
    `qemu-io -d ${dom.qdevId}/virtio-backend "write -P ${hex(pattern)} ${offset} ${length}"`,
  );
}

/** Flushes the guest disk so QEMU's cached QCOW2 metadata reaches the image files. */
export async function guestFlush(dom: TestDomain): Promise<void> {
  await hmp(dom.name, `qemu-io -d ${dom.qdevId}/virtio-backend "flush"`);
}

/**
 * Oracle: reads `image` (and its backing chain) outside QEMU with force-share and checks every byte
 * of the range equals `pattern`. Throws with qemu-io's output otherwise.
 */
export async function expectPattern(
  image: string,
  pattern: number,
  offset: number,
  length: number,
): Promise<void> {
  const result = await execa(
    'qemu-io',
    ['-f', 'qcow2', '-r', '-U', '-c', `read -P ${hex(pattern)} ${offset} ${length}`, image],
    { timeout: TOOL_TIMEOUT_MS, reject: false },
  );
  const output = `${result.stdout}\n${result.stderr}`;
  if (result.exitCode !== 0 || /failed/i.test(output)) {
    throw new Error(
      `${image}: expected ${hex(pattern)} at ${offset}+${length}, qemu-io said: ${output.trim()}`,
    );
  }
}

/** Oracle: `qemu-img compare -U` (guest-visible content); true when identical. */
export async function imagesIdentical(a: string, b: string): Promise<boolean> {
  const result = await execa('qemu-img', ['compare', '-U', a, b], {
    timeout: TOOL_TIMEOUT_MS,
    reject: false,
  });
  if (result.exitCode === 0) return true;
  if (result.exitCode === 1) return false;
  throw new Error(`qemu-img compare ${a} ${b} failed (${result.exitCode}): ${result.stderr}`);
}

/** `qemu-img info -U --output=json` of one image (no chain). */
export async function imageInfo(path: string): Promise<{
  'backing-filename'?: string;
  'backing-filename-format'?: string;
  format: string;
  'virtual-size': number;
}> {
  const { stdout } = await execa('qemu-img', ['info', '-U', '--output=json', path], {
    timeout: TOOL_TIMEOUT_MS,
  });
  return JSON.parse(stdout);
}

/** `qemu-img check -U`: throws when the image has errors or leaks. */
export async function checkImage(path: string): Promise<void> {
  await execa('qemu-img', ['check', '-U', path], { timeout: TOOL_TIMEOUT_MS });
}

/**
 * Builds an expected image offline: a fresh QCOW2 of `sizeMiB` with the given writes applied in order.
 * Compare it with a guest's chain using `imagesIdentical`.
 */
export async function expectedImage(
  path: string,
  sizeMiB: number,
  writes: ReadonlyArray<{ pattern: number; offset: number; length: number }>,
): Promise<void> {
  await createQcow2(path, sizeMiB);
  const commands = writes.flatMap((w) => ['-c', `write -q -P ${hex(w.pattern)} ${w.offset} ${w.length}`]);
  if (commands.length > 0)
    await execa('qemu-io', ['-f', 'qcow2', ...commands, path], { timeout: TOOL_TIMEOUT_MS });
}

function hex(pattern: number): string {
  return `0x${pattern.toString(16).padStart(2, '0')}`;
}
