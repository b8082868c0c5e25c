import { mkdir, mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/errors/index.js';
import { JobRunner, type JobRunnerOptions } from '../../../src/jobs/job-runner.js';
import { JobJournal } from '../../../src/jobs/journal.js';
import type { EventSink, IncomingCommand, OutgoingEvent } from '../../../src/jobs/ports.js';
import type { HandlerRegistry } from '../../../src/jobs/types.js';
import { silentLogger } from '../../../src/observability/logger.js';
import { createMetrics } from '../../../src/observability/metrics.js';
import { eventKindOf, eventSchema, signBody } from '../../../src/protocol/index.js';

class RecordingSink implements EventSink {
  readonly events: OutgoingEvent[] = [];
  private waiters: Array<() => void> = [];
  async publish(event: OutgoingEvent): Promise<void> {
    // Every event the runner builds must be valid by the protocol's own schema.
    eventSchema.parse(event.event);
    this.events.push(event);
    for (const w of this.waiters.splice(0)) w();
  }
  of(jobId: string) {
    return this.events.filter((e) => e.event.correlationid === jobId);
  }
  kinds(jobId: string) {
    return this.of(jobId).map((e) => eventKindOf(e.event.type));
  }
  async waitFor(predicate: () => boolean, ms = 15_000): Promise<void> {
    const until = Date.now() + ms;
    while (!predicate()) {
      if (Date.now() > until) throw new Error('timed out waiting for events');
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
  }
  terminal(jobId: string) {
    return this.of(jobId).filter((e) => ['succeeded', 'failed'].includes(eventKindOf(e.event.type) ?? ''));
  }
}

function delivery(body: unknown, over: Partial<IncomingCommand> = {}): IncomingCommand {
  const raw = Buffer.isBuffer(body)
    ? body
    : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
  return {
    body: raw,
    messageId: undefined,
    correlationId: undefined,
    replyTo: undefined,
    headers: {},
    redelivered: false,
    deliveryCount: 0,
    ...over,
  };
}

const ping = (id: string) => ({ id, type: 'agent.ping', params: {} });

describe('JobRunner', () => {
  let dir: string;
  let storeRoot: string;
  let poolRoot: string;
  let sink: RecordingSink;
  const runners: JobRunner[] = [];

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'runner-'));
    storeRoot = join(dir, 'store');
    poolRoot = join(dir, 'pools');
    await mkdir(join(poolRoot, 'p1'), { recursive: true });
    await mkdir(storeRoot, { recursive: true });
    sink = new RecordingSink();
  });
  afterEach(async () => {
    for (const r of runners.splice(0)) await r.shutdown(0);
    await rm(dir, { recursive: true, force: true });
  });

  async function makeRunner(handlers: HandlerRegistry, over: Partial<JobRunnerOptions> = {}) {
    const journal = new JobJournal(join(dir, 'state'));
    await journal.open();
    const runner = new JobRunner({
      hostId: 'hv1',
      policy: {
        maxMessageBytes: 4096,
        signingKey: '',
        storeRoots: [storeRoot],
        fileRoots: [poolRoot],
        volumeGroups: ['vg0'],
      },
      maxConcurrentJobs: 2,
      progressIntervalMs: 50,
      journal,
      sink,
      handlers,
      metrics: createMetrics({ defaultMetrics: false }),
      logger: silentLogger(),
      abortWaitMs: 2000,
      ...over,
    });
    runners.push(runner);
    return { runner, journal };
  }

  const create = (id: string, lv = 'vol1') => ({
    id,
    type: 'snapshot.create',
    params: {
      volume: { kind: 'lvm', vg: 'vg0', lv },
      store: { root: storeRoot, dir: 'v1' },
      snapshot: 'snap-1',
    },
  });

  it('accepts, runs and answers once: accepted(1) then succeeded(2), terminal also to replyTo', async () => {
    let calls = 0;
    const { runner, journal } = await makeRunner({
      'agent.ping': async () => {
        calls++;
        return { pong: true };
      },
    });
    const d = delivery(ping('p-1'), { messageId: 'p-1', replyTo: 'reply-q', correlationId: 'corr-9' });
    expect(await runner.handleCommand(d)).toBe('ack');
    await sink.waitFor(() => journal.get('p-1')?.terminal?.published === true);
    const [accepted, succeeded] = sink.of('p-1');
    expect(eventKindOf(accepted!.event.type)).toBe('accepted');
    expect(accepted!.event.sequence).toBe('0000000001');
    expect(accepted!.replyTo).toBeUndefined();
    expect(succeeded!.event.sequence).toBe('0000000002');
    expect(succeeded!.event.data).toMatchObject({ jobId: 'p-1', result: { pong: true } });
    expect(succeeded!).toMatchObject({ replyTo: 'reply-q', correlationId: 'corr-9', persistent: true });
    expect(succeeded!.routingKey).toBe('hv1.agent.succeeded');
    expect(journal.get('p-1')).toMatchObject({ state: 'succeeded', terminal: { published: true } });

    // Duplicate after completion: not run again, the recorded terminal event is re-published.
    expect(await runner.handleCommand(d)).toBe('ack');
    await sink.waitFor(() => sink.terminal('p-1').length === 2);
    const [first, again] = sink.terminal('p-1');
    expect(again!.event).toEqual(first!.event);
    expect(calls).toBe(1);
  });

  it('runs a command delivered twice at the same time only once', async () => {
    let calls = 0;
    const { runner } = await makeRunner({
      'snapshot.create': async () => {
        calls++;
        await new Promise((r) => setTimeout(r, 50));
        return {};
      },
    });
    const results = await Promise.all([
      runner.handleCommand(delivery(create('c-dup'))),
      runner.handleCommand(delivery(create('c-dup'), { redelivered: true })),
    ]);
    expect(results).toEqual(['ack', 'ack']);
    await sink.waitFor(() => sink.terminal('c-dup').length === 1);
    await runner.shutdown(1000);
    expect(calls).toBe(1);
    expect(sink.kinds('c-dup')).toEqual(['accepted', 'succeeded']);
  });

  it('rejects bad input with a precise code and field, dead-letters it, runs nothing', async () => {
    let calls = 0;
    const handler = async () => {
      calls++;
      return {};
    };
    const { runner } = await makeRunner({ 'snapshot.create': handler, 'agent.ping': handler });
    await mkdir(join(storeRoot, 'v1'), { recursive: true });
    await symlink('/etc', join(poolRoot, 'p1', 'escape'));
    const cases: Array<[string, IncomingCommand, string, string | undefined]> = [
      ['not json', delivery('{nope', { messageId: 'r-1' }), 'INVALID_JSON', 'body'],
      [
        'unknown type',
        delivery({ id: 'r-2', type: 'vm.destroy', params: {} }),
        'UNKNOWN_COMMAND_TYPE',
        'type',
      ],
      [
        'extra key',
        delivery({ id: 'r-3', type: 'agent.ping', params: { x: 1 } }),
        'SCHEMA_INVALID',
        'params.x',
      ],
      [
        'bad lv name',
        delivery({
          ...create('r-4'),
          params: { ...create('r-4').params, volume: { kind: 'lvm', vg: 'vg0', lv: '-x' } },
        }),
        'INVALID_NAME',
        'params.volume.lv',
      ],
      [
        'vg not allowed',
        delivery({
          ...create('r-5'),
          params: { ...create('r-5').params, volume: { kind: 'lvm', vg: 'vg9', lv: 'a' } },
        }),
        'VOLUME_GROUP_NOT_ALLOWED',
        'params.volume.vg',
      ],
      [
        'store root not configured',
        delivery({
          ...create('r-6'),
          params: { ...create('r-6').params, store: { root: '/srv', dir: 'x' } },
        }),
        'STORE_ROOT_NOT_CONFIGURED',
        'params.store.root',
      ],
      [
        'pool outside roots',
        delivery({
          ...create('r-7'),
          params: { ...create('r-7').params, volume: { kind: 'file', pool: '/etc', file: 'passwd' } },
        }),
        'PATH_OUTSIDE_ROOTS',
        'params.volume.pool',
      ],
      [
        'pool escapes by symlink',
        delivery({
          ...create('r-8'),
          params: {
            ...create('r-8').params,
            volume: { kind: 'file', pool: join(poolRoot, 'p1', 'escape'), file: 'passwd' },
          },
        }),
        'PATH_OUTSIDE_ROOTS',
        'params.volume.pool',
      ],
      ['oversize', delivery(Buffer.alloc(5000, 0x20), { messageId: 'r-9' }), 'MESSAGE_TOO_LARGE', 'body'],
      ['message id mismatch', delivery(ping('r-10'), { messageId: 'other' }), 'MESSAGE_ID_MISMATCH', 'id'],
    ];
    for (const [name, d] of cases) {
      expect(await runner.handleCommand(d), name).toBe('dead-letter');
    }
    expect(calls).toBe(0);
    for (const [name, d, code, field] of cases) {
      const id = name === 'message id mismatch' ? 'r-10' : (d.messageId ?? JSON.parse(d.body.toString()).id);
      const events = sink.of(id);
      expect(
        events.map((e) => eventKindOf(e.event.type)),
        name,
      ).toEqual(['rejected']);
      expect(events[0]!.event.data, name).toMatchObject({
        jobId: id,
        error: { code, field, retryable: false },
      });
    }
    // No id anywhere: nothing to address a rejected event to, still dead-lettered.
    expect(await runner.handleCommand(delivery('[]'))).toBe('dead-letter');
  });

  it('checks signatures before parsing when a signing key is set', async () => {
    const { runner } = await makeRunner({ 'agent.ping': async () => ({}) });
    const signed = await makeRunner(
      { 'agent.ping': async () => ({}) },
      {
        policy: { maxMessageBytes: 4096, signingKey: 'k3y', storeRoots: [], fileRoots: [], volumeGroups: [] },
      },
    );
    const body = Buffer.from(JSON.stringify(ping('s-1')));
    expect(await signed.runner.handleCommand(delivery(body, { messageId: 's-1' }))).toBe('dead-letter');
    expect(
      await signed.runner.handleCommand(
        delivery(Buffer.from('not json'), { messageId: 's-2', headers: { 'x-signature': 'sha256=00' } }),
      ),
    ).toBe('dead-letter');
    expect(
      await signed.runner.handleCommand(
        delivery(body, { headers: { 'x-signature': signBody(body, 'k3y') } }),
      ),
    ).toBe('ack');
    expect(sink.of('s-1').map((e) => (e.event.data as { error?: { code: string } }).error?.code)[0]).toBe(
      'SIGNATURE_MISSING',
    );
    expect(sink.of('s-2')[0]!.event.data).toMatchObject({ error: { code: 'SIGNATURE_INVALID' } });
    // Without a key the same unsigned body is accepted (signatures are checked only when configured).
    expect(await runner.handleCommand(delivery(body, { messageId: 's-1' }))).toBe('ack');
  });

  it('reports failures: error code, rolledBack from details or from whether a step ran, retryable', async () => {
    const { runner } = await makeRunner({
      'agent.ping': async () => {
        throw new AgentError('BOOM', 'nothing ran', { retryable: true });
      },
      'snapshot.create': async (ctx) => {
        await ctx.journal.write({ step: 'export', state: 'started' });
        if (ctx.command.params.volume.kind === 'lvm' && ctx.command.params.volume.lv === 'vol2') {
          throw new AgentError('EXPORT_FAILED', 'undone', { details: { rolledBack: true } });
        }
        throw new Error('plain error after a step');
      },
    });
    await runner.handleCommand(delivery(ping('f-1')));
    await runner.handleCommand(delivery(create('f-2', 'vol2')));
    await runner.handleCommand(delivery(create('f-3', 'vol3')));
    await sink.waitFor(() => ['f-1', 'f-2', 'f-3'].every((id) => sink.terminal(id).length === 1));
    expect(sink.terminal('f-1')[0]!.event.data).toMatchObject({
      error: { code: 'BOOM', retryable: true },
      rolledBack: true,
      retryable: true,
    });
    expect(sink.terminal('f-2')[0]!.event.data).toMatchObject({
      error: { code: 'EXPORT_FAILED' },
      rolledBack: true,
      retryable: false,
    });
    expect(sink.terminal('f-3')[0]!.event.data).toMatchObject({
      error: { code: 'INTERNAL' },
      rolledBack: false,
    });
    expect(sink.terminal('f-3')[0]!.routingKey).toBe('hv1.lvm~vg0~vol3.failed');
  });

  it('throttles progress and numbers every event of a job in order', async () => {
    let exportMs = 0;
    const { runner } = await makeRunner({
      'snapshot.create': async (ctx) => {
        const started = performance.now();
        for (let i = 0; i <= 20; i++) {
          ctx.progress({ step: 'export', stepIndex: 0, stepCount: 2, percent: i * 5 });
          await new Promise((r) => setTimeout(r, 10));
        }
        exportMs = performance.now() - started;
        ctx.progress({ step: 'rebase', stepIndex: 1, stepCount: 2, percent: 100 });
        return {};
      },
    });
    await runner.handleCommand(delivery(create('pr-1')));
    await sink.waitFor(() => sink.terminal('pr-1').length === 1);
    const events = sink.of('pr-1');
    expect(events.map((e) => Number(e.event.sequence))).toEqual(events.map((_, i) => i + 1));
    const progress = events.filter((e) => eventKindOf(e.event.type) === 'progress');
    // ~210 ms of updates at one per 50 ms: a handful, not 22. The bound follows the time the loop
    // really took (a loaded machine stretches its 10 ms sleeps): one at once, one per interval, the
    // export's last when the step changes, and the rebase.
    expect(progress.length).toBeGreaterThanOrEqual(3);
    expect(progress.length).toBeLessThanOrEqual(Math.ceil(exportMs / 50) + 3);
    const lastOfExport = progress
      .filter((e) => (e.event.data as { stepIndex: number }).stepIndex === 0)
      .at(-1);
    expect(lastOfExport!.event.data).toMatchObject({ percent: 100 });
    expect(progress.at(-1)!.event.data).toMatchObject({ step: 'rebase', percent: 100 });
    expect(progress.every((e) => e.persistent === false)).toBe(true);
  });

  it('job.cancel aborts a running job and drops a queued one', async () => {
    const { runner } = await makeRunner(
      {
        'snapshot.create': (ctx) =>
          new Promise((_resolve, reject) => {
            ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason));
          }),
      },
      { maxConcurrentJobs: 1 },
    );
    await runner.handleCommand(delivery(create('long-1', 'a')));
    await runner.handleCommand(delivery(create('long-2', 'b')));
    await runner.handleCommand(delivery({ id: 'cancel-2', type: 'job.cancel', params: { jobId: 'long-2' } }));
    await sink.waitFor(() => sink.terminal('cancel-2').length === 1 && sink.terminal('long-2').length === 1);
    expect(sink.terminal('cancel-2')[0]!.event.data).toMatchObject({
      result: { cancelled: true, state: 'queued' },
    });
    expect(sink.terminal('long-2')[0]!.event.data).toMatchObject({
      error: { code: 'JOB_CANCELLED' },
      rolledBack: true,
    });

    await runner.handleCommand(delivery({ id: 'cancel-1', type: 'job.cancel', params: { jobId: 'long-1' } }));
    await sink.waitFor(() => sink.terminal('long-1').length === 1 && sink.terminal('cancel-1').length === 1);
    expect(sink.terminal('cancel-1')[0]!.event.data).toMatchObject({
      result: { cancelled: true, state: 'running' },
    });
    expect(sink.terminal('long-1')[0]!.event.data).toMatchObject({ error: { code: 'JOB_CANCELLED' } });

    await runner.handleCommand(delivery({ id: 'cancel-3', type: 'job.cancel', params: { jobId: 'long-1' } }));
    await runner.handleCommand(delivery({ id: 'cancel-4', type: 'job.cancel', params: { jobId: 'nobody' } }));
    await sink.waitFor(
      () => sink.terminal('cancel-4').length === 1 && sink.terminal('cancel-3').length === 1,
    );
    expect(sink.terminal('cancel-3')[0]!.event.data).toMatchObject({
      result: { cancelled: false, state: 'failed' },
    });
    expect(sink.terminal('cancel-4')[0]!.event.data).toMatchObject({
      result: { cancelled: false, state: 'unknown' },
    });
    expect(sink.terminal('long-1')).toHaveLength(1);
  });

  it('recovers after a crash: re-runs with recovering=true, continues the sequence, one terminal event', async () => {
    // First life: the handler records a step and never returns (the agent "dies").
    const written = new Set<string>();
    const first = await makeRunner({
      'snapshot.create': async (ctx) => {
        ctx.progress({ step: 'export', stepIndex: 0, stepCount: 1, percent: 1 });
        await ctx.journal.write({ staged: 'tmp-lv' });
        written.add(ctx.jobId);
        return new Promise(() => undefined);
      },
    });
    await first.runner.handleCommand(delivery(create('rec-1')));
    await first.runner.handleCommand(delivery(create('rec-2', 'other')));
    // The first life stays in this process: wait until it writes nothing more (both jobs' steps
    // journaled, their progress events out), as a dead agent would. A write still in flight when the
    // second journal opens loses its temp file to that start-up's clean-up and fails the job twice.
    await sink.waitFor(
      () => written.size === 2 && sink.of('rec-1').length === 2 && sink.of('rec-2').length === 2,
    );
    runners.splice(runners.indexOf(first.runner), 1);

    // Second life over the same state dir: rec-2's handler rolls back, rec-1's finishes.
    let seen: { recovering: boolean; facts: unknown } | undefined;
    const second = await makeRunner({
      'agent.ping': async () => ({}),
      'snapshot.create': async (ctx) => {
        if (ctx.command.params.volume.kind === 'lvm' && ctx.command.params.volume.lv === 'other') {
          throw new AgentError('ROLLED_BACK', 'undone', { details: { rolledBack: true } });
        }
        seen = { recovering: ctx.recovering, facts: ctx.journal.read() };
        return { finished: true };
      },
    });
    const outcome = await second.runner.recover();
    expect(outcome.rerun.sort()).toEqual(['rec-1', 'rec-2']);
    await sink.waitFor(() => sink.terminal('rec-1').length === 1 && sink.terminal('rec-2').length === 1);
    expect(seen).toEqual({ recovering: true, facts: { staged: 'tmp-lv' } });
    expect(sink.of('rec-1').map((e) => e.event.sequence)).toEqual(['0000000001', '0000000002', '0000000003']);
    expect(sink.terminal('rec-2')[0]!.event.data).toMatchObject({ recovered: true, rolledBack: true });

    // A third life with no handler at all for the type: failed, recovered, exactly once.
    await second.runner.handleCommand(delivery(create('rec-3', 'third')));
    await sink.waitFor(() => second.journal.get('rec-3')?.terminal?.published === true);
    const third = await makeRunner({});
    const again = await third.runner.recover();
    expect(again).toEqual({ rerun: [], republished: [], failed: [] });
    expect(sink.terminal('rec-1')).toHaveLength(1);
  });

  it('ends a recovered job whose type has no handler as failed with recovered=true', async () => {
    const first = await makeRunner({ 'snapshot.create': () => new Promise(() => undefined) });
    await first.runner.handleCommand(delivery(create('nh-1')));
    await sink.waitFor(() => first.journal.get('nh-1')?.state === 'running');
    runners.splice(runners.indexOf(first.runner), 1);
    const second = await makeRunner({});
    expect((await second.runner.recover()).failed).toEqual(['nh-1']);
    expect(sink.terminal('nh-1')).toHaveLength(1);
    expect(sink.terminal('nh-1')[0]!.event.data).toMatchObject({
      error: { code: 'NOT_IMPLEMENTED' },
      recovered: true,
      rolledBack: true,
    });
    expect(sink.terminal('nh-1')[0]!.event.sequence).toBe('0000000002');
  });

  it('on shutdown lets a job finish within the grace, aborts it after', async () => {
    const { runner } = await makeRunner({
      'agent.ping': async () => {
        await new Promise((r) => setTimeout(r, 100));
        return {};
      },
      'snapshot.create': (ctx) =>
        new Promise((_resolve, reject) =>
          ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason)),
        ),
    });
    await runner.handleCommand(delivery(ping('sd-1')));
    expect(await runner.shutdown(10_000)).toEqual({ left: [], aborted: [] }); // returns as soon as the ping ends
    expect(sink.kinds('sd-1')).toEqual(['accepted', 'succeeded']);

    const other = await makeRunner({
      'snapshot.create': (ctx) =>
        new Promise((_resolve, reject) =>
          ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason)),
        ),
    });
    await other.runner.handleCommand(delivery(create('sd-2')));
    await sink.waitFor(() => other.journal.get('sd-2')?.state === 'running');
    expect(await other.runner.shutdown(100)).toEqual({ left: [], aborted: ['sd-2'] });
    expect(sink.terminal('sd-2')[0]!.event.data).toMatchObject({
      error: { code: 'JOB_CANCELLED', retryable: true },
      retryable: true,
    });
  });
});
