// What the job layer needs from the transport, defined here: the messaging layer delivers
// IncomingCommands to a CommandHandler and implements the EventSink.
import type { AgentEvent } from '../protocol/index.js';

/** A command as it came off the per-host queue, before any validation. */
export interface IncomingCommand {
  body: Buffer;
  messageId: string | undefined;
  correlationId: string | undefined;
  replyTo: string | undefined;
  headers: Record<string, unknown>;
  /** AMQP content-type / content-encoding properties, as sent. */
  contentType?: string | undefined;
  contentEncoding?: string | undefined;
  redelivered: boolean;
  /** x-delivery-count of the quorum queue (0 on first delivery). */
  deliveryCount: number;
}

/** What the consumer does with the delivery once the handler returns. */
export type CommandDisposition = 'ack' | 'dead-letter';

/** Called once per delivery; must not throw (a throw is treated as dead-letter and logged). */
export type CommandHandler = (command: IncomingCommand) => Promise<CommandDisposition>;

/** One event to publish on the events exchange (and to `replyTo`, for terminal events). */
export interface OutgoingEvent {
  event: AgentEvent;
  routingKey: string;
  /**
   * Persistent events (accepted, terminal, lifecycle) go through the on-disk outbox, are published
   * persistent + mandatory with a confirm, and are replayed in order after a reconnect.
   * Non-persistent ones (progress) are best effort: dropped while the broker is away.
   */
  persistent: boolean;
  replyTo?: string;
  correlationId?: string;
}

/** Where the job layer sends events; the messaging layer implements it. */
export interface EventSink {
  /** Resolves once a persistent event is durably in the outbox (not necessarily confirmed). */
  publish(event: OutgoingEvent): Promise<void>;
  /** True when the event (by id) is still waiting in the outbox. */
  holds?(eventId: string): boolean;
}
