// A real NFS store for the lab suites (inside the lab guest, as root): the kernel NFS server (nfsd,
// rpc.mountd, exportfs from Debian's nfs-kernel-server) exporting a tmpfs over loopback, NFSv4.2
// only (no rpcbind, no statd), mounted by the same guest with the options a test chooses.
//
// Two ways for the store to go away:
// - a partition: the client reaches the server at 127.0.0.2, and a blackhole route (policy rules
//   ahead of the local table) drops that address both ways; the server keeps its state, so when the
//   route goes the client carries on where it stopped (an unreachable server, a network outage);
// - a restart: `rpc.nfsd 0` (threads and socket gone, every client's state dropped), then nfsd
//   started again in its grace period (10 s, the minimum), during which clients reclaim their opens
//   and locks; /var/lib/nfs/v4recovery (made by the guest build) keeps the client records.
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { execa } from 'execa';
import { withTimeout } from '../../../src/timing.js';
import { sh } from './lab.js';

const NFSD_ARGS = ['-N', '3', '-U', '--port', '2049', '--grace-time', '10', '--lease-time', '15', '4'];
/** nfsd starts in well under a second; far longer means rpc.nfsd is blocked in the kernel. */
const NFSD_START_TIMEOUT_MS = 60_000;
/** The server's address as the client knows it: a loopback address of its own, so a partition cuts only NFS. */
export const NFS_SERVER_ADDRESS = '127.0.0.2';

export class NfsServer {
  private mounts: string[] = [];
  /** False while the server is stopped or partitioned away. */
  up = false;
  private running = false;
  /** Why nfsd can no longer start (set once; every later test fails fast with it). */
  wedged: string | undefined;

  private constructor(readonly exportDir: string) {}

  /** Loads the modules, exports `exportDir` (a fresh tmpfs) to 127.0.0.1 and starts nfsd. */
  static async start(exportDir: string): Promise<NfsServer> {
    await sh('modprobe', ['-a', 'nfsd', 'nfsv4']);
    mkdirSync('/proc/fs/nfsd', { recursive: true });
    if (!readFileSync('/proc/mounts', 'utf8').includes(' /proc/fs/nfsd ')) {
      await sh('mount', ['-t', 'nfsd', 'nfsd', '/proc/fs/nfsd']);
    }
    // rpc.nfsd resolves its port by service name.
    if (!existsSync('/etc/services') || !readFileSync('/etc/services', 'utf8').includes('2049/tcp')) {
      writeFileSync('/etc/services', 'nfs 2049/tcp\n', { flag: 'a' });
    }
    mkdirSync(exportDir, { recursive: true });
    await sh('mount', ['-t', 'tmpfs', '-o', 'size=512m', 'tmpfs', exportDir]);
    writeFileSync(
      '/etc/exports',
      `${exportDir} 127.0.0.0/8(rw,sync,no_subtree_check,no_root_squash,insecure,fsid=0)\n`,
    );
    await sh('exportfs', ['-r']);
    await sh('rpc.mountd', ['-N', '3', '--no-udp']);
    // The local table's rule moves behind the place where partition() puts its rules.
    const rules = await sh('ip', ['rule', 'show']);
    if (/^0:\s+from all lookup local/m.test(rules)) {
      await sh('ip', ['rule', 'add', 'pref', '20', 'table', 'local']);
      await sh('ip', ['rule', 'del', 'pref', '0']);
    }
    const server = new NfsServer(exportDir);
    await server.resume();
    return server;
  }

  /** nfsd stops (threads and socket gone, client state dropped; the client's calls wait or time out). */
  async stop(): Promise<void> {
    await sh('rpc.nfsd', ['0']);
    this.running = false;
    this.up = false;
  }

  /** nfsd starts again (and enters its grace period). */
  async resume(): Promise<void> {
    if (this.wedged) throw new Error(this.wedged);
    // rpc.nfsd stuck in the kernel (state D) never exits, and execa would wait for it forever.
    const timedOut = new Error('rpc.nfsd timed out');
    const result = await withTimeout(
      execa('rpc.nfsd', NFSD_ARGS, { reject: false }),
      NFSD_START_TIMEOUT_MS,
      () => timedOut,
    ).catch(async (error: unknown) => {
      if (error !== timedOut) throw error;
      this.wedged = `rpc.nfsd did not return within ${NFSD_START_TIMEOUT_MS / 1000} s; the kernel's blocked tasks:\n${await blockedTasks()}`;
      throw new Error(this.wedged);
    });
    if (result.exitCode !== 0) throw new Error(`rpc.nfsd exited ${result.exitCode}: ${result.stderr}`);
    this.running = true;
    this.up = true;
  }

  /** The server becomes unreachable (its packets dropped both ways); it keeps running and its state. */
  async partition(): Promise<void> {
    await sh('ip', ['route', 'add', 'blackhole', `${NFS_SERVER_ADDRESS}/32`, 'table', '100']);
    await sh('ip', ['rule', 'add', 'pref', '10', 'to', NFS_SERVER_ADDRESS, 'table', '100']);
    await sh('ip', ['rule', 'add', 'pref', '11', 'from', NFS_SERVER_ADDRESS, 'table', '100']);
    this.up = false;
  }

  /** The partition ends. */
  async heal(): Promise<void> {
    await sh('ip', ['rule', 'del', 'pref', '10']);
    await sh('ip', ['rule', 'del', 'pref', '11']);
    await sh('ip', ['route', 'del', 'blackhole', `${NFS_SERVER_ADDRESS}/32`, 'table', '100']);
    this.up = this.running;
  }

  /** Mounts `/<sub>` of the export at `mountPoint` with NFSv4.2 and `options` (e.g. `hard` or `soft,timeo=10,retrans=2`). */
  async mount(sub: string, mountPoint: string, options: string): Promise<void> {
    mkdirSync(`${this.exportDir}/${sub}`, { recursive: true });
    mkdirSync(mountPoint, { recursive: true });
    // nosharecache: two mounts of one server with different options get their own superblocks.
    await sh('mount.nfs4', [
      `${NFS_SERVER_ADDRESS}:/${sub}`,
      mountPoint,
      '-o',
      `vers=4.2,${options},nosharecache,retry=0`,
    ]);
    this.mounts.push(mountPoint);
  }

  /** Unmounts everything (forced and lazy: the server may be down), stops nfsd and mountd. */
  async shutdown(): Promise<void> {
    await execa('ip', ['rule', 'del', 'pref', '10'], { reject: false });
    await execa('ip', ['rule', 'del', 'pref', '11'], { reject: false });
    if (!this.running) await this.resume().catch(() => undefined);
    for (const m of this.mounts) await execa('umount', ['-f', '-l', m], { reject: false, timeout: 30_000 });
    // A wedged nfsd holds its mutex: rpc.nfsd and exportfs would block on it too.
    if (this.wedged) return;
    await execa('rpc.nfsd', ['0'], { reject: false, timeout: 30_000 });
    await execa('exportfs', ['-ua'], { reject: false, timeout: 30_000 });
    // rpc.mountd daemonized itself: stop it by its pid (this guest runs one).
    const mountd = (await execa('pidof', ['rpc.mountd'], { reject: false })).stdout.trim();
    for (const pid of mountd.split(/\s+/).filter(Boolean)) process.kill(Number(pid), 'SIGTERM');
    await execa('umount', ['-l', this.exportDir], { reject: false, timeout: 30_000 });
  }
}

/** The kernel's stacks of every task in state D (sysrq-w), as the kernel log prints them. */
export async function blockedTasks(): Promise<string> {
  writeFileSync('/proc/sysrq-trigger', 'w');
  const log = (await execa('dmesg', [], { reject: false, timeout: 30_000 })).stdout;
  return log.slice(log.lastIndexOf('sysrq: Show Blocked State')).slice(0, 16_000);
}

/** The state letter of a process (`D` uninterruptible, `Z` zombie...) or null when it is gone. */
export function processState(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] ?? null;
  } catch {
    return null;
  }
}

/** Every thread's state of a process (a zombie leader may still have threads in `D`). */
export function threadStates(pid: number): string[] {
  try {
    return readdirSync(`/proc/${pid}/task`).map((tid) => {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] ?? '?';
    });
  } catch {
    return [];
  }
}
