// Issue 11's defects, reproduced against the real broker and a real (in-process) agent:
// poison events, a stalled outbox that /readyz did not see, ids that let anyone append to a
// finished job's stream, a lost `accepted` after kill -9, lone surrogates and other encodings.
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { buildEvent } from '../../../src/jobs/events.js';
import { newRecord } from '../../../src/jobs/intake.js';
import { JobJournal } from '../../../src/jobs/journal.js';
import { commandSchema, routingWord, volumeKey, volumeWord } from '../../../src/protocol/index.js';
import {
  lvmCreateCommand,
  recordingHandlers,
  slowHandler,
  startTestAgent,
  type TestAgent,
  TestClient,
} from '../../support/agent.js';
import { childAgentsPerTest } from '../../support/agents-per-test.js';
import { brokerUrl } from '../../support/broker.js';
import { TcpProxy } from '../../support/tcp-proxy.js';
import { waitFor } from '../../support/wait.js';

async function readyz(agent: TestAgent): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${await agent.httpUrl()}/readyz`);
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

describe('control plane: no message can silence the agent (real broker)', () => {
  const agents: TestAgent[] = [];
  const clients: TestClient[] = [];
  let proxy: TcpProxy | undefined;
  afterEach(async () => {
    for (const c of clients.splice(0)) await c.close();
    for (const a of agents.splice(0).reverse()) await a.stop();
    await proxy?.close();
    proxy = undefined;
  });

  it('a 207-character file name and long raw LVM names: bounded routing keys, later events still flow', async () => {
    const { runs, handlers } = recordingHandlers();
    const agent = await startTestAgent({ handlers });
    agents.push(agent);
    const client = await TestClient.open(agent);
    clients.push(client);
    const pool = agent.config.pools.fileRoots[0]!;
    const longFile = `v${'x'.repeat(203)}.img`; // 208 characters, the documented pattern allows 255
    const volume = { kind: 'file' as const, pool, file: longFile };
    await client.send({
      id: 'i11-long-file',
      type: 'snapshot.create',
      params: { volume, store: { root: agent.config.store.roots[0], dir: 'long' }, snapshot: 'snap-1' },
    });
    // A rejected command whose raw (invalid) LVM names are long: the rejection is routed too.
    await client.send({
      id: 'i11-long-lvm',
      type: 'snapshot.create',
      params: {
        volume: { kind: 'lvm', vg: 'v'.repeat(300), lv: `-${'l'.repeat(300)}` },
        store: { root: agent.config.store.roots[0], dir: 'x' },
        snapshot: 'snap-1',
      },
    });
    await client.send({ id: 'i11-after', type: 'agent.ping', params: {} });

    expect((await client.waitTerminal('i11-long-file')).kind).toBe('succeeded');
    const rejected = await client.waitTerminal('i11-long-lvm');
    expect(rejected.event.data).toMatchObject({ error: { code: 'INVALID_NAME' } });
    expect((await client.waitTerminal('i11-after')).kind).toBe('succeeded');
    for (const e of client.events) expect(Buffer.byteLength(e.routingKey)).toBeLessThanOrEqual(255);
    // The long volume's word is a readable prefix + hash; the full name stays in the body.
    const accepted = client.of('i11-long-file').find((e) => e.kind === 'accepted')!;
    expect(accepted.routingKey).toBe(`${routingWord(agent.hostId)}.${volumeWord(volume)}.accepted`);
    expect(accepted.routingKey).toMatch(/^[^.]+\.file~[^.]{0,64}~h[0-9a-f]{16}\.accepted$/);
    expect(accepted.event.data).toMatchObject({ volume });
    expect(accepted.event.subject).toBe(volumeKey(volume));
    expect(runs.sort()).toEqual(['i11-after', 'i11-long-file']);
    await waitFor(() => (agent.agent!.publisher.outboxDepth === 0 ? true : undefined));
  });

  it('an outbox entry the broker can never accept is quarantined and replaced; entries behind it flow', async () => {
    const first = await startTestAgent({ handlers: recordingHandlers().handlers });
    agents.push(first);
    const client = await TestClient.open(first);
    clients.push(client);
    await first.stopAgent();
    // What an older agent left on disk: a succeeded event whose routing key AMQP cannot encode.
    const poison = buildEvent('succeeded', {
      hostId: first.hostId,
      correlationId: 'i11-poison',
      sequence: 2,
      volume: null,
      data: { jobId: 'i11-poison', commandType: 'agent.ping', durationMs: 1, result: {} },
      replyTo: client.replyQueue,
      replyCorrelationId: 'poison-caller',
    });
    poison.routingKey = `${first.hostId}.${'w'.repeat(300)}.succeeded`;
    const outbox = join(first.stateDir, 'outbox');
    await writeFile(join(outbox, '0000000000000001.json'), JSON.stringify(poison));

    const { runs, handlers } = recordingHandlers();
    const second = await startTestAgent({ handlers, reuse: first, stateDir: first.stateDir });
    agents.push(second);
    await client.send({ id: 'i11-behind', type: 'agent.ping', params: {} });
    expect((await client.waitTerminal('i11-behind')).kind).toBe('succeeded');
    expect(runs).toEqual(['i11-behind']);

    const notice = await waitFor(() => client.of('i11-poison').find((e) => e.kind === 'quarantined'));
    expect(notice.event.sequence).toBe('0000000002');
    expect(notice.event.data).toMatchObject({ jobId: 'i11-poison', eventId: poison.event.id });
    expect(notice.routingKey).toBe(`${first.hostId}.agent.quarantined`);
    // The caller waiting on replyTo learns of it too.
    const reply = await waitFor(() => client.replies.find((r) => r.event.correlationid === 'i11-poison'));
    expect(reply.correlationId).toBe('poison-caller');
    const kept = await readdir(join(outbox, 'quarantine'));
    expect(kept.sort()).toEqual(['0000000000000001.json', '0000000000000001.reason.json']);
    const reason = JSON.parse(
      await readFile(join(outbox, 'quarantine', '0000000000000001.reason.json'), 'utf8'),
    );
    expect(reason.reason).toMatch(/routing key does not fit/);
    const metrics = await (await fetch(`${await second.httpUrl()}/metrics`)).text();
    expect(metrics).toMatch(/^clvm_agent_events_quarantined_total 1$/m);
    await waitFor(() => (second.agent!.publisher.outboxDepth === 0 ? true : undefined));
  });

  it('/readyz is not ready while the outbox head does not move with the broker connected, ready again after', async () => {
    proxy = await TcpProxy.forUrl(brokerUrl());
    const agent = await startTestAgent({
      handlers: { 'snapshot.create': slowHandler(800) },
      overrides: {
        broker: {
          urls: [proxy.urlFor(brokerUrl())],
          outboxStallMs: 700,
          confirmTimeoutMs: 60_000,
          heartbeatSeconds: 0,
        },
      },
    });
    agents.push(agent);
    const client = await TestClient.open(agent); // direct to the broker, not through the proxy
    clients.push(client);
    expect((await readyz(agent)).status).toBe(200);
    await client.send(lvmCreateCommand(agent, 'i11-stall', 'vol-stall'));
    await waitFor(() => client.of('i11-stall').find((e) => e.kind === 'accepted'));
    proxy.freeze(); // connected, but no byte moves: the terminal event's confirm never comes
    const stalled = await waitFor(
      async () => {
        const r = await readyz(agent);
        return r.status === 503 ? r : undefined;
      },
      20_000,
      () => 'readyz never reported the stall',
    );
    const checks = stalled.body.checks as Record<string, { ok: boolean; detail?: string }>;
    expect(checks.outbox?.ok).toBe(false);
    expect(checks.outbox?.detail).toMatch(/has not moved for \d+ s while the broker is connected/);
    expect(checks.consumer?.ok).toBe(true);
    const metrics = await (await fetch(`${await agent.httpUrl()}/metrics`)).text();
    const age = Number(/^clvm_agent_outbox_oldest_age_seconds (\S+)$/m.exec(metrics)?.[1]);
    expect(age).toBeGreaterThan(0.5);
    proxy.thaw();
    expect((await client.waitTerminal('i11-stall')).kind).toBe('succeeded');
    await waitFor(async () => ((await readyz(agent)).status === 200 ? true : undefined), 20_000);
  });

  it('kill -9 between the journal write and the outbox write: recovery sends `accepted` before the terminal', async () => {
    const first = await startTestAgent({ handlers: recordingHandlers().handlers });
    agents.push(first);
    const client = await TestClient.open(first);
    clients.push(client);
    await first.stopAgent();
    // The state such a crash leaves: the job journaled (with its accepted event), outbox empty.
    const journal = new JobJournal(first.stateDir);
    await journal.open();
    for (const id of ['i11-crash-1', 'i11-crash-2']) {
      const command = commandSchema.parse({ id, type: 'agent.ping', params: {} });
      await journal.create(
        newRecord(command, { replyTo: undefined, correlationId: undefined }, first.hostId, 'f'.repeat(64)),
      );
    }
    const { runs, handlers } = recordingHandlers();
    const second = await startTestAgent({ handlers, reuse: first, stateDir: first.stateDir });
    agents.push(second);
    for (const id of ['i11-crash-1', 'i11-crash-2']) {
      await client.waitTerminal(id);
      const stream = client.of(id).map((e) => `${e.kind}:${e.event.sequence}`);
      expect(stream).toEqual(['accepted:0000000001', 'succeeded:0000000002']);
    }
    expect(runs.sort()).toEqual(['i11-crash-1', 'i11-crash-2']);
  });

  it('a used id never appends to its job: same bytes → same terminal, other body → ID_CONFLICT apart, invalid body apart', async () => {
    const { runs, handlers } = recordingHandlers();
    const agent = await startTestAgent({ handlers });
    agents.push(agent);
    const client = await TestClient.open(agent);
    clients.push(client);
    const body = JSON.stringify({ id: 'i11-reuse', type: 'agent.ping', params: {} });
    await client.send(Buffer.from(body), { messageId: 'i11-reuse' });
    const first = await client.waitTerminal('i11-reuse');
    await client.send(Buffer.from(body), { messageId: 'i11-reuse' });
    await waitFor(() => (client.terminal('i11-reuse').length === 2 ? true : undefined));
    expect(client.terminal('i11-reuse')[1]!.event.id).toBe(first.event.id);

    const other = lvmCreateCommand(agent, 'i11-reuse', 'vol-r');
    await client.send(other, { replyTo: client.replyQueue, correlationId: 'other-caller' });
    await client.send({ id: 'i11-reuse', type: 'agent.ping', params: { bogus: 1 } });
    const apart = await waitFor(() => {
      const found = client.events.filter((e) => e.event.correlationid.startsWith('i11-reuse#'));
      return found.length === 2 ? found : undefined;
    });
    const codes = apart.map((e) => (e.event.data as { error: { code: string } }).error.code).sort();
    expect(codes).toEqual(['ID_CONFLICT', 'SCHEMA_INVALID']);
    for (const e of apart) {
      expect(e.kind).toBe('rejected');
      expect(e.event.sequence).toBe('0000000001');
      expect(e.event.correlationid).toMatch(/^i11-reuse#[0-9a-f]{16}$/);
    }
    const reply = await waitFor(() => client.replies.find((r) => r.correlationId === 'other-caller'));
    expect(reply.event.type).toBe('io.clvm.snapshot-agent.rejected');
    // The job's own stream: accepted, then its one terminal (sent again with the same id).
    expect(client.of('i11-reuse').map((e) => `${e.kind}:${e.event.sequence}:${e.event.id}`)).toEqual([
      `accepted:0000000001:${client.of('i11-reuse')[0]!.event.id}`,
      `succeeded:0000000002:${first.event.id}`,
      `succeeded:0000000002:${first.event.id}`,
    ]);
    expect(runs).toEqual(['i11-reuse']);
  });

  it('unicode and encodings: rejected with a code and an answer, never an exception; no content-type is fine', async () => {
    const { runs, handlers } = recordingHandlers();
    const agent = await startTestAgent({ handlers });
    agents.push(agent);
    const client = await TestClient.open(agent);
    clients.push(client);
    const store = agent.config.store.roots[0];
    const withVg = (id: string, vg: string) =>
      `{"id":"${id}","type":"snapshot.create","params":{"volume":{"kind":"lvm","vg":"${vg}","lv":"a"},"store":{"root":"${store}","dir":"d"},"snapshot":"s"}}`;
    const cases: Array<{
      id: string;
      raw: Buffer;
      code: string;
      contentType?: string;
      contentEncoding?: string;
    }> = [
      {
        id: 'i11-surrogate',
        raw: Buffer.from(withVg('i11-surrogate', '\\ud800vg')),
        code: 'INVALID_UNICODE',
      },
      {
        id: 'i11-low-surrogate',
        raw: Buffer.from(withVg('i11-low-surrogate', 'vg\\udfff')),
        code: 'INVALID_UNICODE',
      },
      { id: 'i11-nul', raw: Buffer.from(withVg('i11-nul', 'vg\\u0000')), code: 'INVALID_UNICODE' },
      {
        id: 'i11-overlong',
        raw: Buffer.concat([
          Buffer.from(withVg('i11-overlong', 'vg').slice(0, -2)),
          Buffer.from([0xc0, 0xaf, 0x7d, 0x7d]),
        ]),
        code: 'INVALID_UTF8',
      },
      { id: 'i11-bad-utf8', raw: Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), code: 'INVALID_UTF8' },
      {
        id: 'i11-gzip',
        raw: Buffer.from(JSON.stringify({ id: 'i11-gzip', type: 'agent.ping', params: {} })),
        contentEncoding: 'gzip',
        code: 'UNSUPPORTED_CONTENT_ENCODING',
      },
      {
        id: 'i11-text',
        raw: Buffer.from(JSON.stringify({ id: 'i11-text', type: 'agent.ping', params: {} })),
        contentType: 'text/plain',
        code: 'UNSUPPORTED_CONTENT_TYPE',
      },
    ];
    for (const k of cases) {
      await client.send(k.raw, {
        messageId: k.id,
        replyTo: client.replyQueue,
        ...(k.contentType ? { contentType: k.contentType } : {}),
        ...(k.contentEncoding ? { contentEncoding: k.contentEncoding } : {}),
      });
    }
    await client.send({ id: 'i11-no-type', type: 'agent.ping', params: {} }, { contentType: null });
    for (const k of cases) {
      const terminal = await client.waitTerminal(k.id);
      expect(terminal.kind, k.id).toBe('rejected');
      expect(terminal.event.data, k.id).toMatchObject({ jobId: k.id, error: { code: k.code } });
    }
    await waitFor(() => (client.replies.length >= cases.length ? true : undefined));
    expect((await client.waitTerminal('i11-no-type')).kind).toBe('succeeded');
    expect(runs).toEqual(['i11-no-type']);
    // The dead-lettering (nack) follows the rejected event: wait for it.
    await waitFor(
      async () => ((await client.deadLetters()).length === cases.length ? true : undefined),
      15_000,
      () => 'not every refused message reached the dead-letter queue',
    );
    expect((await readyz(agent)).status).toBe(200);
  });
});

describe('control plane: kill -9 in a burst (child process, real broker)', () => {
  const run = childAgentsPerTest();

  it('every job of a 120-command burst cut by kill -9 has accepted(1) first and exactly one terminal', async () => {
    const first = await run.start(30, {
      overrides: { broker: { prefetch: 32 }, limits: { maxConcurrentJobs: 8 } },
    });
    const client = await run.openClient(first);
    const ids = Array.from({ length: 120 }, (_, i) => `i11-burst-${i}`);
    for (const id of ids) {
      await client.send({
        id,
        type: 'snapshot.create',
        params: {
          volume: { kind: 'lvm', vg: 'vg0', lv: id },
          store: { root: first.config.store.roots[0], dir: id },
          snapshot: 'snap-1',
        },
      });
    }
    // Kill while intake is busy: some jobs journaled, some accepted, some finished.
    await waitFor(
      () => (client.events.filter((e) => e.kind === 'accepted').length >= 20 ? true : undefined),
      60_000,
    );
    first.child!.kill('SIGKILL');
    await first.exited;
    await run.start(30, { restartOf: first });
    for (const id of ids) await client.waitTerminal(id, 120_000);
    for (const id of ids) {
      const seen = new Set<string>();
      const stream = client.of(id).filter((e) => !seen.has(e.event.id) && seen.add(e.event.id));
      expect(
        `${stream[0]?.kind}:${stream[0]?.event.sequence}`,
        `${id}: ${JSON.stringify(stream[0]?.event.data)}`,
      ).toBe('accepted:0000000001');
      expect(
        stream.filter((e) => ['succeeded', 'failed', 'rejected'].includes(e.kind ?? '')),
        id,
      ).toHaveLength(1);
      const sequences = stream.map((e) => Number(e.event.sequence));
      expect(sequences, id).toEqual([...sequences].sort((a, b) => a - b));
    }
  }, 240_000);
});
