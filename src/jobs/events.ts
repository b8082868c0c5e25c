import { randomUUID } from 'node:crypto';
import type { OutgoingEvent } from '../messaging/types.js';
import {
  type AgentEvent,
  type EventData,
  type EventKind,
  eventRoutingKey,
  eventTypePrefix,
  type VolumeRef,
  volumeKey,
} from '../protocol/index.js';
import { AGENT_NAME } from '../version.js';

/** Formats a per-job sequence number the way events carry it: 10 digits, zero-padded. */
export function formatSequence(sequence: number): string {
  if (!Number.isInteger(sequence) || sequence < 1 || sequence > 9_999_999_999) {
    throw new RangeError(`event sequence ${sequence} out of range`);
  }
  return String(sequence).padStart(10, '0');
}

export interface BuildEventOptions<K extends EventKind> {
  hostId: string;
  /** The command id (jobId) the event is about. */
  correlationId: string;
  sequence: number;
  volume: VolumeRef | null;
  data: EventData<K>;
  /** For terminal events: also answer the command's AMQP replyTo. */
  replyTo?: string | null;
  replyCorrelationId?: string | null;
  now?: Date;
}

/**
 * Builds one CloudEvents 1.0 event and its routing: `<hostId>.<volumeKey>.<kind>` on the events
 * exchange. Everything but progress is persistent (outbox, confirms, replay after reconnect).
 */
export function buildEvent<K extends EventKind>(kind: K, opts: BuildEventOptions<K>): OutgoingEvent {
  const event = {
    specversion: '1.0',
    id: randomUUID(),
    source: `${AGENT_NAME}/${opts.hostId}`,
    type: `${eventTypePrefix}${kind}`,
    subject: volumeKey(opts.volume),
    time: (opts.now ?? new Date()).toISOString(),
    datacontenttype: 'application/json',
    correlationid: opts.correlationId,
    sequence: formatSequence(opts.sequence),
    data: opts.data,
  } as AgentEvent;
  const outgoing: OutgoingEvent = {
    event,
    routingKey: eventRoutingKey(opts.hostId, opts.volume, kind),
    persistent: kind !== 'progress',
  };
  if (opts.replyTo) {
    outgoing.replyTo = opts.replyTo;
    outgoing.correlationId = opts.replyCorrelationId ?? opts.correlationId;
  }
  return outgoing;
}
