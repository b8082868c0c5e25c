// Runs the README's client-library example, as a separate Node process, against a real agent.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestAgent, type TestAgent } from '../../support/agent.js';
import { brokerUrl } from '../../support/broker.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));

function readmeExample(): string {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const block = /<!-- client-example:start -->\n```ts\n([\s\S]*?)```\n<!-- client-example:end -->/.exec(
    readme,
  );
  if (!block) throw new Error('README.md has no client-example block');
  return block[1]!;
}

describe('README client example (real broker, real agent)', () => {
  let agent: TestAgent | undefined;
  let dir: string | undefined;
  afterEach(async () => {
    await agent?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('is at most ~20 lines of code, runs, and gets the ping result and the job events once each', async () => {
    const example = readmeExample();
    expect(example.trim().split('\n').length).toBeLessThanOrEqual(22);
    agent = await startTestAgent();
    dir = await mkdtemp(join(ROOT, 'test', '.i11-example-'));
    const file = join(dir, 'example.mts');
    // The package's own name resolves to dist/ after a build; the test runs the sources.
    await writeFile(
      file,
      example.replace("'clvm-snapshot-agent/client'", `'${join(ROOT, 'src/client/index.ts')}'`),
    );
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', file], {
      cwd: ROOT,
      timeout: 60_000,
      env: {
        ...process.env,
        HOST_ID: agent.hostId,
        AMQP_URLS: brokerUrl(),
        COMMANDS_EXCHANGE: agent.names.commandsExchange,
        EVENTS_EXCHANGE: agent.names.eventsExchange,
      },
    });
    const lines = stdout.trim().split('\n');
    expect(lines).toContain('job io.clvm.snapshot-agent.accepted');
    expect(lines.filter((l) => l === 'job io.clvm.snapshot-agent.succeeded')).toHaveLength(1);
    expect(lines).toContain('event io.clvm.snapshot-agent.succeeded 0000000002');
    expect(lines.at(-1)).toMatch(/^agent \S+/);
  });
});
