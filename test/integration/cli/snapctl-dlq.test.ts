import { type ChannelModel, connect } from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventSchema } from '../../../src/protocol/index.js';
import { brokerUrl } from '../../support/broker.js';
import { fakeAgentPerFile, lastJson, snapctl, topologyFlags } from '../../support/snapctl.js';
import { waitUntil } from '../../support/wait.js';

// Dead letters made by RabbitMQ itself (the fake agent nacks without requeue, the queue's
// dead-letter exchange routes them to the DLQ); snapctl reads them without losing any and
// replays them so they run.

const SIGNING_KEY = 'dlq-key';
const fake = fakeAgentPerFile('dlq', 'hvd', { signingKey: SIGNING_KEY, behaviour: () => 'dead-letter' });
const { topology, hostId, flags } = fake;
let connection: ChannelModel;

beforeAll(async () => {
  connection = await connect(brokerUrl());
});

afterAll(async () => {
  await connection?.close();
});

async function deadLetterCount(): Promise<number> {
  const channel = await connection.createChannel();
  try {
    return (await channel.checkQueue(topology.deadLetterQueue)).messageCount;
  } finally {
    await channel.close();
  }
}

describe('snapctl dlq', () => {
  const id1 = `dl-1-${process.pid}`;
  const id2 = `dl-2-${process.pid}`;

  it('list and show read dead letters and leave every one in the queue', async () => {
    // The fake agent dead-letters both: snapctl gets no answer (exit 4 after --timeout).
    const sends = await Promise.all(
      [id1, id2].map((id) =>
        snapctl(['ping', '--id', id, '--timeout', '2', ...flags], { AGENT_SIGNING_KEY: SIGNING_KEY }),
      ),
    );
    expect(sends.map((s) => s.exitCode)).toEqual([4, 4]);
    await waitUntil(async () => (await deadLetterCount()) === 2, 20_000, '2 dead letters');

    const list = await snapctl(['dlq', 'list', '--json', ...flags]);
    expect(list.exitCode).toBe(0);
    const doc = lastJson(list.stdout) as { letters: Array<Record<string, unknown>>; more: boolean };
    expect(doc.more).toBe(false);
    expect(doc.letters.map((l) => l.messageId).sort()).toEqual([id1, id2].sort());
    for (const letter of doc.letters) {
      expect(letter).toMatchObject({
        commandType: 'agent.ping',
        hostId,
        reason: 'rejected',
        fromQueue: `test.agent.${hostId}`,
        deathCount: 1,
      });
      expect(Date.parse(String(letter.deadLetteredAt))).toBeGreaterThan(Date.now() - 60_000);
    }
    expect(await deadLetterCount()).toBe(2);

    const human = await snapctl(['dlq', 'list', ...flags]);
    expect(human.exitCode).toBe(0);
    expect(human.stdout).toContain(`2 dead-lettered command(s) in ${topology.deadLetterQueue}`);
    expect(human.stdout).toMatch(
      new RegExp(`#1 {2}dl-\\d-\\d+ {2}agent\\.ping {2}host=${hostId} {2}reason=rejected`),
    );

    const limited = await snapctl(['dlq', 'list', '--limit', '1', '--json', ...flags]);
    expect(lastJson(limited.stdout)).toMatchObject({ more: true });
    expect((lastJson(limited.stdout).letters as unknown[]).length).toBe(1);

    const show = await snapctl(['dlq', 'show', id2, '--json', ...flags]);
    expect(show.exitCode).toBe(0);
    const letter = (
      lastJson(show.stdout) as {
        letter: { body: { id: string; type: string }; headers: Record<string, unknown> };
      }
    ).letter;
    expect(letter.body).toMatchObject({ id: id2, type: 'agent.ping' });
    expect(String(letter.headers['x-signature'])).toMatch(/^sha256=[0-9a-f]{64}$/);

    const missing = await snapctl(['dlq', 'show', 'no-such-id', ...flags]);
    expect(missing.exitCode).toBe(1);
    expect(missing.stderr).toContain('no dead-lettered command with id no-such-id');
    expect(await deadLetterCount()).toBe(2);
  });

  it('replay republishes (signature intact), acks after the confirm, and the command runs', async () => {
    fake.agent.setBehaviour(() => 'succeed');
    const events = await connection.createChannel();
    const { queue } = await events.assertQueue('', { exclusive: true, autoDelete: true });
    await events.bindQueue(queue, topology.eventsExchange, `${hostId}.*.*`);
    const outcomes: string[] = [];
    await events.consume(
      queue,
      (m) => {
        if (m) {
          const event = eventSchema.parse(JSON.parse(m.content.toString()));
          outcomes.push(`${event.correlationid} ${event.type}`);
        }
      },
      { noAck: true },
    );

    const replay = await snapctl(['dlq', 'replay', id1, ...flags]);
    expect(replay.exitCode).toBe(0);
    expect(replay.stdout).toContain(`replayed ${id1} to host ${hostId}`);
    await waitUntil(
      () => outcomes.includes(`${id1} io.clvm.snapshot-agent.succeeded`),
      20_000,
      'the replayed command to succeed',
    );
    expect(await deadLetterCount()).toBe(1);

    // Unroutable replay: the message stays dead-lettered, exit 6.
    const unroutable = await snapctl([
      'dlq',
      'replay',
      '--all',
      ...topologyFlags(brokerUrl(), topology),
      '--host',
      'nobody',
    ]);
    expect(unroutable.exitCode).toBe(6);
    expect(unroutable.stderr).toContain('it stays in the dead-letter queue');
    expect(await deadLetterCount()).toBe(1);

    const noArgs = await snapctl(['dlq', 'replay', ...flags]);
    expect(noArgs.exitCode).toBe(2);

    const all = await snapctl(['dlq', 'replay', '--all', '--json', ...topologyFlags(brokerUrl(), topology)]);
    expect(all.exitCode).toBe(0);
    expect(lastJson(all.stdout)).toEqual({ ok: true, replayed: [{ messageId: id2, hostId }], missing: [] });
    await waitUntil(
      () => outcomes.includes(`${id2} io.clvm.snapshot-agent.succeeded`),
      20_000,
      'the second command to succeed',
    );
    expect(await deadLetterCount()).toBe(0);
    expect(outcomes.some((o) => o.endsWith('rejected'))).toBe(false);
    await events.close();
  });

  it('a dead-letter queue that does not exist: exit 6', async () => {
    const run = await snapctl(['dlq', 'list', ...flags, '--dead-letter-queue', `nope-${process.pid}`]);
    expect(run.exitCode).toBe(6);
    expect(run.stderr).toContain('does not exist');
  });
});
