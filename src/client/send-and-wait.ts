import type { ConsumeMessage } from 'amqplib';
import { AgentError } from '../errors/index.js';
import type { BrokerConnection } from '../messaging/connection.js';
import {
  type AgentEvent,
  type AgentEventOf,
  type Command,
  eventBindingPattern,
  eventKindOf,
  TERMINAL_KINDS,
} from '../protocol/index.js';
import { withTimeout } from '../timing.js';
import {
  type CommandSigner,
  closeChannel,
  DIRECT_REPLY_TO,
  EventDeduper,
  handleEventMessage,
  publishCommand,
  subscribeEvents,
} from './messages.js';

export type TerminalEvent = AgentEventOf<'succeeded'> | AgentEventOf<'failed'> | AgentEventOf<'rejected'>;

export interface SendAndWaitOptions {
  hostId: string;
  commandsExchange: string;
  eventsExchange: string;
  signingKey?: string;
  signer?: CommandSigner;
  /** Also ask for the terminal event as an RPC reply (RabbitMQ direct reply-to). */
  replyTo: boolean;
  timeoutMs: number;
  confirmTimeoutMs: number;
  /** Every event of this command, in arrival order (accepted, progress..., terminal). */
  onEvent?: (event: AgentEvent) => void;
  /** Messages on the subscription that are not valid events. */
  onInvalid?: (problem: string) => void;
}

/**
 * Sends one command and resolves with its terminal event (succeeded, failed or rejected).
 * Subscribes BEFORE publishing, so no event can be missed; filters by correlationid.
 * Throws TIMEOUT when nothing terminal arrives in time, NOT_ROUTED when the host has no queue.
 */
export async function sendAndWait(
  connection: BrokerConnection,
  command: Command,
  options: SendAndWaitOptions,
): Promise<TerminalEvent> {
  let settle: ((event: TerminalEvent) => void) | undefined;
  const terminal = new Promise<TerminalEvent>((resolve) => {
    settle = resolve;
  });
  const dedup = new EventDeduper();
  const onEvent = (event: AgentEvent): void => {
    if (event.correlationid !== command.id) return;
    // The same event can come twice (events exchange and reply-to, or an outbox replay).
    if (!dedup.first(event.id)) return;
    options.onEvent?.(event);
    const kind = eventKindOf(event.type);
    if (kind && TERMINAL_KINDS.has(kind)) settle?.(event as TerminalEvent);
  };
  const onInvalid = (problem: string) => options.onInvalid?.(problem);

  const subscription = await subscribeEvents(connection, {
    exchange: options.eventsExchange,
    patterns: [eventBindingPattern({ hostId: options.hostId })],
    onEvent,
    onInvalid,
  });
  const channel = await connection.openConfirmChannel();
  try {
    if (options.replyTo) {
      // Direct reply-to: consume the pseudo queue (no-ack) on the channel that publishes.
      await connection.bounded(
        channel.consume(
          DIRECT_REPLY_TO,
          (message: ConsumeMessage | null) => handleEventMessage(message, onEvent, onInvalid),
          { noAck: true },
        ),
        'consume direct reply-to',
      );
    }
    await publishCommand(channel, command, {
      exchange: options.commandsExchange,
      hostId: options.hostId,
      confirmTimeoutMs: options.confirmTimeoutMs,
      ...(options.signingKey ? { signingKey: options.signingKey } : {}),
      ...(options.signer ? { signer: options.signer } : {}),
      ...(options.replyTo ? { replyTo: DIRECT_REPLY_TO } : {}),
    });
    return await withTimeout(
      terminal,
      options.timeoutMs,
      () =>
        new AgentError(
          'TIMEOUT',
          `no result for ${command.type} ${command.id} from host "${options.hostId}" within ${Math.round(options.timeoutMs / 1000)} s (it may still be running: snapctl watch --host ${options.hostId})`,
          { retryable: true, details: { commandId: command.id } },
        ),
    );
  } finally {
    await closeChannel(connection, channel);
    await subscription.close();
  }
}
