import { etaMs, hostOf, percentOf } from '../client/event-facts.js';
import { type AgentEvent, type AgentEventOf, eventKindOf } from '../protocol/index.js';

/** A hypervisor the dashboard has heard from. */
export interface HostView {
  hostId: string;
  lastEventAt: string;
  /** From the agent's lifecycle events: `started` → up, `stopping` → stopping. */
  status: 'up' | 'stopping' | 'seen';
  agentVersion: string | null;
  lastPing: {
    at: string;
    ok: boolean;
    durationMs: number | null;
    agentVersion: string | null;
    tools: Record<string, string | null> | null;
    error: string | null;
  } | null;
}

export interface JobView {
  jobId: string;
  hostId: string;
  commandType: string;
  subject: string;
  acceptedAt: string;
  updatedAt: string;
  step: string | null;
  stepIndex: number | null;
  stepCount: number | null;
  percent: number;
  bytesDone: number | null;
  bytesTotal: number | null;
  bytesPerSecond: number | null;
  etaMs: number | null;
}

export interface ResultView {
  jobId: string;
  hostId: string;
  commandType: string;
  subject: string;
  finishedAt: string;
  durationMs: number;
  snapshotName: string | null;
  snapshotKind: string | null;
  physicalSize: number | null;
  strategy: string | null;
  vmPauseMs: number | null;
}

export interface FailureView {
  jobId: string;
  hostId: string;
  commandType: string | null;
  subject: string;
  at: string;
  kind: 'failed' | 'rejected';
  code: string;
  message: string;
  rolledBack: boolean | null;
  retryable: boolean;
}

/** Everything the page shows; sent whole on every change (it is small and bounded). */
export interface DashboardSnapshot {
  generatedAt: string;
  broker: { connected: boolean; since: string; error: string | null };
  eventsSeen: number;
  hosts: HostView[];
  jobs: JobView[];
  results: ResultView[];
  failures: FailureView[];
}

/** How many finished jobs and failures the page keeps (newest first). */
export const RECENT_LIMIT = 50;

/** Folds agent events into what the dashboard shows. Pure: no I/O, no timers. */
export class DashboardState {
  private readonly hosts = new Map<string, HostView>();
  private readonly jobs = new Map<string, JobView>();
  private results: ResultView[] = [];
  private failures: FailureView[] = [];
  private eventsSeen = 0;
  private broker: DashboardSnapshot['broker'] = {
    connected: false,
    since: new Date().toISOString(),
    error: null,
  };

  setBroker(connected: boolean, error: string | null = null): void {
    this.broker = { connected, since: new Date().toISOString(), error };
  }

  apply(event: AgentEvent): void {
    this.eventsSeen += 1;
    const hostId = hostOf(event);
    const host = this.hostView(hostId);
    host.lastEventAt = laterOf(host.lastEventAt, event.time);
    const kind = eventKindOf(event.type);
    const job = event.correlationid;
    switch (kind) {
      case 'started':
      case 'stopping': {
        const e = event as AgentEventOf<'started'>;
        host.status = kind === 'started' ? 'up' : 'stopping';
        host.agentVersion = e.data.agentVersion;
        return;
      }
      case 'accepted': {
        const e = event as AgentEventOf<'accepted'>;
        if (!this.jobs.has(job)) this.jobs.set(job, this.newJob(job, hostId, e.data.commandType, event));
        return;
      }
      case 'progress': {
        const e = event as AgentEventOf<'progress'>;
        const view = this.jobs.get(job) ?? this.newJob(job, hostId, '?', event);
        const d = e.data;
        Object.assign(view, {
          updatedAt: event.time,
          step: d.step,
          stepIndex: d.stepIndex,
          stepCount: d.stepCount,
          percent: percentOf(d),
          bytesDone: d.bytesDone ?? null,
          bytesTotal: d.bytesTotal ?? null,
          bytesPerSecond: d.bytesPerSecond ?? null,
          etaMs: etaMs(d) ?? null,
        });
        this.jobs.set(job, view);
        return;
      }
      case 'succeeded': {
        const e = event as AgentEventOf<'succeeded'>;
        this.jobs.delete(job);
        if (e.data.commandType === 'agent.ping') {
          const r = e.data.result as { agentVersion?: string; tools?: Record<string, string | null> };
          host.status = host.status === 'stopping' ? 'stopping' : 'up';
          host.agentVersion = r.agentVersion ?? host.agentVersion;
          host.lastPing = {
            at: event.time,
            ok: true,
            durationMs: e.data.durationMs,
            agentVersion: r.agentVersion ?? null,
            tools: r.tools ?? null,
            error: null,
          };
          return;
        }
        const r = e.data.result as {
          snapshot?: { name?: string; kind?: string; physicalSize?: number };
          strategy?: { name?: string };
          vmPauseMs?: number;
        };
        this.results = [
          {
            jobId: job,
            hostId,
            commandType: e.data.commandType,
            subject: event.subject,
            finishedAt: event.time,
            durationMs: e.data.durationMs,
            snapshotName: r.snapshot?.name ?? null,
            snapshotKind: r.snapshot?.kind ?? null,
            physicalSize: r.snapshot?.physicalSize ?? null,
            strategy: r.strategy?.name ?? null,
            vmPauseMs: r.vmPauseMs ?? null,
          },
          ...this.results,
        ].slice(0, RECENT_LIMIT);
        return;
      }
      case 'failed':
      case 'rejected': {
        this.jobs.delete(job);
        const failure = this.failureOf(
          event as AgentEventOf<'failed'> | AgentEventOf<'rejected'>,
          hostId,
          kind,
        );
        if (failure.commandType === 'agent.ping') {
          host.lastPing = {
            at: event.time,
            ok: false,
            durationMs: null,
            agentVersion: null,
            tools: null,
            error: `${failure.code}: ${failure.message}`,
          };
        }
        this.failures = [failure, ...this.failures].slice(0, RECENT_LIMIT);
        return;
      }
      default:
        return;
    }
  }

  snapshot(now: Date = new Date()): DashboardSnapshot {
    return {
      generatedAt: now.toISOString(),
      broker: this.broker,
      eventsSeen: this.eventsSeen,
      hosts: [...this.hosts.values()].sort((a, b) => a.hostId.localeCompare(b.hostId)),
      jobs: [...this.jobs.values()].sort((a, b) => a.acceptedAt.localeCompare(b.acceptedAt)),
      results: this.results,
      failures: this.failures,
    };
  }

  private hostView(hostId: string): HostView {
    let host = this.hosts.get(hostId);
    if (!host) {
      host = {
        hostId,
        lastEventAt: new Date(0).toISOString(),
        status: 'seen',
        agentVersion: null,
        lastPing: null,
      };
      this.hosts.set(hostId, host);
    }
    return host;
  }

  private newJob(jobId: string, hostId: string, commandType: string, event: AgentEvent): JobView {
    return {
      jobId,
      hostId,
      commandType,
      subject: event.subject,
      acceptedAt: event.time,
      updatedAt: event.time,
      step: null,
      stepIndex: null,
      stepCount: null,
      percent: 0,
      bytesDone: null,
      bytesTotal: null,
      bytesPerSecond: null,
      etaMs: null,
    };
  }

  private failureOf(
    event: AgentEventOf<'failed'> | AgentEventOf<'rejected'>,
    hostId: string,
    kind: 'failed' | 'rejected',
  ): FailureView {
    const d = event.data;
    const failed = kind === 'failed' ? (d as AgentEventOf<'failed'>['data']) : undefined;
    return {
      jobId: event.correlationid,
      hostId,
      commandType: d.commandType,
      subject: event.subject,
      at: event.time,
      kind,
      code: d.error.code,
      message: d.error.message,
      rolledBack: failed ? failed.rolledBack : null,
      retryable: failed ? failed.retryable : d.error.retryable,
    };
  }
}

function laterOf(a: string, b: string): string {
  return Date.parse(b) > Date.parse(a) ? b : a;
}
