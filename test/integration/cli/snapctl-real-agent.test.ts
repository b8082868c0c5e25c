import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { CommandHandlerFn } from '../../../src/jobs/types.js';
import { AGENT_VERSION } from '../../../src/version.js';
import { slowHandler, startTestAgent, type TestAgent, TestClient } from '../../support/agent.js';
import { brokerUrl } from '../../support/broker.js';
import { lastJson, snapctl, startSnapctlCollecting } from '../../support/snapctl.js';
import { waitFor } from '../../support/wait.js';

// snapctl against the real agent (test/support/agent.ts: in-process, real broker, real topology:
// quorum command queue, dead-letter exchange and queue).

const SIGNING_KEY = 'real-agent-key';
const agents: TestAgent[] = [];

afterEach(async () => {
  for (const agent of agents.splice(0).reverse()) await agent.stop();
});

function flagsFor(agent: TestAgent): string[] {
  const t = agent.config.topology;
  return [
    '--broker-url',
    brokerUrl(),
    '--host',
    agent.hostId,
    '--commands-exchange',
    t.commandsExchange,
    '--events-exchange',
    t.eventsExchange,
    '--dead-letter-queue',
    t.deadLetterQueue,
  ];
}

async function agentWith(options: Parameters<typeof startTestAgent>[0] = {}): Promise<TestAgent> {
  const agent = await startTestAgent(options);
  agents.push(agent);
  return agent;
}

describe('snapctl with the real agent', () => {
  it('ping: exit 0 with the agent version (signed; also with --reply-to); a wrong key: exit 3', async () => {
    const agent = await agentWith({ overrides: { security: { signingKey: SIGNING_KEY } } });
    const flags = flagsFor(agent);
    const ok = await snapctl(['ping', ...flags], { AGENT_SIGNING_KEY: SIGNING_KEY });
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect(ok.stdout).toContain(`succeeded agent.ping`);
    expect(ok.stdout).toContain(`agent ${AGENT_VERSION}`);

    const reply = await snapctl(['ping', '--reply-to', '--json', ...flags], {
      AGENT_SIGNING_KEY: SIGNING_KEY,
    });
    expect(reply.exitCode, reply.stderr).toBe(0);
    expect(lastJson(reply.stdout)).toMatchObject({ ok: true, outcome: 'succeeded' });

    const bad = await snapctl(['ping', ...flags], { AGENT_SIGNING_KEY: 'wrong-key' });
    expect(bad.exitCode).toBe(3);
    expect(bad.stderr).toMatch(/rejected command: SIGNATURE_INVALID \[headers\.x-signature\]/);
  });

  it('snapshot create with no engine registered: failed NOT_IMPLEMENTED, exit 1', async () => {
    const agent = await agentWith();
    const [store] = agent.config.store.roots;
    const [pool] = agent.config.pools.fileRoots;
    const run = await snapctl([
      'snapshot',
      'create',
      '--volume',
      `file:${pool}/vm-1.qcow2`,
      '--store-root',
      store!,
      '--store-dir',
      'vm-1',
      '--snapshot',
      'snap-1',
      ...flagsFor(agent),
    ]);
    expect(run.exitCode, run.stderr).toBe(1);
    expect(run.stderr).toMatch(/failed snapshot\.create in \S+: NOT_IMPLEMENTED/);
  });

  it('a store root the agent does not serve: rejected, exit 3, naming the field', async () => {
    const agent = await agentWith();
    const run = await snapctl([
      'chain',
      'verify',
      '--store-root',
      '/srv/not-configured',
      '--store-dir',
      'vm-1',
      '--chain',
      'snap-1',
      ...flagsFor(agent),
    ]);
    expect(run.exitCode).toBe(3);
    expect(run.stderr).toMatch(/rejected chain\.verify: \S+ \[params\.store\.root\]/);
  });

  it('watch shows a real job with progress, then its result', async () => {
    const agent = await agentWith({
      handlers: { 'chain.verify': slowHandler(1500) as CommandHandlerFn<'chain.verify'> },
    });
    const flags = flagsFor(agent);
    const watch = startSnapctlCollecting(['watch', ...flags]);
    try {
      await waitFor(
        () => (watch.err.includes('watching') ? true : undefined),
        30_000,
        () => `watch: ${watch.err}`,
      );
      const run = await snapctl([
        'chain',
        'verify',
        '--store-root',
        agent.config.store.roots[0]!,
        '--store-dir',
        'vm-1',
        '--chain',
        'snap-1',
        '--id',
        'real-watch-1',
        ...flags,
      ]);
      expect(run.exitCode, run.stderr).toBe(0);
      await waitFor(
        () => (watch.out.includes('real-watch-1 succeeded') ? true : undefined),
        10_000,
        () => watch.out,
      );
    } finally {
      watch.child.kill('SIGINT');
    }
    expect((await watch.child).exitCode).toBe(0);
    const progress = watch.out.split('\n').filter((l) => l.includes('real-watch-1 progress'));
    expect(progress.length).toBeGreaterThanOrEqual(3);
    expect(progress[0]).toMatch(/step 1\/1 sleep {2}\d+\.\d%/);
    expect(watch.out).toMatch(new RegExp(`${agent.hostId} real-watch-1 accepted chain.verify`));
    expect(watch.out).toMatch(
      new RegExp(`${agent.hostId} real-watch-1 succeeded chain.verify in [\\d.]+s: \\{"sleptMs"`),
    );
  });

  it('dlq: a rejected command is dead-lettered; after the agent is fixed, replay runs it', async () => {
    const first = await agentWith({ overrides: { security: { signingKey: SIGNING_KEY } } });
    const extraRoot = join(first.workDir, 'store2');
    await mkdir(extraRoot);
    const flags = flagsFor(first);
    const verify = ['chain', 'verify', '--store-root', extraRoot, '--store-dir', 'vm-1', '--chain', 'snap-1'];
    const rejected = await snapctl([...verify, '--id', 'dlq-real-1', ...flags], {
      AGENT_SIGNING_KEY: SIGNING_KEY,
    });
    expect(rejected.exitCode).toBe(3);

    const client = await TestClient.open(first);
    try {
      await waitFor(async () => ((await client.deadLetters()).length === 1 ? true : undefined), 20_000);
      const list = await snapctl(['dlq', 'list', '--json', ...flags]);
      expect(list.exitCode, list.stderr).toBe(0);
      expect(lastJson(list.stdout).letters).toMatchObject([
        { messageId: 'dlq-real-1', commandType: 'chain.verify', hostId: first.hostId, reason: 'rejected' },
      ]);

      // The operator adds the store root and restarts the agent (same host, same topology).
      await first.stopAgent();
      const fixed = await agentWith({
        reuse: first,
        overrides: {
          security: { signingKey: SIGNING_KEY },
          store: { roots: [...first.config.store.roots, extraRoot] },
        },
        handlers: { 'chain.verify': async () => ({ verified: true }) },
      });
      const fixedClient = await TestClient.open(fixed);
      try {
        const replay = await snapctl(['dlq', 'replay', 'dlq-real-1', ...flags]);
        expect(replay.exitCode, replay.stderr).toBe(0);
        const terminal = await fixedClient.waitTerminal('dlq-real-1');
        expect(terminal.kind).toBe('succeeded');
        expect((await fixedClient.deadLetters()).length).toBe(0);
      } finally {
        await fixedClient.close();
      }
    } finally {
      await client.close();
    }
  });
});
