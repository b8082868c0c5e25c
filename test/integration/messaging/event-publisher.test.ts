import { once } from 'node:events';
import { readdir } from 'node:fs/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { type BrokerConnection, ConnectionState } from '../../../src/messaging/connection.js';
import { EventPublisher, type ReturnedEvent } from '../../../src/messaging/event-publisher.js';
import type { TopologyNames } from '../../../src/messaging/topology.js';
import { eventSchema } from '../../../src/protocol/index.js';
import { brokerUrl, deleteTopology } from '../../support/broker.js';
import {
  adminConnection,
  closeConnectionByPid,
  collapseAdjacentRepeats,
  collectEvents,
  connectionPids,
  type EventCollector,
  logger,
  runCleanups,
  tempDir,
  testConnection,
  testEvent,
  uniqueNames,
  watchProcessErrors,
} from '../../support/messaging.js';
import { TcpProxy } from '../../support/tcp-proxy.js';
import { waitUntil } from '../../support/wait.js';

interface Rig {
  names: TopologyNames;
  hostId: string;
  outboxDir: string;
  connection: BrokerConnection;
  publisher: EventPublisher;
  collector: EventCollector;
}

describe('EventPublisher', () => {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterEach(() => runCleanups(cleanups));

  async function rig(
    label: string,
    opts: { urls?: string[]; confirmTimeoutMs?: number; pattern?: string; outboxDir?: string } = {},
  ): Promise<Rig> {
    const { names, hostId } = uniqueNames(label);
    cleanups.push(() => deleteTopology(names));
    const collector = await collectEvents(names, label, opts.pattern ?? '#');
    cleanups.push(() => collector.close());
    let outboxDir = opts.outboxDir;
    if (!outboxDir) {
      const dir = await tempDir(label);
      cleanups.push(() => dir.remove());
      outboxDir = dir.path;
    }
    const connection = testConnection(hostId, 'publish', opts.urls);
    cleanups.push(() => connection.close());
    const publisher = new EventPublisher({
      connection,
      names,
      outboxDir,
      confirmTimeoutMs: opts.confirmTimeoutMs ?? 5000,
      logger,
      retryMinMs: 50,
      retryMaxMs: 500,
    });
    cleanups.push(() => publisher.close());
    connection.start();
    await publisher.start();
    return { names, hostId, outboxDir, connection, publisher, collector };
  }

  it('publishes persistent events in order with the AMQP properties, and empties the outbox', async () => {
    const r = await rig('props');
    const confirmed: string[] = [];
    r.publisher.on('confirmed', (e: { event: { id: string } }) => confirmed.push(e.event.id));
    const sent = Array.from({ length: 20 }, (_, i) => testEvent(r.hostId, i + 1));
    for (const e of sent) await r.publisher.publish(e);
    expect(await r.publisher.flush(10_000)).toBe(true);
    await r.collector.waitFor((m) => m.length === 20);

    expect(r.collector.ids()).toEqual(sent.map((e) => e.event.id));
    expect(confirmed).toEqual(sent.map((e) => e.event.id));
    const first = r.collector.messages[0]!;
    expect(first.fields.routingKey).toBe(`${r.hostId}.agent.started`);
    expect(first.properties).toMatchObject({
      contentType: 'application/cloudevents+json',
      messageId: sent[0]!.event.id,
      type: sent[0]!.event.type,
      appId: 'clvm-snapshot-agent',
      deliveryMode: 2,
      timestamp: Math.floor(Date.parse(sent[0]!.event.time) / 1000),
    });
    // The body is the CloudEvent itself, valid against the protocol schema.
    expect(eventSchema.parse(r.collector.events()[0])).toEqual(sent[0]!.event);
    expect(r.publisher.outboxDepth).toBe(0);
    expect(await readdir(r.outboxDir)).toEqual([]);
  });

  it('also answers replyTo with the correlationId; a missing reply queue blocks nothing', async () => {
    const r = await rig('reply');
    const { model, channel } = await adminConnection('reply');
    cleanups.push(() => model.close());
    const { queue } = await channel.assertQueue('', { exclusive: true });
    const replies: Array<{ id: string; correlationId: unknown }> = [];
    await channel.consume(
      queue,
      (m) =>
        m && replies.push({ id: String(m.properties.messageId), correlationId: m.properties.correlationId }),
      { noAck: true },
    );
    await r.publisher.publish(
      testEvent(r.hostId, 1, { replyTo: 'no.such.queue.anywhere', correlationId: 'c-0' }),
    );
    await r.publisher.publish(testEvent(r.hostId, 2, { replyTo: queue, correlationId: 'c-2' }));
    expect(await r.publisher.flush(10_000)).toBe(true);
    await waitUntil(() => replies.length === 1, 10_000, 'the reply');
    expect(replies).toEqual([{ id: `evt-${r.hostId}-000002`, correlationId: 'c-2' }]);
    await r.collector.waitFor((m) => m.length === 2);
  });

  it('drops an unroutable persistent event from the outbox with a "returned" event, and goes on', async () => {
    const r = await rig('returned', { pattern: '*.bound.*' });
    const returned: ReturnedEvent[] = [];
    r.publisher.on('returned', (e: ReturnedEvent) => returned.push(e));
    await r.publisher.publish(testEvent(r.hostId, 1, { routingKey: `${r.hostId}.unbound.started` }));
    await r.publisher.publish(testEvent(r.hostId, 2, { routingKey: `${r.hostId}.bound.started` }));
    expect(await r.publisher.flush(10_000)).toBe(true);
    await r.collector.waitFor((m) => m.length === 1);
    expect(r.collector.ids()).toEqual([`evt-${r.hostId}-000002`]);
    expect(returned).toEqual([
      {
        exchange: r.names.eventsExchange,
        routingKey: `${r.hostId}.unbound.started`,
        messageId: `evt-${r.hostId}-000001`,
        replyCode: 312,
        replyText: 'NO_ROUTE',
      },
    ]);
  });

  it('sends non-persistent events only while connected and never stores them', async () => {
    const proxy = await TcpProxy.forUrl(brokerUrl());
    cleanups.push(() => proxy.close());
    const r = await rig('transient', { urls: [proxy.urlFor(brokerUrl())] });
    await r.publisher.publish(testEvent(r.hostId, 1));
    await r.publisher.flush(10_000);
    await r.publisher.publish(testEvent(r.hostId, 2, { persistent: false }));
    await r.collector.waitFor((m) => m.length === 2);

    await proxy.stop();
    await waitUntil(() => r.connection.state !== ConnectionState.Ready, 10_000, 'the disconnect');
    await r.publisher.publish(testEvent(r.hostId, 3, { persistent: false }));
    expect(r.publisher.outboxDepth).toBe(0);
    await proxy.resume();
    await waitUntil(() => r.connection.state === ConnectionState.Ready, 10_000, 'the reconnect');
    // Progress flows again after the reconnect without waiting for a persistent event.
    let n = 3;
    await waitUntil(
      () => {
        n += 1;
        void r.publisher.publish(testEvent(r.hostId, n, { persistent: false }));
        return r.collector.messages.length >= 3;
      },
      10_000,
      'a non-persistent event after the reconnect',
    );
    expect(r.collector.ids().slice(0, 2)).toEqual(
      [1, 2].map((k) => `evt-${r.hostId}-${String(k).padStart(6, '0')}`),
    );
    expect(Number(r.collector.ids()[2]!.slice(-6))).toBeGreaterThan(3);
    expect(r.publisher.outboxDepth).toBe(0);
  });

  it('rabbitmqctl close_connection mid-stream: every event arrives, in order, none lost', async () => {
    const r = await rig('cut');
    await r.publisher.publish(testEvent(r.hostId, 1));
    expect(await r.publisher.flush(10_000)).toBe(true);
    // Look the connection up first: rabbitmqctl takes about a second per call.
    const pids = await connectionPids(r.connection.connectionName);
    expect(pids).toHaveLength(1);

    const sent = [testEvent(r.hostId, 1)];
    let confirmed = 1;
    let confirmedAtCut = -1;
    r.publisher.on('confirmed', () => {
      confirmed += 1;
    });
    r.connection.once('disconnected', () => {
      confirmedAtCut = confirmed;
    });
    // Keep the stream going until well after the cut.
    const publishing = (async () => {
      let afterCut = 0;
      while (afterCut < 100) {
        if (sent.length > 50_000) throw new Error('the connection was never cut');
        const e = testEvent(r.hostId, sent.length + 1);
        sent.push(e);
        await r.publisher.publish(e);
        if (confirmedAtCut >= 0) afterCut += 1;
      }
    })();
    await waitUntil(() => confirmed >= 50, 20_000, '50 confirms');
    await closeConnectionByPid(pids[0]!);
    await publishing;
    expect(await r.publisher.flush(30_000)).toBe(true);
    const distinct = () => collapseAdjacentRepeats(r.collector.ids()).ids.length;
    await r.collector.waitFor(() => distinct() === sent.length);
    await r.collector.drain(); // the outbox is empty (flushed): no late repeat can come after this

    const { ids, repeats } = collapseAdjacentRepeats(r.collector.ids());
    expect(ids).toEqual(sent.map((e) => e.event.id));
    // At least once: only the event in flight at the cut may come twice (adjacent, same id).
    expect(repeats).toBeLessThanOrEqual(1);
    expect(confirmed).toBe(sent.length);
    // The cut really was mid-stream: events were still waiting when the connection went.
    expect(confirmedAtCut).toBeGreaterThan(0);
    expect(confirmedAtCut).toBeLessThan(sent.length - 50);
  });

  it('broker away (proxy down): events wait in the outbox, then arrive in order; no unhandled rejections', async () => {
    const errors = watchProcessErrors();
    cleanups.push(async () => errors.stop());
    const proxy = await TcpProxy.forUrl(brokerUrl());
    cleanups.push(() => proxy.close());
    const r = await rig('outage', { urls: [proxy.urlFor(brokerUrl())] });
    await r.publisher.publish(testEvent(r.hostId, 1));
    expect(await r.publisher.flush(10_000)).toBe(true);

    const disconnected = once(r.connection, 'disconnected');
    await proxy.stop();
    await disconnected;
    for (let n = 2; n <= 40; n += 1) await r.publisher.publish(testEvent(r.hostId, n));
    await r.publisher.publish(testEvent(r.hostId, 41, { persistent: false }));
    expect(r.publisher.outboxDepth).toBe(39);
    expect(await r.publisher.flush(1500)).toBe(false);
    expect((await readdir(r.outboxDir)).length).toBe(39);

    await proxy.resume();
    expect(await r.publisher.flush(20_000)).toBe(true);
    await r.collector.waitFor((m) => m.length >= 40);
    await r.collector.drain(); // the outbox is empty (flushed): no late repeat can come after this
    expect(r.collector.ids()).toEqual(
      Array.from({ length: 40 }, (_, i) => `evt-${r.hostId}-${String(i + 1).padStart(6, '0')}`),
    );
    expect(errors.errors).toEqual([]);
  });

  it('a confirm timeout keeps the event and sends it again; nothing is lost or reordered', async () => {
    const proxy = await TcpProxy.forUrl(brokerUrl());
    cleanups.push(() => proxy.close());
    const r = await rig('timeout', { urls: [proxy.urlFor(brokerUrl())], confirmTimeoutMs: 300 });
    await r.publisher.publish(testEvent(r.hostId, 1));
    expect(await r.publisher.flush(10_000)).toBe(true);

    proxy.freeze();
    await r.publisher.publish(testEvent(r.hostId, 2));
    await r.publisher.publish(testEvent(r.hostId, 3));
    expect(await r.publisher.flush(1200)).toBe(false);
    expect(r.publisher.outboxDepth).toBe(2);
    proxy.thaw();
    expect(await r.publisher.flush(20_000)).toBe(true);
    await r.collector.waitFor(
      (m) => collapseAdjacentRepeats(m.map((x) => String(x.properties.messageId))).ids.length === 3,
    );
    const { ids } = collapseAdjacentRepeats(r.collector.ids());
    expect(ids).toEqual([1, 2, 3].map((n) => `evt-${r.hostId}-${String(n).padStart(6, '0')}`));
  });

  it('the outbox survives a restart: a new publisher over the same directory replays it in order', async () => {
    const proxy = await TcpProxy.forUrl(brokerUrl());
    cleanups.push(() => proxy.close());
    await proxy.stop(); // the broker is away for the whole life of the first publisher
    const first = await rig('restart', { urls: [proxy.urlFor(brokerUrl())] });
    for (let n = 1; n <= 10; n += 1) await first.publisher.publish(testEvent(first.hostId, n));
    expect(first.publisher.outboxDepth).toBe(10);
    await first.publisher.close();
    await first.connection.close();

    // "Restart": same outbox directory, same names, a broker that is there.
    const connection = testConnection(first.hostId, 'publish');
    cleanups.push(() => connection.close());
    const second = new EventPublisher({
      connection,
      names: first.names,
      outboxDir: first.outboxDir,
      confirmTimeoutMs: 5000,
      logger,
    });
    cleanups.push(() => second.close());
    connection.start();
    await second.start();
    expect(second.outboxDepth).toBe(10);
    await second.publish(testEvent(first.hostId, 11));
    expect(await second.flush(20_000)).toBe(true);
    await first.collector.waitFor((m) => m.length >= 11);
    expect(first.collector.ids()).toEqual(
      Array.from({ length: 11 }, (_, i) => `evt-${first.hostId}-${String(i + 1).padStart(6, '0')}`),
    );
    expect(await readdir(first.outboxDir)).toEqual([]);
  });
});
