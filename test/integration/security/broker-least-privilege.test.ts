// Per-host broker rights against the real broker: `snapctl broker provision-host` creates host A's
// user; A's agent runs fully with it (start-up declarations, consuming, events, a dead-lettered
// rejection), and A's credentials are refused everything that belongs to host B or to everyone.
// Prints the allowed/denied table. Runs in its own vhost, removed afterwards with the users.
import { rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Channel, type ChannelModel, type ConfirmChannel, type ConsumeMessage, connect } from 'amqplib';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyRights, declareFor, hostRights, managementRights } from '../../../src/cli/broker-provision.js';
import { Rabbitmqctl } from '../../../src/cli/rabbitmqctl.js';
import { openBrokerConnection } from '../../../src/client/index.js';
import { declareTopology, topologyNames } from '../../../src/messaging/topology.js';
import { startTestAgent, type TestAgent } from '../../support/agent.js';
import { brokerUrl, defaultTopology } from '../../support/broker.js';
import { uniqueSuffix } from '../../support/names.js';
import { lastJson, snapctl } from '../../support/snapctl.js';
import { waitFor } from '../../support/wait.js';

const sfx = uniqueSuffix();
const vhost = `i12-lp-${sfx}`;
const hostA = `i12-lpa-${sfx}`;
const hostB = `i12-lpb-${sfx}`;
const users = { a: `i12-agent-a-${sfx}`, b: `i12-agent-b-${sfx}`, mgmt: `i12-mgmt-${sfx}` };
const password = 'i12-least-privilege-pw';
// The default names, checked not declared: with least privilege the host may not declare them.
const topology = { ...defaultTopology(), declare: false };
const ctl = new Rabbitmqctl({ timeoutMs: 60_000 });
const pwFile = join(tmpdir(), `i12-pw-${sfx}`);
const rabbitmqctl = (args: string[]) => execa('rabbitmqctl', args, { timeout: 60_000 });

function urlAs(user: string): string {
  const url = new URL(brokerUrl());
  url.username = user;
  url.password = user === 'guest' ? 'guest' : password;
  url.pathname = `/${encodeURIComponent(vhost)}`;
  return url.toString();
}

/** Runs one operation on a fresh channel: 'allowed', or 'denied' when the broker refuses it (403). */
async function attempt(model: ChannelModel, op: (ch: ConfirmChannel) => Promise<unknown>): Promise<string> {
  const ch = await model.createConfirmChannel();
  let refused: Error | undefined;
  ch.on('error', (error: Error) => {
    refused = error;
  });
  try {
    await op(ch);
    await ch.waitForConfirms();
    await ch.close();
    return 'allowed';
  } catch (error) {
    const message = String((error as Error).message ?? error) + String(refused?.message ?? '');
    if (/403|ACCESS.REFUSED/.test(message)) return 'denied';
    throw error;
  }
}

function publish(ch: ConfirmChannel, exchange: string, key: string): Promise<void> {
  return new Promise((resolve, reject) => {
    ch.publish(exchange, key, Buffer.from('{}'), {}, (error: unknown) => (error ? reject(error) : resolve()));
  });
}

describe('per-host broker rights (real broker)', () => {
  let agent: TestAgent | undefined;
  let asA: ChannelModel;
  let asMgmt: ChannelModel;

  beforeAll(async () => {
    const version = await execa('rabbitmqctl', ['version'], { timeout: 60_000, reject: false });
    if (version.exitCode !== 0)
      throw new Error(`rabbitmqctl is missing or cannot reach the node: ${version.stderr}`);
    await rabbitmqctl(['add_vhost', vhost]);
    await rabbitmqctl(['set_permissions', '-p', vhost, 'guest', '.*', '.*', '.*']);
    // Host A through the CLI (declares the shared topology with the operator's URL); B and the
    // management plane through the same functions in-process.
    await writeFile(pwFile, `${password}\n`, { mode: 0o600 });
    // rabbitmqctl starts an Erlang VM per call (seconds): the three users are provisioned at once.
    const [run] = await Promise.all([
      snapctl([
        'broker',
        'provision-host',
        hostA,
        '--user',
        users.a,
        '--password-file',
        pwFile,
        '--broker-url',
        urlAs('guest'),
        '--json',
      ]),
      applyRights(ctl, hostRights(topology, vhost, hostB, users.b), password).then(async () =>
        // Provisioning again only re-sets the password (idempotent).
        expect(await ctl.putUser(users.b, password)).toBe('updated'),
      ),
      applyRights(ctl, managementRights(topology, vhost, users.mgmt), password),
    ]);
    expect(run.exitCode, run.stderr).toBe(0);
    expect(lastJson(run.stdout)).toMatchObject({ ok: true, outcome: 'created', user: users.a, vhost });
    const guest = await openBrokerConnection({ urls: [urlAs('guest')] });
    await declareFor(guest, topology, hostB);
    await guest.close();
    // What B's agent does at start with B's rights: check, not declare.
    const asB = await connect(urlAs(users.b));
    await declareTopology(await asB.createChannel(), topologyNames({ hostId: hostB, topology }), hostB);
    await asB.close();
    agent = await startTestAgent({
      overrides: { hostId: hostA, broker: { urls: [urlAs(users.a)] }, topology },
    });
    asA = await connect(urlAs(users.a));
    asA.on('error', () => {});
    asMgmt = await connect(urlAs(users.mgmt));
  });

  afterAll(async () => {
    await asA?.close().catch(() => {});
    await asMgmt?.close().catch(() => {});
    await agent?.stopAgent();
    await rabbitmqctl(['delete_vhost', vhost]).catch(() => {});
    await rm(pwFile, { force: true });
    await Promise.all(Object.values(users).map((user) => ctl.deleteUser(user).catch(() => {})));
    await agent?.stop();
  });

  it('the agent runs fully with its restricted user; the management user commands it and reads dead letters', async () => {
    const events: Array<{ key: string; type: string; id: string }> = [];
    const ch: Channel = await asMgmt.createChannel();
    const q = await ch.assertQueue('', { exclusive: true });
    await ch.bindQueue(q.queue, topology.eventsExchange, `${hostA}.#`);
    await ch.consume(
      q.queue,
      (m: ConsumeMessage | null) => {
        if (!m) return;
        const e = JSON.parse(m.content.toString()) as { type: string; correlationid: string };
        events.push({ key: m.fields.routingKey, type: e.type, id: e.correlationid });
      },
      { noAck: true },
    );
    const send = (id: string, body: string) =>
      ch.publish(topology.commandsExchange, hostA, Buffer.from(body), { messageId: id, persistent: true });
    send('i12-lp-ping', JSON.stringify({ id: 'i12-lp-ping', type: 'agent.ping', params: {} }));
    send('i12-lp-bad', '{"id":"i12-lp-bad", not json');
    await waitFor(
      () => (events.some((e) => e.id === 'i12-lp-ping' && e.type.endsWith('.succeeded')) ? true : undefined),
      30_000,
      () => `no succeeded event: ${JSON.stringify(events)}`,
    );
    await waitFor(
      () => (events.some((e) => e.id === 'i12-lp-bad' && e.type.endsWith('.rejected')) ? true : undefined),
      30_000,
      () => `no rejected event: ${JSON.stringify(events)}`,
    );
    expect(events.every((e) => e.key.startsWith(`${hostA}.`))).toBe(true);
    // Dead-lettering is done by the broker itself: the refused command is in the dead-letter queue.
    const dead = await waitFor(
      async () => (await ch.get(topology.deadLetterQueue, { noAck: true })) || undefined,
      15_000,
      () => 'the rejected command did not reach the dead-letter queue',
    );
    expect(dead.properties.messageId).toBe('i12-lp-bad');
    await ch.close();
  });

  it("host A's credentials: its own things allowed, B's and the shared ones denied (table)", async () => {
    const qA = `${topology.queuePrefix}${hostA}`;
    const qB = `${topology.queuePrefix}${hostB}`;
    const rows: Array<[string, string, (ch: ConfirmChannel) => Promise<unknown>]> = [
      [
        'consume its own command queue',
        'allowed',
        async (ch) => ch.cancel((await ch.consume(qA, () => {})).consumerTag),
      ],
      [
        `publish an event routed ${hostA}.agent.started`,
        'allowed',
        (ch) => publish(ch, topology.eventsExchange, `${hostA}.agent.started`),
      ],
      ["consume B's command queue", 'denied', (ch) => ch.consume(qB, () => {})],
      ["basic.get from B's command queue", 'denied', (ch) => ch.get(qB)],
      [
        'publish to the commands exchange (to B)',
        'denied',
        (ch) => publish(ch, topology.commandsExchange, hostB),
      ],
      [
        'publish to the commands exchange (to itself)',
        'denied',
        (ch) => publish(ch, topology.commandsExchange, hostA),
      ],
      [
        `publish an event routed ${hostB}.agent.started`,
        'denied',
        (ch) => publish(ch, topology.eventsExchange, `${hostB}.agent.started`),
      ],
      [
        'publish an event routed #',
        'denied',
        (ch) => publish(ch, topology.eventsExchange, 'x.agent.started'),
      ],
      ["delete B's command queue", 'denied', (ch) => ch.deleteQueue(qB)],
      ["purge B's command queue", 'denied', (ch) => ch.purgeQueue(qB)],
      ['delete the dead-letter queue', 'denied', (ch) => ch.deleteQueue(topology.deadLetterQueue)],
      ['purge the dead-letter queue', 'denied', (ch) => ch.purgeQueue(topology.deadLetterQueue)],
      ['read the dead-letter queue', 'denied', (ch) => ch.get(topology.deadLetterQueue)],
      ['delete the commands exchange', 'denied', (ch) => ch.deleteExchange(topology.commandsExchange)],
      ['delete the events exchange', 'denied', (ch) => ch.deleteExchange(topology.eventsExchange)],
      [
        'declare a queue for another host',
        'denied',
        (ch) => ch.assertQueue(`${topology.queuePrefix}i12-other`),
      ],
      [
        'bind its queue to the events exchange (read events)',
        'denied',
        (ch) => ch.bindQueue(qA, topology.eventsExchange, '#'),
      ],
      ['delete its own command queue', 'denied', (ch) => ch.deleteQueue(qA)],
      ['re-declare its own command queue', 'denied', (ch) => ch.assertQueue(qA)],
      [
        'bind its queue to the commands exchange under B',
        'denied',
        (ch) => ch.bindQueue(qA, topology.commandsExchange, hostB),
      ],
      ['purge its own command queue (read right)', 'allowed', (ch) => ch.purgeQueue(qA)],
      ["publish into B's queue via the default exchange (replyTo)", 'allowed', (ch) => publish(ch, '', qB)],
    ];
    const results: Array<{ operation: string; expected: string; actual: string }> = [];
    for (const [operation, expected, op] of rows) {
      results.push({ operation, expected, actual: await attempt(asA, op) });
    }
    const width = Math.max(...results.map((r) => r.operation.length));
    console.log(
      [
        `host A (${users.a}) on the broker:`,
        ...results.map(
          (r) =>
            `  ${r.operation.padEnd(width)}  ${r.actual}${r.actual === r.expected ? '' : `  (EXPECTED ${r.expected})`}`,
        ),
      ].join('\n'),
    );
    expect(results.filter((r) => r.actual !== r.expected)).toEqual([]);
  });
});
