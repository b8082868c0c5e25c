import { randomUUID } from 'node:crypto';
import {
  type AgentEvent,
  boundWord,
  type EventData,
  type EventKind,
  encodeWord,
  eventRoutingKey,
  eventTypePrefix,
  routingWord,
  type VolumeRef,
  volumeKey,
} from '../protocol/index.js';
import { AGENT_NAME } from '../version.js';
import type { OutgoingEvent } from './ports.js';

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

/**
 * The event that takes the place of one the broker can never accept (outbox quarantine): same
 * correlationid and sequence, routed on the host/volume words of the original's subject, with the
 * original's replyTo so a caller waiting for a reply learns of it.
 */
export function quarantineNotice(hostId: string, original: OutgoingEvent, reason: string): OutgoingEvent {
  const e = original.event as Partial<AgentEvent>;
  const correlationId = typeof e.correlationid === 'string' ? e.correlationid : 'unknown';
  const sequence = typeof e.sequence === 'string' && /^\d{10}$/.test(e.sequence) ? e.sequence : '0000000001';
  const subject = typeof e.subject === 'string' ? e.subject : 'agent';
  const event = {
    specversion: '1.0',
    id: randomUUID(),
    source: `${AGENT_NAME}/${hostId}`,
    type: `${eventTypePrefix}quarantined`,
    subject,
    time: new Date().toISOString(),
    datacontenttype: 'application/json',
    correlationid: correlationId,
    sequence,
    data: {
      jobId: correlationId,
      eventId: typeof e.id === 'string' ? e.id : 'unknown',
      eventType: typeof e.type === 'string' ? e.type : 'unknown',
      reason: reason.slice(0, 1000),
    },
  } as AgentEvent;
  const outgoing: OutgoingEvent = {
    event,
    routingKey: `${routingWord(hostId)}.${boundWord(encodeWord(subject))}.quarantined`,
    persistent: true,
  };
  if (original.replyTo && Buffer.byteLength(original.replyTo) <= 255) {
    outgoing.replyTo = original.replyTo;
    const cid = original.correlationId ?? correlationId;
    outgoing.correlationId = Buffer.byteLength(cid) <= 255 ? cid : undefined;
  }
  return outgoing;
}
