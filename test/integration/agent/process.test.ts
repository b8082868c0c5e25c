import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { lvmCreateCommand, startTestAgent, type TestAgent, TestClient } from '../../support/agent.js';
import { waitFor } from '../../support/wait.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));

/** Runs `node --import tsx src/main.ts` with only the given AGENT_* variables; resolves on exit. */
function runMain(env: Record<string, string>): Promise<{ code: number | null; stderr: string }> {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('AGENT_')));
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', 'src/main.ts'],
      { cwd: ROOT, env: { ...clean, ...env }, timeout: 60_000 },
      (error, _stdout, stderr) =>
        resolve({ code: error ? ((error.code as number | undefined) ?? null) : 0, stderr }),
    );
  });
}

describe('the agent process', () => {
  let agent: TestAgent | undefined;
  let client: TestClient | undefined;
  const dirs: string[] = [];
  afterEach(async () => {
    await client?.close();
    await agent?.stop();
    client = undefined;
    agent = undefined;
    for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
  });

  it('SIGTERM during a job: the job finishes within the grace, its terminal event is delivered, exit 0', async () => {
    agent = await startTestAgent({
      mode: 'child',
      entry: 'test/support/agent-child.ts',
      env: { TEST_SLOW_CREATE_MS: '1500' },
      overrides: { limits: { shutdownGraceMs: 20_000 } },
    });
    client = await TestClient.open(agent);
    await client.send(lvmCreateCommand(agent, 'term-1', 'vol-t'));
    await waitFor(() => client!.of('term-1').find((e) => e.kind === 'progress'), 30_000);
    const signalledAt = Date.now();
    agent.child!.kill('SIGTERM');
    const exit = await agent.exited!;
    expect(exit, agent.output()).toEqual({ code: 0, signal: null });
    expect(Date.now() - signalledAt).toBeLessThan(15_000);
    const terminal = await client.waitTerminal('term-1', 10_000);
    expect(terminal.kind).toBe('succeeded');
    expect(client.terminal('term-1')).toHaveLength(1);
    // The agent said goodbye, and its journal shows the job finished and its terminal event handed over.
    await waitFor(() => client!.events.find((e) => e.kind === 'stopping'), 10_000);
    const journal = JSON.parse(await readFile(join(agent.stateDir, 'jobs', 'term-1.json'), 'utf8'));
    expect(journal).toMatchObject({ state: 'succeeded', terminal: { published: true } });
    expect(agent.output()).toContain('signal received: shutting down gracefully');
  });

  it('SIGTERM with a job longer than the grace: the job is aborted and answered failed, exit 0', async () => {
    agent = await startTestAgent({
      mode: 'child',
      entry: 'test/support/agent-child.ts',
      env: { TEST_SLOW_CREATE_MS: '60000' },
      overrides: { limits: { shutdownGraceMs: 500 } },
    });
    client = await TestClient.open(agent);
    await client.send(lvmCreateCommand(agent, 'term-2', 'vol-u'));
    await waitFor(() => client!.of('term-2').find((e) => e.kind === 'progress'), 30_000);
    agent.child!.kill('SIGTERM');
    expect(await agent.exited!, agent.output()).toEqual({ code: 0, signal: null });
    const terminal = await client.waitTerminal('term-2', 10_000);
    expect(terminal.kind).toBe('failed');
    expect(terminal.event.data).toMatchObject({ error: { code: 'JOB_CANCELLED' }, retryable: true });
  });

  it('reports config errors clearly: exit 78 and a message naming the key', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'agent-config-'));
    dirs.push(dir);
    const badHost = await runMain({ AGENT_HOST_ID: 'bad.host', AGENT_STATE_DIR: dir });
    expect(badHost.code).toBe(78);
    expect(badHost.stderr).toMatch(/configuration error \[key: hostId\]/);
    expect(badHost.stderr).toMatch(/hostId/);

    const badRoots = await runMain({ AGENT_STORE_ROOTS: 'relative/path', AGENT_STATE_DIR: dir });
    expect(badRoots.code).toBe(78);
    expect(badRoots.stderr).toMatch(/store\.roots/);

    const file = join(dir, 'agent.json');
    await writeFile(file, JSON.stringify({ limits: { maxConcurrentJobs: 0 }, unknownKey: 1 }));
    const badFile = await runMain({ AGENT_CONFIG: file, AGENT_STATE_DIR: dir });
    expect(badFile.code).toBe(78);
    expect(badFile.stderr).toMatch(/limits\.maxConcurrentJobs|unknownKey/);

    const missing = await runMain({ AGENT_CONFIG: join(dir, 'nope.json') });
    expect(missing.code).toBe(78);
    expect(missing.stderr).toMatch(/AGENT_CONFIG.*nope\.json|nope\.json.*does not exist/);
    // Secrets never reach the error output.
    const secret = await runMain({ AGENT_SIGNING_KEY: 's3cr3t-value', AGENT_HOST_ID: 'bad.host' });
    expect(secret.stderr).not.toContain('s3cr3t-value');
  });
});
