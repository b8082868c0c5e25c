import { describe, expect, it } from 'vitest';
import type { CommandHandlerFn } from '../../../src/jobs/types.js';
import { lvmCreateCommand, slowHandler } from '../../support/agent.js';
import { agentsPerTest } from '../../support/agents-per-test.js';
import { waitFor } from '../../support/wait.js';

describe('duplicate deliveries (real broker)', () => {
  const frame = agentsPerTest();

  it('a command id runs once: duplicates while running are acked, later ones get the recorded result', async () => {
    const runs: string[] = [];
    const slow = slowHandler(600);
    const counted: CommandHandlerFn<'snapshot.create'> = async (ctx) => {
      runs.push(ctx.jobId);
      return slow(ctx);
    };
    const agent = await frame.start({ handlers: { 'snapshot.create': counted } });
    const client = await frame.openClient(agent);
    const command = lvmCreateCommand(agent, 'dup-1', 'vol-dup');
    await client.send(command);
    await client.send(command); // while it runs
    const first = await client.waitTerminal('dup-1');
    expect(first.kind).toBe('succeeded');

    // After it finished: the same event again (same CloudEvents id), also to this caller's replyTo.
    await client.send(command, { replyTo: client.replyQueue, correlationId: 'late-caller' });
    await waitFor(() => (client.terminal('dup-1').length === 2 ? true : undefined));
    const [a, b] = client.terminal('dup-1');
    expect(b!.event).toEqual(a!.event);
    const reply = await waitFor(() => client.replies.find((r) => r.event.correlationid === 'dup-1'));
    expect(reply.correlationId).toBe('late-caller');
    expect(reply.event.id).toBe(first.event.id);

    expect(runs).toEqual(['dup-1']);
    expect(client.of('dup-1').filter((e) => e.kind === 'accepted')).toHaveLength(1);
    // Nothing was dead-lettered: duplicates are acked, not refused.
    expect(await client.deadLetters()).toHaveLength(0);
  });
});
