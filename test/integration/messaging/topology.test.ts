import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../../src/config/index.js';
import { declareTopology, topologyNames } from '../../../src/messaging/topology.js';
import { deleteTopology } from '../../support/broker.js';
import {
  adminConnection,
  listExchanges,
  listQueues,
  runCleanups,
  uniqueNames,
} from '../../support/messaging.js';
import { waitUntil } from '../../support/wait.js';

describe('topology', () => {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterEach(() => runCleanups(cleanups));

  it('names come from config.topology, the queue is prefix + hostId', () => {
    const { config } = loadConfig({
      env: {},
      overrides: { hostId: 'hv07', topology: { queuePrefix: 'q.', commandsExchange: 'c', deliveryLimit: 9 } },
    });
    expect(topologyNames(config)).toEqual({
      commandsExchange: 'c',
      eventsExchange: 'clvm.events',
      commandQueue: 'q.hv07',
      deadLetterExchange: 'clvm.commands.dlx',
      deadLetterQueue: 'clvm.commands.dead',
      deliveryLimit: 9,
      declare: true,
    });
  });

  it('declares a quorum, single-active-consumer queue with delivery limit and DLX, as the broker reports it', async () => {
    const { names, hostId } = uniqueNames('topo');
    cleanups.push(() => deleteTopology(names));
    const { model, channel } = await adminConnection('topology');
    cleanups.push(() => model.close());

    await declareTopology(channel, names, hostId);
    // Idempotent: a second declaration (every reconnect does one) must not conflict.
    await declareTopology(channel, names, hostId);

    const queues = await listQueues();
    const commandQueue = queues.find((q) => q.name === names.commandQueue);
    expect(commandQueue).toEqual({
      name: names.commandQueue,
      type: 'quorum',
      arguments: {
        'x-queue-type': 'quorum',
        'x-single-active-consumer': true,
        'x-delivery-limit': 3,
        'x-dead-letter-exchange': names.deadLetterExchange,
      },
    });
    expect(queues.find((q) => q.name === names.deadLetterQueue)?.type).toBe('quorum');

    const exchanges = await listExchanges();
    const byName = (name: string) => exchanges.find((e) => e.name === name);
    expect(byName(names.commandsExchange)).toEqual({
      name: names.commandsExchange,
      type: 'direct',
      durable: true,
    });
    expect(byName(names.eventsExchange)).toEqual({
      name: names.eventsExchange,
      type: 'topic',
      durable: true,
    });
    expect(byName(names.deadLetterExchange)).toEqual({
      name: names.deadLetterExchange,
      type: 'fanout',
      durable: true,
    });

    // Routing: hostId reaches the host queue, another key does not; the DLX reaches the DLQ.
    await channel.publish(names.commandsExchange, hostId, Buffer.from('mine'));
    await channel.publish(names.commandsExchange, `${hostId}-other`, Buffer.from('not mine'));
    await channel.publish(names.deadLetterExchange, 'anything', Buffer.from('dead'));
    await waitUntilCount(channel, names.commandQueue, 1);
    await waitUntilCount(channel, names.deadLetterQueue, 1);
    expect(await contentsOf(channel, names.commandQueue)).toEqual(['mine']);
    expect(await contentsOf(channel, names.deadLetterQueue)).toEqual(['dead']);
  });

  it('a command delivered more than deliveryLimit times goes to the dead-letter queue', async () => {
    const { names, hostId } = uniqueNames('limit');
    cleanups.push(() => deleteTopology(names));
    const { model, channel } = await adminConnection('limit');
    cleanups.push(() => model.close());
    await declareTopology(channel, names, hostId);

    // A consumer that keeps handing the command back (as a crashing agent would).
    const counts: number[] = [];
    await channel.consume(names.commandQueue, (m) => {
      if (!m) return;
      counts.push(Number(m.properties.headers?.['x-delivery-count'] ?? 0));
      channel.nack(m, false, true);
    });
    channel.publish(names.commandsExchange, hostId, Buffer.from('poison'), { messageId: 'poison' });
    await waitUntilCount(channel, names.deadLetterQueue, 1);
    expect(counts).toEqual([0, 1, 2, 3]); // deliveryLimit is 3: the fourth return dead-letters it
    expect(await contentsOf(channel, names.deadLetterQueue)).toEqual(['poison']);
  });
});

type TestChannel = Awaited<ReturnType<typeof adminConnection>>['channel'];

async function waitUntilCount(channel: TestChannel, queue: string, count: number): Promise<void> {
  await waitUntil(
    async () => (await channel.checkQueue(queue)).messageCount >= count,
    5000,
    `${queue} to hold ${count} message(s)`,
  );
}

/** Consumes what `queue` holds (basic.get is refused on single-active-consumer queues). */
async function contentsOf(channel: TestChannel, queue: string): Promise<string[]> {
  const { messageCount } = await channel.checkQueue(queue);
  const seen: string[] = [];
  const { consumerTag } = await channel.consume(queue, (m) => m && seen.push(m.content.toString()), {
    noAck: true,
  });
  // Drained: every message the queue held was delivered, and the queue is empty now.
  await waitUntil(
    async () => seen.length >= messageCount && (await channel.checkQueue(queue)).messageCount === 0,
    5000,
    `${queue} to be drained`,
  );
  await channel.cancel(consumerTag);
  return seen;
}
