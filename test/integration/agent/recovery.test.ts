import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { lvmCreateCommand } from '../../support/agent.js';
import { childAgentsPerTest } from '../../support/agents-per-test.js';
import { waitFor } from '../../support/wait.js';

describe('crash recovery (child process, real broker)', () => {
  const run = childAgentsPerTest();

  it('kill -9 mid-job: the restarted agent re-runs the job from its journal, one terminal event, sequence continues', async () => {
    const first = await run.start(3000);
    const client = await run.openClient(first);
    await client.send(lvmCreateCommand(first, 'crash-1', 'vol-k'));
    await waitFor(() => client.of('crash-1').find((e) => e.kind === 'progress'), 30_000);
    first.child!.kill('SIGKILL');
    expect(await first.exited!).toMatchObject({ signal: 'SIGKILL' });
    const before = client.of('crash-1').length;
    expect(client.terminal('crash-1')).toHaveLength(0);

    const second = await run.start(500, { restartOf: first });
    const terminal = await client.waitTerminal('crash-1', 30_000);
    expect(terminal.kind).toBe('succeeded');
    expect(second.output()).toContain('recovering job');
    const events = client.of('crash-1');
    const sequences = events.map((e) => Number(e.event.sequence));
    expect(sequences).toEqual([...sequences].sort((a, b) => a - b));
    expect(new Set(sequences).size).toBe(sequences.length);
    expect(events.length).toBeGreaterThan(before);
    // No second terminal event: counted once the agent stopped and all it sent has arrived.
    await second.stopAgent();
    await client.drain(second);
    expect(client.terminal('crash-1')).toHaveLength(1);
    const journal = JSON.parse(await readFile(join(first.stateDir, 'jobs', 'crash-1.json'), 'utf8'));
    expect(journal).toMatchObject({ state: 'succeeded', runs: 2 });
  });
});
