// A second libvirtd on this machine, as a migration destination with shared storage (the same
// files). libvirt refuses to migrate to a host with its own host UUID, and a second system daemon
// cannot simply run beside the first (its state, run and log paths are built in), so it runs in a
// private mount namespace with its own copies of those directories:
//   <dir>/etc (copy of /etc/libvirt, own host_uuid and socket dir), <dir>/{sock,run,lib,log,cache}
// bind-mounted over /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt.
// QEMU there logs to files (virtlogd's socket is not visible) and uses no cgroups.
import { randomUUID } from 'node:crypto';
import { appendFile, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { TEST_PREFIX } from './libvirt-fixtures.js';

const TIMEOUT_MS = 60_000;

export class SecondLibvirtd {
  private constructor(readonly dir: string) {}

  /** `virsh -c` URI of the second daemon. */
  get uri(): string {
    return `qemu+unix:///system?socket=${this.dir}/sock/libvirt-sock`;
  }

  private get pidFile(): string {
    return join(this.dir, 'libvirtd.pid');
  }

  /**
   * Starts the daemon for this test process (`/tmp/clvmt-libvirt2-<pid>-d`), or reuses the running
   * one. First stops those of test processes that died without stopping theirs.
   */
  static async start(): Promise<SecondLibvirtd> {
    await SecondLibvirtd.sweepStale();
    const daemon = new SecondLibvirtd(`/tmp/${TEST_PREFIX}-libvirt2-${process.pid}-d`);
    if ((await daemon.pid()) !== null && (await daemon.answers())) return daemon;
    await daemon.stop();
    await rm(daemon.dir, { recursive: true, force: true });
    for (const sub of ['sock', 'run', 'lib', 'log', 'cache'])
      await mkdir(join(daemon.dir, sub), { recursive: true });
    const etc = join(daemon.dir, 'etc');
    await execa('cp', ['-a', '/etc/libvirt', etc], { timeout: TIMEOUT_MS });
    const conf = (await readFile(join(etc, 'libvirtd.conf'), 'utf8'))
      .split('\n')
      .filter((line) => !/^\s*(unix_sock_dir|host_uuid)\s*=/.test(line))
      .join('\n');
    await writeFile(
      join(etc, 'libvirtd.conf'),
      `${conf}\nunix_sock_dir = "${daemon.dir}/sock"\nhost_uuid = "${randomUUID()}"\n`,
    );
    await appendFile(join(etc, 'qemu.conf'), '\nstdio_handler = "file"\ncgroup_controllers = [ ]\n');
    const mounts = [
      ['etc', '/etc/libvirt'],
      ['run', '/run/libvirt'],
      ['lib', '/var/lib/libvirt'],
      ['log', '/var/log/libvirt'],
      ['cache', '/var/cache/libvirt'],
    ];
    // Arguments of the inner shell are positional ($1...), never spliced into its script.
    const script = [
      ...mounts.map((_, i) => `mount --bind "\${${2 * i + 1}}" "\${${2 * i + 2}}"`),
      `exec libvirtd --config /etc/libvirt/libvirtd.conf -p "\${${2 * mounts.length + 1}}" -d`,
    ].join(' && ');
    await execa(
      'unshare',
      [
        '-m',
        '--propagation',
        'private',
        'sh',
        '-c',
        script,
        'sh',
        ...mounts.flatMap(([sub, target]) => [join(daemon.dir, sub!), target!]),
        daemon.pidFile,
      ],
      { timeout: TIMEOUT_MS },
    );
    const deadline = Date.now() + TIMEOUT_MS;
    while (!(await daemon.answers())) {
      if (Date.now() > deadline) throw new Error(`the second libvirtd in ${daemon.dir} does not answer`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    return daemon;
  }

  /** Stops second daemons whose test process no longer exists (their dir names carry its pid). */
  static async sweepStale(): Promise<void> {
    const pattern = new RegExp(`^${TEST_PREFIX}-libvirt2-(\\d+)-d$`);
    for (const entry of await readdir('/tmp')) {
      const pid = Number(pattern.exec(entry)?.[1]);
      if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) continue;
      try {
        process.kill(pid, 0);
      } catch {
        await new SecondLibvirtd(join('/tmp', entry)).stop();
      }
    }
  }

  async virsh(args: readonly string[]): Promise<string> {
    const { stdout } = await execa('virsh', ['-c', this.uri, ...args], { timeout: TIMEOUT_MS });
    return stdout;
  }

  private async answers(): Promise<boolean> {
    const result = await execa('virsh', ['-c', this.uri, 'version'], { timeout: TIMEOUT_MS, reject: false });
    return result.exitCode === 0;
  }

  private async pid(): Promise<number | null> {
    const text = await readFile(this.pidFile, 'utf8').catch(() => null);
    const pid = Number(text?.trim());
    if (!Number.isInteger(pid) || pid <= 0) return null;
    try {
      process.kill(pid, 0);
      return pid;
    } catch {
      return null;
    }
  }

  /** Destroys its domains, stops the daemon by its pid file and removes its directory; idempotent. */
  async stop(): Promise<void> {
    const pid = await this.pid();
    if (pid !== null) {
      if (await this.answers()) {
        for (const name of (await this.virsh(['list', '--name'])).split('\n').map((l) => l.trim())) {
          if (name !== '') await this.virsh(['destroy', name]);
        }
      }
      process.kill(pid, 'SIGTERM');
      const deadline = Date.now() + TIMEOUT_MS;
      while ((await this.pid()) !== null) {
        if (Date.now() > deadline) throw new Error(`libvirtd ${pid} did not stop`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}
