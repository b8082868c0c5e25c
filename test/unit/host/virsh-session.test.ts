// VirshSession's framing, queue, time-outs and restarts against a stand-in shell (sh) that answers
// like `virsh -q`: it echoes each input line after the prompt, runs `echo` / `echo --err`, prints
// `error:` for 'fail' and hangs on 'hang'. Quoting against virsh's own parser: the integration test.
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { quoteVirshArg, VirshSession, virshCommandLine } from '../../../src/host/virsh-session.js';

const FAKE_VIRSH = `#!/bin/sh
printf 'virsh # '
while IFS= read -r line; do
  printf '%s\\n' "$line"
  case "$line" in
    "echo --err "*) printf 'error: %s\\n' "\${line#echo --err }" >&2 ;;
    "echo "*) printf '%s' "\${line#echo }" ;;
    "'hang'") exec sleep 600 ;;
    "'die'") exit 3 ;;
    "'fail'") printf "error: failed to get domain 'x'\\n" >&2 ;;
    "'warn'") printf 'warning: careful\\n' >&2; printf 'out\\n' ;;
    *) printf 'ran %s\\n' "$line" ;;
  esac
  printf 'virsh # '
done
`;

describe('VirshSession (stand-in shell)', () => {
  let dir: string;
  let binary: string;
  const sessions: VirshSession[] = [];
  const session = () => {
    const s = new VirshSession({ uri: 'test:///fake', virsh: binary });
    sessions.push(s);
    return s;
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'h16-virsh-session-'));
    binary = join(dir, 'virsh');
    await writeFile(binary, FAKE_VIRSH);
    await chmod(binary, 0o755);
  });
  afterAll(async () => {
    await Promise.all(sessions.map((s) => s.close()));
    await rm(dir, { recursive: true, force: true });
  });

  it('quotes each argument in single quotes and refuses control characters', () => {
    expect(quoteVirshArg("it's")).toBe("'it'\\''s'");
    expect(quoteVirshArg('')).toBe("''");
    expect(quoteVirshArg('a\tb')).toBeNull();
    expect(quoteVirshArg('a\nb')).toBeNull();
    expect(virshCommandLine(['domstate', 'x y'])).toBe("'domstate' 'x y'");
    expect(virshCommandLine(['domstate', 'x\u007f'])).toBeNull();
  });

  it('returns each command its own output, in order, with many commands queued at once', async () => {
    const s = session();
    const results = await Promise.all(
      Array.from({ length: 30 }, (_, i) => s.run(['cmd', `n${i}`], { timeoutMs: 10_000 })),
    );
    expect(results.map((r) => r.stdout)).toEqual(results.map((_, i) => `ran 'cmd' 'n${i}'\n`));
    expect(s.stats).toEqual({ starts: 1, commands: 30 });
  });

  it('turns an error: line into a classified HostCommandError and keeps warnings as output', async () => {
    const s = session();
    await expect(s.run(['fail'], { timeoutMs: 10_000 })).rejects.toMatchObject({
      kind: 'not-found',
      stderr: "error: failed to get domain 'x'\n",
    });
    const warned = await s.run(['warn'], { timeoutMs: 10_000 });
    expect(warned).toMatchObject({ stdout: 'out\n', stderr: 'warning: careful\n', exitCode: 0 });
    expect(s.stats.starts).toBe(1);
  });

  it('kills a hung shell at the time-out and starts a new one for the next command', async () => {
    const s = session();
    await s.run(['first'], { timeoutMs: 10_000 });
    const firstPid = s.pid;
    await expect(s.run(['hang'], { timeoutMs: 300 })).rejects.toMatchObject({ kind: 'timeout' });
    expect(s.pid).toBeNull();
    expect((await s.run(['after'], { timeoutMs: 10_000 })).stdout).toBe("ran 'after'\n");
    expect(s.pid).not.toBe(firstPid);
    expect(s.stats.starts).toBe(2);
  });

  it('fails the command a dying shell was running, then restarts', async () => {
    const s = session();
    const queued = s.run(['next'], { timeoutMs: 10_000 });
    await expect(s.run(['die'], { timeoutMs: 10_000 })).rejects.toMatchObject({ kind: 'transient' });
    expect((await queued).stdout).toBe("ran 'next'\n");
  });

  it('stops a command on abort and restarts the shell for the next one', async () => {
    const s = session();
    const controller = new AbortController();
    const hanging = s.run(['hang'], { timeoutMs: 10_000, signal: controller.signal });
    setTimeout(() => controller.abort(new Error('job cancelled')), 100);
    await expect(hanging).rejects.toMatchObject({ kind: 'aborted' });
    expect((await s.run(['again'], { timeoutMs: 10_000 })).stdout).toBe("ran 'again'\n");
  });

  it('refuses commands after close, and close ends the shell', async () => {
    const s = session();
    await s.run(['x'], { timeoutMs: 10_000 });
    const pid = s.pid!;
    await s.close();
    expect(() => process.kill(pid, 0)).toThrow();
    await expect(s.run(['x'], { timeoutMs: 10_000 })).rejects.toMatchObject({ kind: 'aborted' });
  });

  it('a virsh that is not installed fails as tool-missing, as a process would', async () => {
    const s = new VirshSession({ uri: 'test:///fake', virsh: join(dir, 'no-such-virsh') });
    sessions.push(s);
    await expect(s.run(['x'], { timeoutMs: 5_000 })).rejects.toMatchObject({ kind: 'tool-missing' });
  });

  it('a shell that never answers fails the start within the time-out', async () => {
    const silent = join(dir, 'silent');
    await writeFile(silent, '#!/bin/sh\nexec sleep 600\n');
    await chmod(silent, 0o755);
    const s = new VirshSession({ uri: 'test:///fake', virsh: silent });
    sessions.push(s);
    await expect(s.run(['x'], { timeoutMs: 300 })).rejects.toMatchObject({ kind: 'timeout' });
    expect(s.pid).toBeNull();
  });
});
