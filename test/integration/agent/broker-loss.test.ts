import { afterEach, describe, expect, it } from 'vitest';
import { ConnectionState, connectionName } from '../../../src/messaging/connection.js';
import {
  lvmCreateCommand,
  type ReceivedEvent,
  slowHandler,
  startTestAgent,
  type TestAgent,
  TestClient,
} from '../../support/agent.js';
import { brokerUrl } from '../../support/broker.js';
import { closeConnectionByName } from '../../support/messaging.js';
import { TcpProxy } from '../../support/tcp-proxy.js';
import { waitFor } from '../../support/wait.js';

/** Events of a job, duplicates (same CloudEvents id: at-least-once delivery) removed. */
function unique(events: ReceivedEvent[]): ReceivedEvent[] {
  const seen = new Set<string>();
  return events.filter((e) => !seen.has(e.event.id) && seen.add(e.event.id));
}

function expectInOrder(events: ReceivedEvent[]) {
  const sequences = events.map((e) => Number(e.event.sequence));
  expect(sequences).toEqual([...sequences].sort((x, y) => x - y));
  expect(new Set(sequences).size).toBe(sequences.length);
  expect(events[0]?.kind).toBe('accepted');
  expect(sequences[0]).toBe(1);
  expect(events.filter((e) => ['succeeded', 'failed'].includes(e.kind ?? ''))).toHaveLength(1);
  expect(events.at(-1)?.kind).toBe('succeeded');
}

describe('broker loss (real broker)', () => {
  let agent: TestAgent | undefined;
  let client: TestClient | undefined;
  let proxy: TcpProxy | undefined;
  afterEach(async () => {
    await client?.close();
    await agent?.stop();
    await proxy?.close();
    client = undefined;
    agent = undefined;
    proxy = undefined;
  });

  it('rabbitmqctl close_connection of both agent connections mid-job: it reconnects, every event arrives in order', async () => {
    agent = await startTestAgent({ handlers: { 'snapshot.create': slowHandler(2500) } });
    client = await TestClient.open(agent);
    await client.send(lvmCreateCommand(agent, 'cut-1', 'vol-a'));
    await waitFor(() => client!.of('cut-1').find((e) => e.kind === 'progress'));

    await closeConnectionByName(connectionName(agent.hostId, 'publish'));
    await closeConnectionByName(connectionName(agent.hostId, 'consume'));
    // A command sent while the agent is reconnecting waits in its queue and runs afterwards.
    await client.send(lvmCreateCommand(agent, 'cut-2', 'vol-b'));

    await client.waitTerminal('cut-1', 30_000);
    await client.waitTerminal('cut-2', 30_000);
    const running = agent.agent!;
    await waitFor(
      () =>
        (running.consumer.active && running.connections.publish.state === ConnectionState.Ready) || undefined,
    );
    for (const id of ['cut-1', 'cut-2']) expectInOrder(unique(client.of(id)));
    const metrics = await (await fetch(`${await agent.httpUrl()}/metrics`)).text();
    expect(metrics).toMatch(/clvm_agent_broker_reconnects_total\{role="publish"\} [1-9]/);
    expect(metrics).toMatch(/clvm_agent_broker_reconnects_total\{role="consume"\} [1-9]/);
  });

  it('events published while the broker is unreachable are delivered, in order, after it returns', async () => {
    proxy = await TcpProxy.forUrl(brokerUrl());
    agent = await startTestAgent({
      handlers: { 'snapshot.create': slowHandler(800) },
      overrides: { broker: { urls: [proxy.urlFor(brokerUrl())] } },
    });
    client = await TestClient.open(agent); // straight to the broker, not through the proxy
    await client.send(lvmCreateCommand(agent, 'away-1', 'vol-c'));
    await client.send(lvmCreateCommand(agent, 'away-2', 'vol-d'));
    await waitFor(() => (client!.of('away-1').length > 0 && client!.of('away-2').length > 0) || undefined);

    await proxy.stop(); // the broker is gone for the agent while both jobs finish
    const running = agent.agent!;
    await waitFor(() => (running.runner.runningCount === 0 ? true : undefined), 15_000);
    const base = await agent.httpUrl();
    const notReady = await fetch(`${base}/readyz`);
    expect(notReady.status).toBe(503);
    expect(await notReady.json()).toMatchObject({ checks: { publisher: { ok: false } } });
    expect(running.publisher.outboxDepth).toBeGreaterThanOrEqual(2);
    expect(client.terminal('away-1')).toHaveLength(0);

    await proxy.resume();
    await client.waitTerminal('away-1', 30_000);
    await client.waitTerminal('away-2', 30_000);
    for (const id of ['away-1', 'away-2']) {
      const events = unique(client.of(id)).filter((e) => e.kind !== 'progress');
      expect(events.map((e) => e.kind)).toEqual(['accepted', 'succeeded']);
      expectInOrder(unique(client.of(id)));
    }
    await waitFor(async () => ((await fetch(`${base}/readyz`)).status === 200 ? true : undefined), 15_000);
    expect(running.publisher.outboxDepth).toBe(0);
  });
});
