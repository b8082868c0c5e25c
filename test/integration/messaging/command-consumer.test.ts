import { once } from 'node:events';
import type { Channel } from 'amqplib';
import { afterEach, describe, expect, it } from 'vitest';
import type { CommandDisposition, CommandHandler, IncomingCommand } from '../../../src/jobs/ports.js';
import { CommandConsumer } from '../../../src/messaging/command-consumer.js';
import type { BrokerConnection } from '../../../src/messaging/connection.js';
import type { TopologyNames } from '../../../src/messaging/topology.js';
import { deleteTopology } from '../../support/broker.js';
import {
  adminConnection,
  closeConnectionByName,
  logger,
  runCleanups,
  testConnection,
  uniqueNames,
  watchProcessErrors,
} from '../../support/messaging.js';
import { waitUntil } from '../../support/wait.js';

interface Rig {
  names: TopologyNames;
  hostId: string;
  connection: BrokerConnection;
  consumer: CommandConsumer;
  admin: Channel;
  received: IncomingCommand[];
  send(body: string, props?: { messageId?: string; replyTo?: string; correlationId?: string }): void;
}

describe('CommandConsumer', () => {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterEach(() => runCleanups(cleanups));

  /** A consumer on fresh, unique topology; everything is removed after the test. */
  async function rig(
    label: string,
    handler: (c: IncomingCommand) => Promise<CommandDisposition>,
  ): Promise<Rig> {
    const { names, hostId } = uniqueNames(label);
    cleanups.push(() => deleteTopology(names));
    const { model, channel: admin } = await adminConnection(label);
    cleanups.push(() => model.close());
    const connection = testConnection(hostId, 'consume');
    cleanups.push(() => connection.close());
    const received: IncomingCommand[] = [];
    const recording: CommandHandler = async (command) => {
      received.push(command);
      return handler(command);
    };
    const consumer = new CommandConsumer({
      connection,
      names,
      hostId,
      prefetch: 4,
      handler: recording,
      logger,
    });
    cleanups.push(() => consumer.stop());
    connection.start();
    consumer.start();
    if (!consumer.active) await once(consumer, 'active');
    const send: Rig['send'] = (body, props = {}) => {
      admin.publish(names.commandsExchange, hostId, Buffer.from(body), { persistent: true, ...props });
    };
    return { names, hostId, connection, consumer, admin, received, send };
  }

  it('hands each command to the handler with its AMQP properties and acks it', async () => {
    const r = await rig('ack', async () => 'ack');
    r.send('{"a":1}', { messageId: 'cmd-1', replyTo: 'reply.q', correlationId: 'corr-1' });
    await waitUntil(() => r.received.length === 1, 10_000, 'the command');
    expect(r.received[0]).toMatchObject({
      messageId: 'cmd-1',
      correlationId: 'corr-1',
      replyTo: 'reply.q',
      redelivered: false,
      deliveryCount: 0,
    });
    expect(r.received[0]!.body.toString()).toBe('{"a":1}');
    await r.consumer.stop();
    // Acked: nothing is left on the queue once the consumer is gone.
    expect((await r.admin.checkQueue(r.names.commandQueue)).messageCount).toBe(0);
  });

  it("dead-letters on 'dead-letter' and when the handler throws", async () => {
    const r = await rig('dlq', async (command) => {
      if (command.messageId === 'boom') throw new Error('handler bug');
      return command.messageId === 'bad' ? 'dead-letter' : 'ack';
    });
    r.send('refused', { messageId: 'bad' });
    r.send('fine', { messageId: 'good' });
    r.send('explodes', { messageId: 'boom' });
    await waitUntil(() => r.received.length === 3, 10_000, 'three commands');
    const dead: string[] = [];
    await r.admin.consume(r.names.deadLetterQueue, (m) => m && dead.push(String(m.properties.messageId)), {
      noAck: true,
    });
    await waitUntil(() => dead.length === 2, 10_000, 'two dead letters');
    expect(dead.sort()).toEqual(['bad', 'boom']);
  });

  it('recovers after rabbitmqctl close_connection: an unacked command is redelivered with x-delivery-count', async () => {
    const errors = watchProcessErrors();
    cleanups.push(async () => errors.stop());
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    cleanups.push(async () => release());
    const r = await rig('close', async (command) => {
      if (command.deliveryCount === 0) await gate;
      return 'ack';
    });
    r.send('slow', { messageId: 'slow-1' });
    await waitUntil(() => r.received.length === 1, 10_000, 'the first delivery');

    const inactive = once(r.consumer, 'inactive');
    await closeConnectionByName(r.connection.connectionName);
    await inactive;
    release(); // the handler finishes after its channel died: its ack cannot reach the broker

    await waitUntil(() => r.received.length === 2, 15_000, 'the redelivery');
    expect(r.received[1]).toMatchObject({ messageId: 'slow-1', redelivered: true, deliveryCount: 1 });
    await r.consumer.stop();
    expect((await r.admin.checkQueue(r.names.commandQueue)).messageCount).toBe(0);
    expect(errors.errors).toEqual([]);
  });

  it('re-declares and consumes again after the queue is deleted, and after a server-side channel close', async () => {
    const r = await rig('cancel', async () => 'ack');
    r.send('before', { messageId: 'before' });
    await waitUntil(() => r.received.length === 1, 10_000, 'the first command');

    // Deleted from outside: the broker cancels the consumer; the agent declares the queue again.
    const inactive = once(r.consumer, 'inactive');
    await r.admin.deleteQueue(r.names.commandQueue);
    await inactive;
    if (!r.consumer.active) await once(r.consumer, 'active');
    r.send('after-delete', { messageId: 'after-delete' });
    await waitUntil(() => r.received.length === 2, 10_000, 'a command after the queue was deleted');

    // Deleted and re-created by someone else with other arguments: re-declaring fails with
    // 406 PRECONDITION_FAILED, which closes the consumer's channel on the server side. The
    // consumer keeps retrying on fresh channels and resumes once the queue is put right.
    const { model, channel: other } = await adminConnection('cancel-conflict');
    cleanups.push(() => model.close());
    const gone = once(r.consumer, 'inactive');
    let retries = 0;
    r.consumer.on('retrying', () => {
      retries += 1;
    });
    await other.deleteQueue(r.names.commandQueue);
    await other.assertQueue(r.names.commandQueue, { durable: false });
    await gone;
    // Two set-ups failed against the conflicting queue, and it did not consume in between.
    await waitUntil(() => retries >= 2, 10_000, 'two failed set-ups');
    expect(r.consumer.active).toBe(false);
    await other.deleteQueue(r.names.commandQueue);
    await waitUntil(() => r.consumer.active, 35_000, 'the consumer to come back');
    r.send('after-conflict', { messageId: 'after-conflict' });
    await waitUntil(() => r.received.length === 3, 10_000, 'a command after the conflict');
    expect(r.received.map((c) => c.messageId)).toEqual(['before', 'after-delete', 'after-conflict']);
  });

  it('stop() takes no new commands but lets in-flight ones finish and be acked', async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    cleanups.push(async () => release());
    const r = await rig('stop', async (command) => {
      if (command.messageId === 'in-flight') await gate;
      return 'ack';
    });
    r.send('x', { messageId: 'in-flight' });
    await waitUntil(() => r.received.length === 1, 10_000, 'the in-flight command');
    const stopped = r.consumer.stop();
    await waitUntil(() => !r.consumer.active, 5_000, 'the consumer to be cancelled');
    r.send('y', { messageId: 'after-stop' });
    let stopDone = false;
    void stopped.then(() => {
      stopDone = true;
    });
    // The command sent after stop() waits in the queue (nobody takes it), and stop() still waits
    // for the in-flight one.
    await waitUntil(
      async () => (await r.admin.checkQueue(r.names.commandQueue)).messageCount === 1,
      5000,
      'the command sent after stop() to be queued',
    );
    expect(stopDone).toBe(false);
    release();
    await stopped;
    expect(r.received.map((c) => c.messageId)).toEqual(['in-flight']);
    // The in-flight one was acked; only the one sent after stop() waits on the queue (the ack
    // reaches the broker asynchronously: wait until it counts; an unacked one would be back, 2).
    await waitUntil(
      async () => (await r.admin.checkQueue(r.names.commandQueue)).messageCount === 1,
      5000,
      'the queue to hold only the command sent after stop()',
    );
  });
});
