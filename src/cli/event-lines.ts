import { etaMs, hostOf, percentOf } from '../client/event-facts.js';
import type { AgentEvent, AgentEventOf } from '../protocol/index.js';
import { eventKindOf } from '../protocol/index.js';
import { formatBytes, formatDuration, formatRate } from './format.js';

/** One line about a progress event: step, percent, bytes, rate and ETA when known. */
export function progressLine(event: AgentEventOf<'progress'>): string {
  const d = event.data;
  const parts = [`step ${d.stepIndex + 1}/${d.stepCount} ${d.step}`, `${percentOf(d).toFixed(1)}%`];
  if (d.bytesDone !== undefined) {
    parts.push(
      d.bytesTotal !== undefined
        ? `${formatBytes(d.bytesDone)} of ${formatBytes(d.bytesTotal)}`
        : formatBytes(d.bytesDone),
    );
  }
  if (d.bytesPerSecond !== undefined) parts.push(formatRate(d.bytesPerSecond));
  const eta = etaMs(d);
  if (eta !== undefined) parts.push(`ETA ${formatDuration(eta)}`);
  return parts.join('  ');
}

/** A short summary of a `succeeded` result, per command type. */
export function resultSummary(event: AgentEventOf<'succeeded'>): string {
  const result = event.data.result as Record<string, unknown>;
  switch (event.data.commandType) {
    case 'agent.ping': {
      const tools = (result.tools ?? {}) as Record<string, string | null>;
      const toolText = Object.entries(tools)
        .map(([name, version]) => `${name} ${version ?? 'missing'}`)
        .join(', ');
      return `agent ${String(result.agentVersion ?? '?')} (${toolText})`;
    }
    case 'snapshot.create': {
      const snapshot = (result.snapshot ?? {}) as Record<string, unknown>;
      const strategy = (result.strategy ?? {}) as Record<string, unknown>;
      return [
        `${String(snapshot.name ?? '?')} ${String(snapshot.kind ?? '')}`.trim(),
        formatBytes(typeof snapshot.physicalSize === 'number' ? snapshot.physicalSize : undefined),
        `strategy ${String(strategy.name ?? '?')}`,
        `VM paused ${formatDuration(typeof result.vmPauseMs === 'number' ? result.vmPauseMs : undefined)}`,
      ].join(', ');
    }
    default: {
      const text = JSON.stringify(result);
      return text.length > 160 ? `${text.slice(0, 157)}...` : text;
    }
  }
}

/** One plain line per event, for non-TTY output and for finished jobs in `watch`. */
export function eventLine(event: AgentEvent): string {
  const host = hostOf(event);
  const job = event.correlationid;
  const kind = eventKindOf(event.type);
  switch (kind) {
    case 'accepted': {
      const e = event as AgentEventOf<'accepted'>;
      return `${host} ${job} accepted ${e.data.commandType} ${event.subject}`;
    }
    case 'progress':
      return `${host} ${job} progress ${progressLine(event as AgentEventOf<'progress'>)}`;
    case 'succeeded': {
      const e = event as AgentEventOf<'succeeded'>;
      return `${host} ${job} succeeded ${e.data.commandType} in ${formatDuration(e.data.durationMs)}: ${resultSummary(e)}`;
    }
    case 'failed': {
      const e = event as AgentEventOf<'failed'>;
      const undo = e.data.rolledBack ? 'rolled back' : 'NOT rolled back';
      const retry = e.data.retryable ? ', retryable' : '';
      return `${host} ${job} failed ${e.data.commandType} in ${formatDuration(e.data.durationMs)}: ${e.data.error.code} ${e.data.error.message} (${undo}${retry})`;
    }
    case 'rejected': {
      const e = event as AgentEventOf<'rejected'>;
      const field = e.data.error.field ? ` [${e.data.error.field}]` : '';
      return `${host} ${job} rejected ${e.data.commandType ?? 'command'}: ${e.data.error.code}${field} ${e.data.error.message}`;
    }
    case 'started':
    case 'stopping': {
      const e = event as AgentEventOf<'started'>;
      const reason = e.data.reason ? ` (${e.data.reason})` : '';
      return `${host} agent ${kind} version ${e.data.agentVersion}${reason}`;
    }
    default:
      return `${host} ${job} ${event.type}`;
  }
}
