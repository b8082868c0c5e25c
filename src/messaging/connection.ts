import { EventEmitter } from 'node:events';
import { type Channel, type ChannelModel, type ConfirmChannel, connect } from 'amqplib';
import { AgentError, BrokerUnavailableError, messageOf } from '../errors/index.js';
import { type Logger, silentLogger } from '../observability/logger.js';
import { acquireWithTimeout, backoffDelay, settlesWithin, sleep, withTimeout } from '../timing.js';
import { AGENT_NAME, AGENT_VERSION } from '../version.js';
import type { BrokerTlsOptions } from './broker-tls.js';

/** Where a {@link BrokerConnection} is in its life; 'ready' is the only state with a live connection. */
export const ConnectionState = {
  /** Constructed, not started. */
  Idle: 'idle',
  /** The first attempts, before any connection was open. */
  Connecting: 'connecting',
  /** Open, and every set-up registered with {@link BrokerConnection.addSetup} ran on it. */
  Ready: 'ready',
  /** Lost, and trying again (with backoff, round the list of URLs). */
  Reconnecting: 'reconnecting',
  /** Closed by {@link BrokerConnection.close}, or lost with `reconnect: false`; final. */
  Closed: 'closed',
} as const;
export type ConnectionState = (typeof ConnectionState)[keyof typeof ConnectionState];

/** The events a {@link BrokerConnection} emits, with their arguments. */
export interface BrokerConnectionEvents {
  /** A connection is open and set up; `where` is its URL, redacted. */
  connected: [where: string];
  /** The connection was lost (not emitted for {@link BrokerConnection.close}). */
  disconnected: [error: Error | undefined];
  /** The last attempt failed with `error` (or the connection was lost); the next comes after `delayMs`. */
  reconnecting: [attempt: number, delayMs: number, error: unknown];
  /** Every change of {@link BrokerConnection.state}. */
  state: [state: ConnectionState, error: Error | undefined];
}

export interface BrokerConnectionOptions {
  /** What this connection is for ('consume', 'publish', 'snapctl'); in logs and error details. */
  role: string;
  /** The `connection_name` client property operators (and tests) find the connection by. */
  connectionName: string;
  /** Tried in turn, one per attempt. */
  urls: readonly string[];
  /** AMQP heartbeat; 0 disables it; unset takes the broker's. A URL's own `?heartbeat=` wins. */
  heartbeatSeconds?: number;
  /** Bound on one attempt: TCP connect plus the AMQP handshake. */
  connectTimeoutMs: number;
  /** Bound on each broker call made through {@link BrokerConnection.bounded} (default connectTimeoutMs). */
  callTimeoutMs?: number;
  /** Reconnect after a loss (default true); without it a lost connection is final ('closed'). */
  reconnect?: boolean;
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** CA and client certificate for amqps:// URLs (brokerTlsOptions). */
  tls?: BrokerTlsOptions;
  logger?: Logger;
}

/** Something to declare on every new connection (queues, bindings, consumers). */
export type ConnectionSetup = (model: ChannelModel) => Promise<void>;

const DEFAULT_RECONNECT_MIN_MS = 1_000;
const DEFAULT_RECONNECT_MAX_MS = 15_000;

/** `amqp://user:pass@host:5672/vh?x` → `amqp://host:5672/vh`: safe to log and to print. */
export function redactBrokerUrl(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.protocol}//${parsed.host}${parsed.pathname}`;
  } catch {
    return '(unparsable broker URL)';
  }
}

/** The agent's `connection_name` for one role of one host. */
export function connectionName(hostId: string, role: string): string {
  return `${AGENT_NAME}/${hostId}/${role}`;
}

interface Waiter {
  resolve(model: ChannelModel): void;
  reject(error: Error): void;
}

/**
 * The one AMQP connection of the agent, snapctl and the dashboard. It goes round the list of
 * URLs, bounds every attempt and (through {@link bounded}) every call, logs URLs only redacted,
 * and after a loss (broker restart, network cut, heartbeat timeout, closed by an operator)
 * reconnects with jittered exponential backoff and runs every {@link addSetup} set-up again
 * before it is 'ready'. Model: rabbitmq-client's Connection; own code because amqplib's
 * `recovery` option takes a single URL and hides the live connection from channel owners.
 *
 * Two ways in: {@link start} connects in the background and never fails because the broker is
 * away (the agent); {@link open} makes one pass over the URLs and throws BROKER_UNREACHABLE
 * naming each (snapctl, the dashboard).
 */
export class BrokerConnection extends EventEmitter<BrokerConnectionEvents> {
  readonly role: string;
  readonly connectionName: string;
  private readonly opts: BrokerConnectionOptions;
  private readonly logger: Logger;
  private model: ChannelModel | undefined;
  private current: ConnectionState = ConnectionState.Idle;
  private readonly closeController = new AbortController();
  private readonly waiters = new Set<Waiter>();
  private readonly setups = new Set<ConnectionSetup>();
  private loop: Promise<void> | undefined;

  constructor(opts: BrokerConnectionOptions) {
    super();
    if (opts.urls.length === 0)
      throw new BrokerUnavailableError('no broker URL configured', { role: opts.role });
    this.opts = opts;
    this.role = opts.role;
    this.connectionName = opts.connectionName;
    this.logger = (opts.logger ?? silentLogger()).child({ component: 'broker-connection', role: opts.role });
  }

  get state(): ConnectionState {
    return this.current;
  }

  /** Starts connecting in the background (idempotent). Failures are logged and retried, never thrown. */
  start(): void {
    if (this.current !== ConnectionState.Idle) return;
    this.setState(ConnectionState.Connecting);
    this.runLoop(undefined);
  }

  /**
   * Tries each URL once and resolves when one answers; afterwards the connection is kept up like
   * after {@link start} (unless `reconnect: false`). Throws BROKER_UNREACHABLE naming every URL
   * tried, credentials hidden.
   */
  async open(): Promise<void> {
    if (this.current !== ConnectionState.Idle)
      throw new BrokerUnavailableError('broker connection already started', { role: this.role });
    this.setState(ConnectionState.Connecting);
    const problems: string[] = [];
    for (const url of this.opts.urls) {
      try {
        const model = await this.connectOnce(url);
        this.runLoop({ model, url });
        await this.whenConnected();
        return;
      } catch (error) {
        if (this.closing) throw error;
        problems.push(`${redactBrokerUrl(url)}: ${messageOf(error)}`);
      }
    }
    this.setState(ConnectionState.Closed);
    throw new AgentError('BROKER_UNREACHABLE', `cannot connect to the broker (${problems.join('; ')})`, {
      retryable: true,
      details: { urls: this.opts.urls.map(redactBrokerUrl) },
    });
  }

  /**
   * Resolves with the live connection, waiting for a (re)connect if needed. Rejects with
   * BrokerUnavailableError when the connection is closed or `signal` aborts.
   */
  whenConnected(signal?: AbortSignal): Promise<ChannelModel> {
    if (this.current === ConnectionState.Closed)
      return Promise.reject(new BrokerUnavailableError('broker connection closed', { role: this.role }));
    if (signal?.aborted) return Promise.reject(abortError(signal, this.role));
    if (this.model && this.current === ConnectionState.Ready) return Promise.resolve(this.model);
    return new Promise<ChannelModel>((resolve, reject) => {
      const onAbort = () => {
        this.waiters.delete(waiter);
        reject(abortError(signal!, this.role));
      };
      const waiter: Waiter = {
        resolve: (model) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(model);
        },
        reject: (error) => {
          signal?.removeEventListener('abort', onAbort);
          reject(error);
        },
      };
      this.waiters.add(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * Runs `setup` on every later connection before it counts as ready, so what a user declared
   * (an exclusive queue, its bindings and consumer) comes back with the connection. A set-up that
   * fails drops that connection and the loop tries again. Returns the way to unregister.
   */
  addSetup(setup: ConnectionSetup): () => void {
    this.setups.add(setup);
    return () => this.setups.delete(setup);
  }

  /** `call` bounded by callTimeoutMs: amqplib RPCs otherwise wait for the heartbeat to notice a dead peer. */
  bounded<T>(call: Promise<T>, what: string): Promise<T> {
    const ms = this.callTimeoutMs;
    return withTimeout(call, ms, () => new BrokerUnavailableError(`${what}: no answer within ${ms} ms`));
  }

  /**
   * A channel on the live connection (or on `model`, inside a set-up); a server-side close
   * (404, 406...) reaches the caller as a failed call, not as an uncaught 'error'.
   */
  async openChannel(model?: ChannelModel): Promise<Channel> {
    const on = model ?? (await this.whenConnected());
    const channel = await this.openBounded(on.createChannel(), 'open a channel');
    channel.on('error', () => {});
    return channel;
  }

  /** Like {@link openChannel}, with publisher confirms. */
  async openConfirmChannel(model?: ChannelModel): Promise<ConfirmChannel> {
    const on = model ?? (await this.whenConnected());
    const channel = await this.openBounded(on.createConfirmChannel(), 'open a confirm channel');
    channel.on('error', () => {});
    return channel;
  }

  /** Stops reconnecting and closes the connection; pending {@link whenConnected} calls reject. */
  async close(): Promise<void> {
    if (this.current === ConnectionState.Closed) {
      await settlesWithin(this.loop ?? Promise.resolve(), this.opts.connectTimeoutMs);
      return;
    }
    this.setState(ConnectionState.Closed);
    this.closeController.abort();
    this.rejectWaiters();
    const model = this.model;
    this.model = undefined;
    if (model) {
      try {
        // A broker that stopped answering must not hold up shutdown: bound the close handshake.
        const done = await settlesWithin(model.close(), this.opts.connectTimeoutMs);
        if (!done) this.logger.warn('the broker did not confirm the connection close in time');
      } catch (error) {
        // Already closing or closed by the broker: nothing left to release.
        this.logger.debug({ err: error }, 'closing the broker connection failed (already closed?)');
      }
    }
    await settlesWithin(this.loop ?? Promise.resolve(), this.opts.connectTimeoutMs);
  }

  private get callTimeoutMs(): number {
    return this.opts.callTimeoutMs ?? this.opts.connectTimeoutMs;
  }

  private openBounded<T extends Channel>(opening: Promise<T>, what: string): Promise<T> {
    const ms = this.callTimeoutMs;
    return acquireWithTimeout(
      opening,
      ms,
      () => new BrokerUnavailableError(`${what}: no answer within ${ms} ms`, { role: this.role }),
      (late) => late.close(),
    );
  }

  private runLoop(first: { model: ChannelModel; url: string } | undefined): void {
    this.loop = this.run(first).catch((error: unknown) => {
      // run() handles its own errors; reaching this is a bug, but must not kill the process.
      this.logger.error({ err: error }, 'broker connection loop stopped unexpectedly');
    });
  }

  private get closing(): boolean {
    return this.current === ConnectionState.Closed;
  }

  private async run(first: { model: ChannelModel; url: string } | undefined): Promise<void> {
    let attempt = 0;
    let urlIndex = first ? this.opts.urls.indexOf(first.url) + 1 : 0;
    let opened = first?.model;
    let openedUrl = first?.url;
    while (!this.closing) {
      if (!opened) {
        const url = this.opts.urls[urlIndex % this.opts.urls.length]!;
        urlIndex += 1;
        try {
          opened = await this.connectOnce(url);
          openedUrl = url;
        } catch (error) {
          if (this.closing) break;
          attempt += 1;
          await this.waitBeforeRetry(attempt, error, url);
          continue;
        }
      }
      const model = opened;
      const url = openedUrl!;
      opened = undefined;
      if (this.closing) {
        await model.close().catch(() => undefined);
        break;
      }
      attempt = 0;
      const lost = await this.holdConnection(model, url);
      if (this.closing) break;
      if (this.opts.reconnect === false) {
        this.setState(ConnectionState.Closed, lost);
        this.rejectWaiters(lost);
        break;
      }
      attempt = 1;
      await this.waitBeforeRetry(attempt, lost, url);
    }
  }

  /**
   * Runs the set-ups on `model`, publishes it as the live connection and resolves when it closes
   * (with the error, if any).
   */
  private async holdConnection(model: ChannelModel, url: string): Promise<Error | undefined> {
    const where = redactBrokerUrl(url);
    const closed = new Promise<Error | undefined>((resolve) => {
      model.once('close', (error?: Error) => resolve(error));
    });
    // Without an 'error' listener a connection error would be thrown as an uncaught exception.
    model.on('error', (error: Error) =>
      this.logger.warn({ err: error, broker: where }, 'broker connection error'),
    );
    model.on('blocked', (reason: string) =>
      this.logger.warn(
        { reason, broker: where },
        'broker blocked publishing on this connection (resource alarm)',
      ),
    );
    model.on('unblocked', () => this.logger.info({ broker: where }, 'broker unblocked this connection'));
    try {
      for (const setup of this.setups) await setup(model);
    } catch (error) {
      this.logger.warn({ err: error, broker: where }, 'set-up on the new broker connection failed');
      await settlesWithin(model.close(), this.opts.connectTimeoutMs).catch(() => undefined);
      await closed;
      return error instanceof Error ? error : new Error(messageOf(error));
    }
    if (this.closing) {
      await model.close().catch(() => undefined);
      return undefined;
    }
    this.model = model;
    this.setState(ConnectionState.Ready);
    this.logger.info({ broker: where, connectionName: this.connectionName }, 'connected to the broker');
    for (const waiter of this.waiters) waiter.resolve(model);
    this.waiters.clear();
    this.emit('connected', where);
    const error = await closed;
    if (this.model === model) this.model = undefined;
    if (!this.closing) {
      this.logger.warn({ err: error, broker: where }, 'broker connection lost');
      if (this.opts.reconnect !== false) this.setState(ConnectionState.Reconnecting, error);
      this.emit('disconnected', error);
    }
    return error;
  }

  private async waitBeforeRetry(attempt: number, error: unknown, url: string): Promise<void> {
    const delayMs = backoffDelay(
      attempt,
      this.opts.reconnectMinMs ?? DEFAULT_RECONNECT_MIN_MS,
      this.opts.reconnectMaxMs ?? DEFAULT_RECONNECT_MAX_MS,
    );
    this.logger.warn(
      { err: error, broker: redactBrokerUrl(url), attempt, delayMs },
      'broker not reachable, retrying',
    );
    this.emit('reconnecting', attempt, delayMs, error);
    await sleep(delayMs, this.closeController.signal);
  }

  /** One connection attempt, bounded by connectTimeoutMs even if the handshake stalls. */
  private connectOnce(url: string): Promise<ChannelModel> {
    const timeoutMs = this.opts.connectTimeoutMs;
    const attempt = connect(withHeartbeat(url, this.opts.heartbeatSeconds), {
      ...this.opts.tls,
      timeout: timeoutMs,
      clientProperties: {
        connection_name: this.connectionName,
        product: AGENT_NAME,
        version: AGENT_VERSION,
      },
    });
    // A connection that completes after we gave up must not linger.
    return acquireWithTimeout(
      attempt,
      timeoutMs,
      () => new BrokerUnavailableError(`no AMQP handshake within ${timeoutMs} ms`, { role: this.role }),
      (late) => late.close(),
    );
  }

  private setState(state: ConnectionState, error?: Error): void {
    if (this.current === state) return;
    this.current = state;
    this.emit('state', state, error);
  }

  private rejectWaiters(cause?: Error): void {
    const closed = new BrokerUnavailableError('broker connection closed', { role: this.role, cause });
    for (const waiter of this.waiters) waiter.reject(closed);
    this.waiters.clear();
  }
}

function abortError(signal: AbortSignal, role: string): BrokerUnavailableError {
  return new BrokerUnavailableError('gave up waiting for the broker connection', {
    cause: signal.reason,
    role,
  });
}

/** Adds `?heartbeat=N` unless the URL already sets one (amqplib reads heartbeat from the URL). */
function withHeartbeat(url: string, heartbeatSeconds: number | undefined): string {
  if (heartbeatSeconds === undefined) return url;
  const parsed = new URL(url);
  if (!parsed.searchParams.has('heartbeat')) parsed.searchParams.set('heartbeat', String(heartbeatSeconds));
  return parsed.toString();
}
