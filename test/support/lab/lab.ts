// Helpers of the lab suites (inside the lab guest, as root, real LVM). They call the real tools directly:
// they set up scenarios and act as oracles, they are not agent code.
import { randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  rmSync,
  statSync,
} from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { QmpError } from '../../../src/errors/index.js';

const TOOL_TIMEOUT_MS = 120_000;

/** Runs a tool, fails on a non-zero exit, returns stdout. */
export async function sh(
  file: string,
  args: string[],
  opts: { okExitCodes?: number[] } = {},
): Promise<string> {
  const result = await execa(file, args, {
    timeout: TOOL_TIMEOUT_MS,
    reject: false,
    env: { LVM_SUPPRESS_FD_WARNINGS: '1' },
  });
  if (result.timedOut) throw new Error(`${file} ${args.join(' ')} timed out`);
  if (!(opts.okExitCodes ?? [0]).includes(result.exitCode ?? -1)) {
    throw new Error(`${file} ${args.join(' ')} exited ${result.exitCode}: ${result.stderr}${result.stdout}`);
  }
  return result.stdout;
}

/** A unique name (VGs, LVs, sockets): tests run in parallel on one guest. */
export function uniqueName(prefix: string): string {
  return `${prefix}${randomBytes(4).toString('hex')}`;
}

const CLAIMS = '/run/lab-disk-claims';
const DISKS = ['/dev/vda', '/dev/vdb', '/dev/vdc', '/dev/vdd', '/dev/vde', '/dev/vdf'];

/** Takes a scratch disk no other test file uses (an atomic mkdir per disk). */
export function claimDisk(): { disk: string; release(): void } {
  mkdirSync(CLAIMS, { recursive: true });
  for (const disk of DISKS.filter((d) => existsSync(d))) {
    const claim = join(CLAIMS, disk.replace('/dev/', ''));
    try {
      mkdirSync(claim);
    } catch {
      continue;
    }
    return { disk, release: () => rmdirSync(claim) };
  }
  throw new Error(`no free scratch disk among ${DISKS.join(' ')}: start the lab with more --disks`);
}

export interface ScratchVg {
  vg: string;
  disk: string;
  /** Removes every LV, the VG and the PV label, and frees the disk. */
  cleanup(): Promise<void>;
}

/** A fresh VG with 4 MiB extents on a scratch disk of its own. */
export async function scratchVg(prefix = 'labvg'): Promise<ScratchVg> {
  const { disk, release } = claimDisk();
  const vg = uniqueName(prefix);
  try {
    await sh('pvcreate', ['-q', '-y', '-ff', disk]);
    await sh('vgcreate', ['-q', '-s', '4m', vg, disk]);
  } catch (error) {
    release();
    throw error;
  }
  return {
    vg,
    disk,
    async cleanup() {
      try {
        await sh('vgchange', ['-q', '-an', vg], { okExitCodes: [0, 5] });
        await sh('vgremove', ['-q', '-f', vg], { okExitCodes: [0, 5] });
        await sh('pvremove', ['-q', '-y', '-ff', disk], { okExitCodes: [0, 5] });
      } finally {
        release();
      }
    },
  };
}

export interface OpenHolder {
  socket: string;
  stop(): Promise<void>;
}

/** Holds a block device open the way a VM does, with a qemu-nbd server on a unix socket. */
export async function holdOpen(device: string): Promise<OpenHolder> {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-'));
  const socket = join(dir, 'nbd.sock');
  const server: ResultPromise = execa(
    'qemu-nbd',
    ['-f', 'raw', '--cache=none', '-k', socket, '-e', '4', device],
    {
      reject: false,
      timeout: 15 * 60_000,
    },
  );
  const deadline = Date.now() + 30_000;
  while (!existsSync(socket)) {
    if (Date.now() > deadline || server.exitCode !== null) {
      server.kill('SIGKILL');
      await server;
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`qemu-nbd did not serve ${device}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    socket,
    async stop() {
      server.kill('SIGTERM');
      await server;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** `nbd+unix:` URL of a qemu-nbd socket, for qemu-io and qemu-img. */
export function nbdUrl(socket: string): string {
  return `nbd+unix:///?socket=${socket}`;
}

/** A QMP event with QEMU's own timestamp (ms since the epoch, microsecond precision). */
export interface QmpEvent {
  event: string;
  atMs: number;
}

/**
 * A minimal QMP client over a unix socket (events are kept in `events`). Each command carries an
 * `id` that QEMU echoes: a reply that comes after its command timed out is dropped, never handed
 * to the next command (that off-by-one left every later command with the wrong reply).
 */
export class QmpClient {
  private buffer = '';
  private greeting: ((msg: Record<string, unknown>) => void) | undefined;
  private readonly waiting = new Map<string, (msg: Record<string, unknown>) => void>();
  private nextId = 1;
  readonly events: QmpEvent[] = [];

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      let nl = this.buffer.indexOf('\n');
      while (nl >= 0) {
        const line = this.buffer.slice(0, nl).trim();
        this.buffer = this.buffer.slice(nl + 1);
        nl = this.buffer.indexOf('\n');
        if (!line) continue;
        const msg = JSON.parse(line) as Record<string, unknown>;
        if (typeof msg.event === 'string') {
          const ts = msg.timestamp as { seconds: number; microseconds: number };
          this.events.push({ event: msg.event, atMs: ts.seconds * 1000 + ts.microseconds / 1000 });
          continue;
        }
        if ('QMP' in msg) {
          this.greeting?.(msg);
          continue;
        }
        const id = String(msg.id);
        this.waiting.get(id)?.(msg);
        this.waiting.delete(id);
      }
    });
  }

  /** Connects (retrying until QEMU listens), reads the greeting, negotiates capabilities. */
  static async connect(path: string, timeoutMs = 60_000): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = await new Promise<Socket>((resolve, reject) => {
          const s = createConnection(path, () => resolve(s));
          s.once('error', reject);
        });
        const client = new QmpClient(socket);
        await new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error('no QMP greeting')), 60_000);
          client.greeting = (msg) => {
            clearTimeout(timer);
            resolve(msg);
          };
        });
        await client.execute('qmp_capabilities');
        return client;
      } catch (error) {
        if (Date.now() > deadline) throw error;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  /** Runs one QMP command; rejects with QEMU's error class and description (a QmpError, as the adapter's). */
  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    const id = String(this.nextId++);
    const reply = new Promise<Record<string, unknown>>((resolve, reject) => {
      // A busy lab host can keep QEMU's main loop from answering for a while.
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`QMP reply timed out: ${command}`));
      }, 120_000);
      this.waiting.set(id, (msg) => {
        clearTimeout(timer);
        resolve(msg);
      });
    });
    this.socket.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`);
    const msg = await reply;
    if ('error' in msg) {
      const error = msg.error as { class: string; desc: string };
      throw new QmpError({ domain: 'lab', command, qmpClass: error.class, desc: error.desc });
    }
    return msg.return;
  }

  /** An HMP command through QMP; "Error:" output becomes a rejection. */
  async hmp(commandLine: string): Promise<string> {
    const out = String(await this.execute('human-monitor-command', { 'command-line': commandLine }));
    if (/^Error:/m.test(out)) throw new Error(`HMP ${commandLine}: ${out}`);
    return out;
  }

  close(): void {
    this.socket.destroy();
  }
}

const DM_MAJOR = Number(
  readFileSync('/proc/devices', 'utf8')
    .split('\n')
    .find((line) => / device-mapper$/.test(line))
    ?.trim()
    .split(' ')[0] ?? -1,
);
const major = (rdev: number) => (rdev >> 8) & 0xfff;
const minor = (rdev: number) => (rdev & 0xff) | ((rdev >> 12) & 0xfff00);

/** /dev/dm-N of an LV path: stays with the device when the LV is renamed. */
export function dmNode(path: string): string {
  return `/dev/dm-${minor(statSync(path).rdev)}`;
}

/** The device-mapper nodes (/dev/dm-N) a process holds open, sorted, each once (stat through /proc follows the open file). */
export function heldDmDevices(pid: number | undefined): string[] {
  const fdDir = `/proc/${pid}/fd`;
  const held = readdirSync(fdDir)
    .map((fd) => statSync(join(fdDir, fd), { throwIfNoEntry: false }))
    .filter((st) => st?.isBlockDevice() && major(st.rdev) === DM_MAJOR)
    .map((st) => `/dev/dm-${minor(st?.rdev ?? 0)}`);
  return [...new Set(held)].sort();
}
