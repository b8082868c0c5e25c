import type { ChannelModel, ConsumeMessage } from 'amqplib';
import { AgentError } from '../errors/index.js';
import {
  type AgentEvent,
  type AgentEventOf,
  type Command,
  eventBindingPattern,
  eventKindOf,
  TERMINAL_KINDS,
} from '../protocol/index.js';
import {
  type CommandSigner,
  DIRECT_REPLY_TO,
  handleEventMessage,
  openConfirmChannel,
  publishCommand,
  subscribeEvents,
} from './broker-session.js';

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
  model: ChannelModel,
  command: Command,
  options: SendAndWaitOptions,
): Promise<TerminalEvent> {
  let settle: ((event: TerminalEvent) => void) | undefined;
  const terminal = new Promise<TerminalEvent>((resolve) => {
    settle = resolve;
  });
  const seen = new Set<string>();
  const onEvent = (event: AgentEvent): void => {
    if (event.correlationid !== command.id) return;
    // The same event can come twice (events exchange and reply-to, or an outbox replay).
    if (seen.has(event.id)) return;
    seen.add(event.id);
    options.onEvent?.(event);
    const kind = eventKindOf(event.type);
    if (kind && TERMINAL_KINDS.has(kind)) settle?.(event as TerminalEvent);
  };
  const onInvalid = (problem: string) => options.onInvalid?.(problem);

  const subscription = await subscribeEvents(
    model,
    options.eventsExchange,
    [eventBindingPattern({ hostId: options.hostId })],
    onEvent,
    onInvalid,
  );
  const channel = await openConfirmChannel(model);
  try {
    if (options.replyTo) {
      // Direct reply-to: consume the pseudo queue (no-ack) on the channel that publishes.
      await channel.consume(
        DIRECT_REPLY_TO,
        (message: ConsumeMessage | null) => handleEventMessage(message, onEvent, onInvalid),
        { noAck: true },
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
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new AgentError(
              'TIMEOUT',
              `no result for ${command.type} ${command.id} from host "${options.hostId}" within ${Math.round(options.timeoutMs / 1000)} s (it may still be running: snapctl watch --host ${options.hostId})`,
              { retryable: true, details: { commandId: command.id } },
            ),
          ),
        options.timeoutMs,
      );
    });
    try {
      return await Promise.race([terminal, timedOut]);
    } finally {
      clearTimeout(timer);
    }
  } finally {
    await channel.close().catch(() => {});
    await subscription.close();
  }
}
