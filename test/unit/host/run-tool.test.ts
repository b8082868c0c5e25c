// runTool against real processes (sh, cat, sleep): output, input, environment, exit codes,
// timeouts (SIGTERM, then SIGKILL), abort, a missing tool and handed-over file descriptors.
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runTool } from '../../../src/host/exec.js';

describe('runTool', () => {
  it('returns stdout and stderr, feeds input and passes extra environment', async () => {
    const r = await runTool('sh', ['-c', 'cat; echo "$EXTRA" >&2; printf done'], {
      timeoutMs: 5000,
      input: 'in\n',
      env: { EXTRA: 'x1' },
    });
    expect(r).toMatchObject({ stdout: 'in\ndone', stderr: 'x1\n', exitCode: 0 });
  });

  it('streams chunks to the callbacks and tells the pid', async () => {
    const chunks: string[] = [];
    let pid = 0;
    await runTool('sh', ['-c', 'printf a; printf b >&2'], {
      timeoutMs: 5000,
      onSpawn: (p) => {
        pid = p;
      },
      onStdout: (c) => chunks.push(`o:${c}`),
      onStderr: (c) => chunks.push(`e:${c}`),
    });
    expect(chunks.sort()).toEqual(['e:b', 'o:a']);
    expect(pid).toBeGreaterThan(0);
  });

  it('classifies a failure from stderr and accepts listed exit codes', async () => {
    await expect(
      runTool('sh', ['-c', 'echo "No space left on device" >&2; exit 3'], { timeoutMs: 5000 }),
    ).rejects.toMatchObject({ kind: 'no-space', details: { exitCode: 3 } });
    const r = await runTool('sh', ['-c', 'exit 1'], { timeoutMs: 5000, okExitCodes: [0, 1] });
    expect(r.exitCode).toBe(1);
  });

  it('times out: SIGTERM, then SIGKILL for a tool that ignores it', async () => {
    const t0 = Date.now();
    await expect(
      runTool('sh', ['-c', "trap '' TERM; while :; do sleep 0.1; done"], {
        timeoutMs: 200,
        killGraceMs: 300,
      }),
    ).rejects.toMatchObject({ kind: 'timeout' });
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it('is cancelled by its signal, also when aborted before it started', async () => {
    const controller = new AbortController();
    const running = runTool('sleep', ['30'], { timeoutMs: 30_000, signal: controller.signal });
    setTimeout(() => controller.abort(new Error('stop')), 100);
    await expect(running).rejects.toMatchObject({ kind: 'aborted' });
    await expect(
      runTool('sleep', ['30'], { timeoutMs: 30_000, signal: AbortSignal.abort() }),
    ).rejects.toMatchObject({ kind: 'aborted' });
  });

  it('reports a missing tool', async () => {
    await expect(runTool('no-such-tool-13', [], { timeoutMs: 5000 })).rejects.toMatchObject({
      kind: 'tool-missing',
    });
  });

  it('hands open descriptors over as fd 3, 4, ...', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'exec-'));
    const fd = openSync(join(dir, 'out'), 'w');
    try {
      await runTool('sh', ['-c', 'echo via-fd3 >&3'], { timeoutMs: 5000, passFds: [fd] });
    } finally {
      closeSync(fd);
    }
    expect(await readFile(join(dir, 'out'), 'utf8')).toBe('via-fd3\n');
    await rm(dir, { recursive: true });
  });
});
