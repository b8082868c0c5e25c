import { EventEmitter } from 'node:events';
import { type ChannelModel, connect } from 'amqplib';
import { BrokerUnavailableError } from '../errors/index.js';
import type { Logger } from '../observability/logger.js';
import { AGENT_NAME, AGENT_VERSION } from '../version.js';
import type { BrokerTlsOptions } from './broker-tls.js';
import { backoffDelay, sleep } from './timing.js';

export interface BrokerConnectionOptions {
  /** What this connection is for ('consume', 'publish'); part of the connection_name. */
  role: string;
  /** Tried in turn, one per attempt. */
  urls: string[];
  hostId: string;
  /** AMQP heartbeat; 0 disables it. A URL's own `?heartbeat=` wins. */
  heartbeatSeconds: number;
  /** Bound on one attempt: TCP connect plus the AMQP handshake. */
  connectTimeoutMs: number;
  reconnectMinMs: number;
  reconnectMaxMs: number;
  /** CA and client certificate for amqps:// URLs (brokerTlsOptions). */
  tls?: BrokerTlsOptions;
  logger: Logger;
}

/** `amqp://user:pass@host:5672/vh?x` → `amqp://host:5672/vh`: safe to log. */
export function describeBrokerUrl(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.protocol}//${parsed.host}${parsed.pathname}`;
  } catch {
    return '(unparsable broker URL)';
  }
}

/** The `connection_name` client property operators (and tests) find a connection by. */
export function connectionName(hostId: string, role: string): string {
  return `${AGENT_NAME}/${hostId}/${role}`;
}

interface Waiter {
  resolve(model: ChannelModel): void;
  reject(error: Error): void;
}

/**
 * One AMQP connection that keeps itself up: it connects in the background, and after any loss
 * (broker restart, network cut, heartbeat timeout, connection closed by an operator) reconnects
 * with jittered exponential backoff, going round the list of URLs. It never throws or rejects
 * because the broker is away; users wait for it with {@link whenConnected} and re-create their
 * channels on 'connected'.
 *
 * Own loop rather than amqplib's `recovery` option: that takes a single URL, and we need to
 * rotate over cluster nodes and to expose the live connection to channel owners.
 *
 * Events: 'connected' (url without credentials), 'disconnected' (error?), 'reconnecting' (attempt, delayMs).
 */
export class BrokerConnection extends EventEmitter {
  readonly role: string;
  readonly connectionName: string;
  private readonly opts: BrokerConnectionOptions;
  private readonly logger: Logger;
  private model: ChannelModel | undefined;
  private started = false;
  private closing = false;
  private readonly closeController = new AbortController();
  private readonly waiters = new Set<Waiter>();
  private loop: Promise<void> | undefined;

  constructor(opts: BrokerConnectionOptions) {
    super();
    if (opts.urls.length === 0)
      throw new BrokerUnavailableError('no broker URL configured', { role: opts.role });
    this.opts = opts;
    this.role = opts.role;
    this.connectionName = connectionName(opts.hostId, opts.role);
    this.logger = opts.logger.child({ component: 'broker-connection', role: opts.role });
  }

  /** True while a connection is open. */
  get connected(): boolean {
    return this.model !== undefined;
  }

  /** Starts connecting in the background (idempotent). Failures are logged and retried, never thrown. */
  start(): void {
    if (this.started || this.closing) return;
    this.started = true;
    this.loop = this.run().catch((error: unknown) => {
      // run() handles its own errors; reaching this is a bug, but must not kill the process.
      this.logger.error({ err: error }, 'broker connection loop stopped unexpectedly');
    });
  }

  /**
   * Resolves with the live connection, waiting for a (re)connect if needed. Rejects with
   * BrokerUnavailableError when the connection is closed with {@link close} or `signal` aborts.
   */
  whenConnected(signal?: AbortSignal): Promise<ChannelModel> {
    if (this.closing)
      return Promise.reject(new BrokerUnavailableError('broker connection closed', this.errorOpts()));
    if (signal?.aborted) return Promise.reject(abortError(signal, this.role));
    if (this.model) return Promise.resolve(this.model);
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

  /** Stops reconnecting and closes the connection; pending {@link whenConnected} calls reject. */
  async close(): Promise<void> {
    if (this.closing) {
      await settlesWithin(this.loop ?? Promise.resolve(), this.opts.connectTimeoutMs);
      return;
    }
    this.closing = true;
    this.closeController.abort();
    const closed = new BrokerUnavailableError('broker connection closed', this.errorOpts());
    for (const waiter of this.waiters) waiter.reject(closed);
    this.waiters.clear();
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

  private async run(): Promise<void> {
    let attempt = 0;
    let urlIndex = 0;
    while (!this.closing) {
      const url = this.opts.urls[urlIndex % this.opts.urls.length]!;
      urlIndex += 1;
      let model: ChannelModel;
      try {
        model = await this.connectOnce(url);
      } catch (error) {
        if (this.closing) break;
        attempt += 1;
        await this.waitBeforeRetry(attempt, error, url);
        continue;
      }
      if (this.closing) {
        await model.close().catch(() => undefined);
        break;
      }
      attempt = 0;
      const lost = await this.holdConnection(model, url);
      if (this.closing) break;
      attempt = 1;
      await this.waitBeforeRetry(attempt, lost, url);
    }
  }

  /** Publishes `model` as the live connection and resolves when it closes (with the error, if any). */
  private holdConnection(model: ChannelModel, url: string): Promise<Error | undefined> {
    const where = describeBrokerUrl(url);
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
    this.model = model;
    this.logger.info({ broker: where, connectionName: this.connectionName }, 'connected to the broker');
    for (const waiter of this.waiters) waiter.resolve(model);
    this.waiters.clear();
    this.emit('connected', where);
    return closed.then((error) => {
      if (this.model === model) this.model = undefined;
      if (!this.closing) {
        this.logger.warn({ err: error, broker: where }, 'broker connection lost');
        this.emit('disconnected', error);
      }
      return error;
    });
  }

  private async waitBeforeRetry(attempt: number, error: unknown, url: string): Promise<void> {
    const delayMs = backoffDelay(attempt, this.opts.reconnectMinMs, this.opts.reconnectMaxMs);
    this.logger.warn(
      { err: error, broker: describeBrokerUrl(url), attempt, delayMs },
      'broker not reachable, retrying',
    );
    this.emit('reconnecting', attempt, delayMs);
    await sleep(delayMs, this.closeController.signal);
  }

  /** One connection attempt, bounded by connectTimeoutMs even if the handshake stalls. */
  private async connectOnce(url: string): Promise<ChannelModel> {
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
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(new BrokerUnavailableError(`no AMQP handshake within ${timeoutMs} ms`, this.errorOpts())),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([attempt, timeout]);
    } catch (error) {
      // A connection that completes after we gave up must not linger.
      attempt.then((late) => late.close().catch(() => undefined)).catch(() => undefined);
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  private errorOpts(): { role: string } {
    return { role: this.role };
  }
}

/** True when `promise` settles within `ms` (its rejection is rethrown), false on timeout. */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([promise.then(() => true as const), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function abortError(signal: AbortSignal, role: string): BrokerUnavailableError {
  return new BrokerUnavailableError('gave up waiting for the broker connection', {
    cause: signal.reason,
    role,
  });
}

/** Adds `?heartbeat=N` unless the URL already sets one (amqplib reads heartbeat from the URL). */
function withHeartbeat(url: string, heartbeatSeconds: number): string {
  const parsed = new URL(url);
  if (!parsed.searchParams.has('heartbeat')) parsed.searchParams.set('heartbeat', String(heartbeatSeconds));
  return parsed.toString();
}
