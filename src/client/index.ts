/**
 * The typed client for orchestrators (`clvm-snapshot-agent/client`): connect with URL rotation,
 * send a command (signed when a key is given), await its terminal event with a timeout, subscribe
 * to a host's / volume's / kind's events with typed payloads, each event delivered once (dedup by
 * event id). snapctl and the dashboard use it; README "Client library" shows an example.
 */
import type { ChannelModel } from 'amqplib';
import type { BrokerTlsOptions } from '../messaging/broker-tls.js';
import { BrokerConnection } from '../messaging/connection.js';
import type { Logger } from '../observability/logger.js';
import {
  type AgentEvent,
  type Command,
  type EventKind,
  eventBindingPattern,
  type VolumeRef,
} from '../protocol/index.js';
import {
  type CommandSigner,
  EventDeduper,
  type EventSubscription,
  type InvalidEventHandler,
  subscribeEvents,
} from './messages.js';
import { type SendAndWaitOptions, sendAndWait, type TerminalEvent } from './send-and-wait.js';

export type { BrokerTlsOptions } from '../messaging/broker-tls.js';
export {
  BrokerConnection,
  type BrokerConnectionEvents,
  ConnectionState,
  redactBrokerUrl,
} from '../messaging/connection.js';
export type {
  AgentEvent,
  AgentEventOf,
  Command,
  CommandType,
  EventKind,
  VolumeRef,
} from '../protocol/index.js';
export { type CommandSigner, EventDeduper, type EventSubscription } from './messages.js';
export type { TerminalEvent } from './send-and-wait.js';

export interface AgentClientOptions {
  /** Broker URLs, tried in turn (the first that answers is used). */
  urls: readonly string[];
  connectTimeoutMs?: number;
  /** Defaults: the agent's default topology (`clvm.commands`, `clvm.events`). */
  commandsExchange?: string;
  eventsExchange?: string;
  /** Signs every command with the management plane's Ed25519 key (preferred). */
  signer?: CommandSigner;
  /** Legacy HMAC key (the agent's security.signingKey); used only without `signer`. */
  signingKey?: string;
  /** CA, client certificate and key for amqps:// URLs. */
  tls?: BrokerTlsOptions;
  confirmTimeoutMs?: number;
  /**
   * Reconnect after losing the broker (default false: a lost connection is final). Subscriptions
   * are made again on every new connection; watch `client.connection` for its state.
   */
  reconnect?: boolean;
  /** The `connection_name` the broker shows (default `clvm-snapshot-agent/client`). */
  connectionName?: string;
  logger?: Logger;
}

export interface RunOptions {
  /** How long to wait for the terminal event (default 10 min). */
  timeoutMs?: number;
  /** Every event of the command in arrival order, each once (accepted, progress..., terminal). */
  onEvent?: (event: AgentEvent) => void;
  /** Also ask for the terminal event as an RPC reply (direct reply-to). Default true. */
  replyTo?: boolean;
  /** Messages on the subscription that are not valid events (kept visible, never dropped silently). */
  onInvalid?: (problem: string) => void;
}

/** Which events a subscription gets; omitted parts match anything. Or raw binding patterns. */
export type EventFilter = { hostId?: string; volume?: VolumeRef; kind?: EventKind } | { patterns: string[] };

/** The connection an AgentClient rides on, for callers that use the broker calls directly. */
export async function openBrokerConnection(
  options: Pick<
    AgentClientOptions,
    'urls' | 'connectTimeoutMs' | 'tls' | 'reconnect' | 'connectionName' | 'logger'
  >,
): Promise<BrokerConnection> {
  const connection = new BrokerConnection({
    role: 'client',
    connectionName: options.connectionName ?? 'clvm-snapshot-agent/client',
    urls: options.urls,
    connectTimeoutMs: options.connectTimeoutMs ?? 5000,
    reconnect: options.reconnect ?? false,
    ...(options.tls ? { tls: options.tls } : {}),
    ...(options.logger ? { logger: options.logger } : {}),
  });
  await connection.open();
  return connection;
}

export class AgentClient {
  private constructor(
    /** The broker connection: its `state` and typed events ('state', 'connected', 'disconnected'...). */
    readonly connection: BrokerConnection,
    private readonly options: AgentClientOptions,
  ) {}

  /** Connects to the first broker URL that answers; throws BROKER_UNREACHABLE naming every URL tried. */
  static async connect(options: AgentClientOptions): Promise<AgentClient> {
    return new AgentClient(await openBrokerConnection(options), options);
  }

  private get commandsExchange(): string {
    return this.options.commandsExchange ?? 'clvm.commands';
  }

  private get eventsExchange(): string {
    return this.options.eventsExchange ?? 'clvm.events';
  }

  /**
   * Sends `command` to `hostId` and resolves with its terminal event (succeeded, failed or
   * rejected). Subscribes before publishing, so nothing is missed. Throws TIMEOUT, or NOT_ROUTED
   * when the host has no command queue.
   */
  async run(hostId: string, command: Command, options: RunOptions = {}): Promise<TerminalEvent> {
    const send: SendAndWaitOptions = {
      hostId,
      commandsExchange: this.commandsExchange,
      eventsExchange: this.eventsExchange,
      replyTo: options.replyTo ?? true,
      timeoutMs: options.timeoutMs ?? 600_000,
      confirmTimeoutMs: this.options.confirmTimeoutMs ?? 10_000,
      ...(options.onEvent ? { onEvent: options.onEvent } : {}),
      ...(options.onInvalid ? { onInvalid: options.onInvalid } : {}),
      ...(this.options.signer ? { signer: this.options.signer } : {}),
      ...(!this.options.signer && this.options.signingKey ? { signingKey: this.options.signingKey } : {}),
    };
    return sendAndWait(this.connection, command, send);
  }

  /**
   * Subscribes to events; each event id reaches `onEvent` once, also across reconnects (the
   * subscription is made again on every new connection). Close the subscription when done.
   */
  async subscribe(
    filter: EventFilter,
    onEvent: (event: AgentEvent, meta: { routingKey: string }) => void,
    onInvalid: InvalidEventHandler = () => {},
  ): Promise<EventSubscription> {
    const patterns = 'patterns' in filter ? filter.patterns : [eventBindingPattern(filter)];
    const dedup = new EventDeduper();
    let current: EventSubscription | undefined;
    const subscribeOn = async (model?: ChannelModel): Promise<void> => {
      current = await subscribeEvents(this.connection, {
        exchange: this.eventsExchange,
        patterns,
        onEvent: (event, meta) => {
          if (dedup.first(event.id)) onEvent(event, meta);
        },
        onInvalid,
        ...(model ? { model } : {}),
      });
    };
    await subscribeOn();
    const unregister = this.connection.addSetup(subscribeOn);
    return {
      get queue() {
        return current?.queue ?? '';
      },
      close: async () => {
        unregister();
        await current?.close();
      },
    };
  }

  async close(): Promise<void> {
    await this.connection.close();
  }
}
