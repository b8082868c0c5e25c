/**
 * The typed client for orchestrators (`clvm-snapshot-agent/client`): connect with URL rotation,
 * send a command (signed when a key is given), await its terminal event with a timeout, subscribe
 * to a host's / volume's / kind's events with typed payloads, each event delivered once (dedup by
 * event id). snapctl and the dashboard use it; README "Client library" shows an example.
 */
import type { ChannelModel } from 'amqplib';
import {
  type CommandSigner,
  connectBroker,
  type EventSubscription,
  type InvalidEventHandler,
  subscribeEvents,
} from '../cli/broker-session.js';
import { type SendAndWaitOptions, sendAndWait, type TerminalEvent } from '../cli/send-and-wait.js';
import type { BrokerTlsOptions } from '../messaging/broker-tls.js';
import {
  type AgentEvent,
  type Command,
  type EventKind,
  eventBindingPattern,
  type VolumeRef,
} from '../protocol/index.js';

export type { CommandSigner, EventSubscription } from '../cli/broker-session.js';
export type { TerminalEvent } from '../cli/send-and-wait.js';
export type { BrokerTlsOptions } from '../messaging/broker-tls.js';
export type {
  AgentEvent,
  AgentEventOf,
  Command,
  CommandType,
  EventKind,
  VolumeRef,
} from '../protocol/index.js';

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

/** Remembers the last `capacity` event ids: at-least-once delivery becomes once per subscriber. */
export class EventDeduper {
  private readonly seen = new Set<string>();
  constructor(private readonly capacity = 10_000) {}

  /** True the first time an id is offered. */
  first(id: string): boolean {
    if (this.seen.has(id)) return false;
    this.seen.add(id);
    if (this.seen.size > this.capacity) this.seen.delete(this.seen.values().next().value as string);
    return true;
  }
}

export class AgentClient {
  private constructor(
    private readonly model: ChannelModel,
    private readonly options: AgentClientOptions,
  ) {}

  /** Connects to the first broker URL that answers; throws BROKER_UNREACHABLE naming every URL tried. */
  static async connect(options: AgentClientOptions): Promise<AgentClient> {
    const model = await connectBroker(options.urls, options.connectTimeoutMs ?? 5000, options.tls ?? {});
    return new AgentClient(model, options);
  }

  private get commandsExchange(): string {
    return this.options.commandsExchange ?? 'clvm.commands';
  }

  private get eventsExchange(): string {
    return this.options.eventsExchange ?? 'clvm.events';
  }

  /** Calls `listener` once when the broker connection closes (the caller reconnects). */
  onClose(listener: (error?: Error) => void): void {
    this.model.once('close', listener);
  }

  /**
   * Sends `command` to `hostId` and resolves with its terminal event (succeeded, failed or
   * rejected). Subscribes before publishing, so nothing is missed. Throws TIMEOUT, or NOT_ROUTED
   * when the host has no command queue.
   */
  async run(hostId: string, command: Command, options: RunOptions = {}): Promise<TerminalEvent> {
    const dedup = new EventDeduper();
    const send: SendAndWaitOptions = {
      hostId,
      commandsExchange: this.commandsExchange,
      eventsExchange: this.eventsExchange,
      replyTo: options.replyTo ?? true,
      timeoutMs: options.timeoutMs ?? 600_000,
      confirmTimeoutMs: this.options.confirmTimeoutMs ?? 10_000,
      onEvent: (event) => {
        if (dedup.first(event.id)) options.onEvent?.(event);
      },
      ...(options.onInvalid ? { onInvalid: options.onInvalid } : {}),
      ...(this.options.signer ? { signer: this.options.signer } : {}),
      ...(!this.options.signer && this.options.signingKey ? { signingKey: this.options.signingKey } : {}),
    };
    return sendAndWait(this.model, command, send);
  }

  /** Subscribes to events; each event id reaches `onEvent` once. Close the subscription when done. */
  async subscribe(
    filter: EventFilter,
    onEvent: (event: AgentEvent, meta: { routingKey: string }) => void,
    onInvalid: InvalidEventHandler = () => {},
  ): Promise<EventSubscription> {
    const patterns = 'patterns' in filter ? filter.patterns : [eventBindingPattern(filter)];
    const dedup = new EventDeduper();
    return subscribeEvents(
      this.model,
      this.eventsExchange,
      patterns,
      (event, meta) => {
        if (dedup.first(event.id)) onEvent(event, meta);
      },
      onInvalid,
    );
  }

  async close(): Promise<void> {
    await this.model.close().catch(() => {});
  }
}
