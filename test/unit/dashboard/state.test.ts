import { describe, expect, it } from 'vitest';
import { DashboardState, RECENT_LIMIT } from '../../../src/dashboard/state.js';
import {
  type AgentEvent,
  type EventKind,
  eventSchema,
  eventTypePrefix,
} from '../../../src/protocol/index.js';

// The dashboard's state as a pure fold over events (the page test covers rendering).

let seq = 0;
function event(
  kind: EventKind,
  hostId: string,
  correlationid: string,
  data: Record<string, unknown>,
  time = new Date(),
): AgentEvent {
  seq += 1;
  return eventSchema.parse({
    specversion: '1.0',
    id: `e${seq}`,
    source: `clvm-snapshot-agent/${hostId}`,
    type: `${eventTypePrefix}${kind}`,
    subject: 'lvm~vg0~vol',
    time: time.toISOString(),
    datacontenttype: 'application/json',
    correlationid,
    sequence: String(seq).padStart(10, '0'),
    data,
  });
}

const failedData = (jobId: string) => ({
  jobId,
  commandType: 'snapshot.create',
  durationMs: 1,
  error: { code: 'X', message: 'm', retryable: false },
  rolledBack: false,
  retryable: false,
});

describe('DashboardState', () => {
  it('tracks a job from accepted through progress to a result', () => {
    const state = new DashboardState();
    state.apply(
      event('accepted', 'hv1', 'j1', { jobId: 'j1', commandType: 'snapshot.create', volume: null }),
    );
    expect(state.snapshot().jobs).toMatchObject([{ jobId: 'j1', hostId: 'hv1', percent: 0, step: null }]);
    state.apply(
      event('progress', 'hv1', 'j1', {
        jobId: 'j1',
        step: 'export',
        stepIndex: 1,
        stepCount: 3,
        bytesDone: 50,
        bytesTotal: 200,
        bytesPerSecond: 10,
      }),
    );
    expect(state.snapshot().jobs[0]).toMatchObject({ percent: 25, step: 'export', etaMs: 15_000 });
    state.apply(
      event('succeeded', 'hv1', 'j1', {
        jobId: 'j1',
        commandType: 'snapshot.create',
        durationMs: 900,
        result: {
          snapshot: { name: 's1', kind: 'full', physicalSize: 123 },
          strategy: { name: 'offline' },
          vmPauseMs: 0,
        },
      }),
    );
    const snap = state.snapshot();
    expect(snap.jobs).toEqual([]);
    expect(snap.results).toMatchObject([
      { jobId: 'j1', snapshotName: 's1', physicalSize: 123, strategy: 'offline', durationMs: 900 },
    ]);
    expect(snap.eventsSeen).toBe(3);
  });

  it('a ping result goes to the host row, not to the results', () => {
    const state = new DashboardState();
    state.apply(
      event('succeeded', 'hv2', 'p1', {
        jobId: 'p1',
        commandType: 'agent.ping',
        durationMs: 7,
        result: { agentVersion: '1.2.3', tools: { qemuImg: '7.2' } },
      }),
    );
    const snap = state.snapshot();
    expect(snap.results).toEqual([]);
    expect(snap.hosts).toMatchObject([
      { hostId: 'hv2', status: 'up', agentVersion: '1.2.3', lastPing: { ok: true, durationMs: 7 } },
    ]);
    state.apply(event('failed', 'hv2', 'p2', { ...failedData('p2'), commandType: 'agent.ping' }));
    expect(state.snapshot().hosts[0]?.lastPing).toMatchObject({ ok: false, error: 'X: m' });
  });

  it('lifecycle events set the host status; failures and rejections are listed newest first, bounded', () => {
    const state = new DashboardState();
    state.apply(event('started', 'hv3', 'agent', { hostId: 'hv3', agentVersion: '1' }));
    expect(state.snapshot().hosts[0]?.status).toBe('up');
    state.apply(event('stopping', 'hv3', 'agent', { hostId: 'hv3', agentVersion: '1', reason: 'SIGTERM' }));
    expect(state.snapshot().hosts[0]?.status).toBe('stopping');
    for (let i = 0; i < RECENT_LIMIT + 5; i += 1)
      state.apply(event('failed', 'hv3', `f${i}`, failedData(`f${i}`)));
    state.apply(
      event('rejected', 'hv3', 'r1', {
        jobId: 'r1',
        commandType: null,
        error: { code: 'SCHEMA_INVALID', message: 'no', retryable: false },
      }),
    );
    const failures = state.snapshot().failures;
    expect(failures.length).toBe(RECENT_LIMIT);
    expect(failures[0]).toMatchObject({
      jobId: 'r1',
      kind: 'rejected',
      code: 'SCHEMA_INVALID',
      rolledBack: null,
    });
    expect(failures[1]).toMatchObject({ jobId: `f${RECENT_LIMIT + 4}`, kind: 'failed', rolledBack: false });
  });

  it('keeps the latest event time per host even when events arrive out of order', () => {
    const state = new DashboardState();
    state.apply(
      event('started', 'hv4', 'a', { hostId: 'hv4', agentVersion: '1' }, new Date('2030-01-01T00:00:10Z')),
    );
    state.apply(
      event('started', 'hv4', 'a', { hostId: 'hv4', agentVersion: '1' }, new Date('2030-01-01T00:00:05Z')),
    );
    expect(state.snapshot().hosts[0]?.lastEventAt).toBe('2030-01-01T00:00:10.000Z');
  });
});
