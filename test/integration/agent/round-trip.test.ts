import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { lvmCreateCommand } from '../../support/agent.js';
import { agentsPerTest } from '../../support/agents-per-test.js';
import { waitFor } from '../../support/wait.js';

const run = promisify(execFile);

describe('agent round trip (real broker)', () => {
  const frame = agentsPerTest();

  it('declares its topology as configured (checked with rabbitmqctl)', async () => {
    const agent = await frame.start();
    const { stdout: queues } = await run('rabbitmqctl', [
      '-q',
      'list_queues',
      'name',
      'type',
      'arguments',
      'durable',
    ]);
    const line = queues.split('\n').find((l) => l.startsWith(`${agent.names.commandQueue}\t`));
    expect(line, queues).toBeDefined();
    expect(line).toContain('quorum');
    expect(line).toContain('x-single-active-consumer');
    expect(line).toMatch(/x-delivery-limit/);
    expect(line).toContain(agent.names.deadLetterExchange);
    expect(line).toMatch(/\ttrue$/);
    expect(queues).toContain(agent.names.deadLetterQueue);
    const { stdout: exchanges } = await run('rabbitmqctl', [
      '-q',
      'list_exchanges',
      'name',
      'type',
      'durable',
    ]);
    expect(exchanges).toContain(`${agent.names.commandsExchange}\tdirect\ttrue`);
    expect(exchanges).toContain(`${agent.names.eventsExchange}\ttopic\ttrue`);
    expect(exchanges).toContain(`${agent.names.deadLetterExchange}\tfanout\ttrue`);
    const { stdout: bindings } = await run('rabbitmqctl', [
      '-q',
      'list_bindings',
      'source_name',
      'destination_name',
      'routing_key',
    ]);
    expect(bindings).toContain(
      `${agent.names.commandsExchange}\t${agent.names.commandQueue}\t${agent.hostId}`,
    );
  });

  it('ping: accepted then succeeded with host facts, the terminal event also to replyTo; ready and metrics', async () => {
    const agent = await frame.start();
    const client = await frame.openClient(agent);
    await client.send(
      { id: 'ping-rt-1', type: 'agent.ping', params: {} },
      { replyTo: client.replyQueue, correlationId: 'corr-rt-1' },
    );
    const terminal = await client.waitTerminal('ping-rt-1');
    expect(terminal.kind).toBe('succeeded');
    expect(terminal.routingKey).toBe(`${agent.hostId}.agent.succeeded`);
    expect(terminal.event.data).toMatchObject({
      jobId: 'ping-rt-1',
      commandType: 'agent.ping',
      result: { hostId: agent.hostId, agentVersion: expect.any(String), strategies: expect.any(Array) },
    });
    const seen = client.of('ping-rt-1');
    expect(seen.map((e) => [e.kind, e.event.sequence])).toEqual([
      ['accepted', '0000000001'],
      ['succeeded', '0000000002'],
    ]);
    const reply = await waitFor(() => client.replies.find((r) => r.event.correlationid === 'ping-rt-1'));
    expect(reply.correlationId).toBe('corr-rt-1');
    expect(reply.event.id).toBe(terminal.event.id);
    expect(client.replies.filter((r) => r.event.correlationid === 'ping-rt-1')).toHaveLength(1);

    const base = await agent.httpUrl();
    expect((await fetch(`${base}/livez`)).status).toBe(200);
    const ready = await fetch(`${base}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ checks: { consumer: { ok: true }, publisher: { ok: true } } });
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toMatch(/clvm_agent_jobs_total\{type="agent.ping",outcome="succeeded"\} 1/);
    expect(metrics).toMatch(/clvm_agent_broker_connected\{role="consume"\} 1/);
    expect(metrics).toContain('clvm_agent_job_duration_seconds_bucket');
  });

  it('snapshot commands answer failed NOT_IMPLEMENTED until the engine registers handlers', async () => {
    const agent = await frame.start();
    const client = await frame.openClient(agent);
    await client.send(lvmCreateCommand(agent, 'create-ni-1', 'vol-1'));
    const terminal = await client.waitTerminal('create-ni-1');
    expect(terminal.kind).toBe('failed');
    expect(terminal.routingKey).toBe(`${agent.hostId}.lvm~vg0~vol-1.failed`);
    expect(terminal.event.data).toMatchObject({ error: { code: 'NOT_IMPLEMENTED' }, rolledBack: true });
  });
});
