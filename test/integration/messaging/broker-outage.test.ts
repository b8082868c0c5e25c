import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentError } from '../../../src/errors/index.js';
import type { IncomingCommand } from '../../../src/jobs/ports.js';
import { CommandConsumer } from '../../../src/messaging/command-consumer.js';
import {
  BrokerConnection,
  ConnectionState,
  connectionName,
  redactBrokerUrl,
} from '../../../src/messaging/connection.js';
import { brokerUrl, deleteTopology } from '../../support/broker.js';
import {
  adminConnection,
  connectionPids,
  logger,
  runCleanups,
  testConnection,
  uniqueNames,
  watchProcessErrors,
} from '../../support/messaging.js';
import { TcpProxy } from '../../support/tcp-proxy.js';
import { waitUntil } from '../../support/wait.js';

describe('broker outages (through a TCP proxy in front of the shared broker)', () => {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterEach(() => runCleanups(cleanups));

  async function proxy(): Promise<TcpProxy> {
    const p = await TcpProxy.forUrl(brokerUrl());
    cleanups.push(() => p.close());
    return p;
  }

  it('keeps retrying with growing delays while the broker is away, without throwing, then connects', async () => {
    const errors = watchProcessErrors();
    cleanups.push(async () => errors.stop());
    const p = await proxy();
    await p.stop();
    const { hostId } = uniqueNames('away');
    const connection = testConnection(hostId, 'consume', [p.urlFor(brokerUrl())]);
    cleanups.push(() => connection.close());
    const delays: Array<[number, number]> = [];
    connection.on('reconnecting', (attempt: number, delayMs: number) => delays.push([attempt, delayMs]));

    connection.start();
    await waitUntil(() => delays.length >= 5, 10_000, 'five reconnect attempts');
    expect(connection.state).toBe(ConnectionState.Connecting);
    expect(delays.slice(0, 5).map(([attempt]) => attempt)).toEqual([1, 2, 3, 4, 5]);
    // 50 ms doubling, capped at 500 ms, half jittered.
    for (const [attempt, delay] of delays) {
      const step = Math.min(500, 50 * 2 ** (attempt - 1));
      expect(delay).toBeGreaterThanOrEqual(step / 2);
      expect(delay).toBeLessThanOrEqual(step);
    }
    const aborted = new AbortController();
    const waiting = connection.whenConnected(aborted.signal);
    aborted.abort();
    await expect(waiting).rejects.toMatchObject({ code: 'BROKER_UNAVAILABLE' });

    const connected = once(connection, 'connected');
    const model = connection.whenConnected();
    await p.resume();
    await connected;
    await expect(model).resolves.toBeDefined();
    expect(connection.state).toBe(ConnectionState.Ready);
    expect(await connectionPids(connection.connectionName)).toHaveLength(1);
    expect(errors.errors).toEqual([]);
  });

  it('goes round the URL list: a dead first URL does not stop it from using the second', async () => {
    const dead = await proxy();
    await dead.stop();
    const { hostId } = uniqueNames('urls');
    const connection = testConnection(hostId, 'publish', [dead.urlFor(brokerUrl()), brokerUrl()]);
    cleanups.push(() => connection.close());
    let failedFirst = 0;
    connection.on('reconnecting', () => {
      failedFirst += 1;
    });
    const connected = once(connection, 'connected');
    connection.start();
    const [where] = await connected;
    const real = new URL(brokerUrl());
    expect(where).toBe(`amqp://${real.host}${real.pathname}`);
    expect(failedFirst).toBe(1); // the dead URL was tried, once, before the live one
    expect(String(where)).not.toContain('guest:');
    expect(connection.connectionName).toBe(`clvm-snapshot-agent/${hostId}/publish`);
  });

  it('gives up on a stalled handshake after connectTimeoutMs and connects once the peer answers', async () => {
    const p = await proxy();
    p.blackhole();
    const { hostId } = uniqueNames('stall');
    const connection = testConnection(hostId, 'consume', [p.urlFor(brokerUrl())]);
    cleanups.push(() => connection.close());
    const started = Date.now();
    connection.start();
    await once(connection, 'reconnecting');
    // connectTimeoutMs is 2000 in the test connection: the attempt ended, it did not hang.
    expect(Date.now() - started).toBeLessThan(5000);
    await p.resume();
    await waitUntil(() => connection.state === ConnectionState.Ready, 15_000, 'the connection');
  });

  it('open(): one pass over the URLs naming each (credentials hidden); then set-ups run again on every reconnect before ready', async () => {
    const dead = await proxy();
    await dead.stop();
    const { hostId } = uniqueNames('open');
    const deadUrl = dead.urlFor(brokerUrl());
    const unreachable = new BrokerConnection({
      role: 'open-test',
      connectionName: connectionName(hostId, 'open-dead'),
      urls: [deadUrl, deadUrl.replace(/:\d+\//, ':1/')],
      connectTimeoutMs: 2000,
      logger,
    });
    const refused = await unreachable.open().then(
      () => undefined,
      (error: unknown) => error as AgentError,
    );
    expect(refused?.code).toBe('BROKER_UNREACHABLE');
    expect(refused?.message).toContain(redactBrokerUrl(deadUrl));
    expect(refused?.message).not.toContain('guest:');
    expect(unreachable.state).toBe(ConnectionState.Closed);

    const p = await proxy();
    const connection = testConnection(hostId, 'open', [p.urlFor(brokerUrl())]);
    cleanups.push(() => connection.close());
    const states: string[] = [];
    connection.on('state', (state) => states.push(state));
    await connection.open();
    let setups = 0;
    connection.addSetup(async (model) => {
      // Declares on the new connection before anyone else can use it.
      expect(connection.state).not.toBe(ConnectionState.Ready);
      const channel = await model.createChannel();
      await channel.close();
      setups += 1;
    });
    const reconnected = once(connection, 'connected');
    await p.stop();
    await p.resume();
    await reconnected;
    expect(setups).toBe(1);
    expect(states).toEqual([
      ConnectionState.Connecting,
      ConnectionState.Ready,
      ConnectionState.Reconnecting,
      ConnectionState.Ready,
    ]);
  });

  it('with reconnect: false a lost connection is final: state closed, waiters rejected', async () => {
    const p = await proxy();
    const { hostId } = uniqueNames('final');
    const connection = new BrokerConnection({
      role: 'final-test',
      connectionName: connectionName(hostId, 'final'),
      urls: [p.urlFor(brokerUrl())],
      connectTimeoutMs: 2000,
      reconnect: false,
      logger,
    });
    cleanups.push(() => connection.close());
    await connection.open();
    expect(connection.state).toBe(ConnectionState.Ready);
    const closed = once(connection, 'disconnected');
    await p.stop();
    await closed;
    expect(connection.state).toBe(ConnectionState.Closed);
    await expect(connection.whenConnected()).rejects.toMatchObject({ code: 'BROKER_UNAVAILABLE' });
  });

  it('close() while the broker is away ends promptly and rejects waiters', async () => {
    const p = await proxy();
    await p.stop();
    const { hostId } = uniqueNames('close');
    const connection = testConnection(hostId, 'consume', [p.urlFor(brokerUrl())]);
    connection.start();
    await once(connection, 'reconnecting');
    const waiting = connection.whenConnected();
    const started = Date.now();
    await connection.close();
    expect(Date.now() - started).toBeLessThan(3000);
    await expect(waiting).rejects.toMatchObject({ code: 'BROKER_UNAVAILABLE' });
    await expect(connection.whenConnected()).rejects.toMatchObject({ code: 'BROKER_UNAVAILABLE' });
  });

  it('the consumer goes inactive while the broker is away and takes the commands sent meanwhile after', async () => {
    const errors = watchProcessErrors();
    cleanups.push(async () => errors.stop());
    const p = await proxy();
    const { names, hostId } = uniqueNames('consumer-away');
    cleanups.push(() => deleteTopology(names));
    const connection = testConnection(hostId, 'consume', [p.urlFor(brokerUrl())]);
    cleanups.push(() => connection.close());
    const received: IncomingCommand[] = [];
    const consumer = new CommandConsumer({
      connection,
      names,
      hostId,
      prefetch: 2,
      logger,
      handler: async (command) => {
        received.push(command);
        return 'ack';
      },
    });
    cleanups.push(() => consumer.stop());
    connection.start();
    consumer.start();
    await once(consumer, 'active');

    const inactive = once(consumer, 'inactive');
    await p.stop();
    await inactive;
    expect(consumer.active).toBe(false);

    const { model, channel } = await adminConnection('consumer-away');
    cleanups.push(() => model.close());
    for (let n = 1; n <= 5; n += 1) {
      channel.publish(names.commandsExchange, hostId, Buffer.from(`${n}`), {
        messageId: `m${n}`,
        persistent: true,
      });
    }
    // All five sit in the queue, ready: none went to the consumer cut off from the broker.
    await waitUntil(
      async () => (await channel.checkQueue(names.commandQueue)).messageCount === 5,
      10_000,
      'the five commands to be queued',
    );
    expect(received).toEqual([]);

    await p.resume();
    await waitUntil(() => received.length === 5, 15_000, 'the five commands');
    expect(consumer.active).toBe(true);
    expect(received.map((c) => c.messageId)).toEqual(['m1', 'm2', 'm3', 'm4', 'm5']);
    expect(errors.errors).toEqual([]);
  });
});
