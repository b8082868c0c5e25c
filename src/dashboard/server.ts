import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { AgentClient, ConnectionState } from '../client/index.js';
import { messageOf } from '../errors/index.js';
import type { BrokerTlsOptions } from '../messaging/broker-tls.js';
import type { Logger } from '../observability/logger.js';
import { silentLogger } from '../observability/logger.js';
import { DashboardState } from './state.js';

/**
 * The front end is plain files in src/dashboard/public. The path is resolved from the repository
 * root so the same files serve from src (tsx) and from dist (tsc copies no assets); the Docker
 * image copies src/dashboard/public next to dist.
 */
const PUBLIC_DIR = fileURLToPath(new URL('../../src/dashboard/public/', import.meta.url));

/** The only files served: a fixed list, so no request path ever reaches the file system. */
const STATIC_FILES: Readonly<Record<string, { file: string; type: string }>> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/index.html': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
};

/** Pushes at most this often to the browsers: progress events can come fast. */
const PUSH_INTERVAL_MS = 200;
const KEEPALIVE_MS = 15_000;

export interface DashboardOptions {
  brokerUrls: readonly string[];
  eventsExchange: string;
  connectTimeoutMs: number;
  /** CA and client certificate for amqps:// URLs. */
  tls?: BrokerTlsOptions;
  port: number;
  host: string;
  /** Binding on the events exchange (default `#`: every host, volume and kind). */
  binding?: string;
  logger?: Logger;
}

export interface RunningDashboard {
  url: string;
  state: DashboardState;
  close(): Promise<void>;
}

/**
 * Starts the dashboard: subscribes to the events exchange (the first connection must work:
 * BROKER_UNREACHABLE / NOT_ROUTED otherwise), then serves the page and an SSE stream of the
 * state. A lost broker connection is retried in the background and shown on the page.
 */
export async function startDashboard(options: DashboardOptions): Promise<RunningDashboard> {
  const logger = options.logger ?? silentLogger();
  const state = new DashboardState();
  const clients = new Set<ServerResponse>();
  let pushTimer: NodeJS.Timeout | undefined;

  const pushSoon = (): void => {
    if (pushTimer) return;
    pushTimer = setTimeout(() => {
      pushTimer = undefined;
      const frame = `event: state\ndata: ${JSON.stringify(state.snapshot())}\n\n`;
      for (const client of clients) client.write(frame);
    }, PUSH_INTERVAL_MS);
  };

  // The first connection must work; later losses are retried by the connection, which makes the
  // subscription again before it is ready.
  const client = await AgentClient.connect({
    urls: options.brokerUrls,
    connectTimeoutMs: options.connectTimeoutMs,
    eventsExchange: options.eventsExchange,
    reconnect: true,
    connectionName: 'clvm-snapshot-agent/dashboard',
    logger,
    ...(options.tls ? { tls: options.tls } : {}),
  });
  try {
    await client.subscribe(
      { patterns: [options.binding ?? '#'] },
      (event) => {
        state.apply(event);
        pushSoon();
      },
      (problem, meta) =>
        logger.warn({ routingKey: meta.routingKey, problem }, 'dashboard: invalid event ignored'),
    );
  } catch (error) {
    await client.close();
    throw error;
  }
  state.setBroker(true);
  pushSoon();
  client.connection.on('state', (now, error) => {
    if (now === ConnectionState.Ready) state.setBroker(true);
    else if (now === ConnectionState.Reconnecting)
      state.setBroker(false, error ? messageOf(error) : 'connection closed');
    else return;
    pushSoon();
  });
  client.connection.on('reconnecting', (_attempt, _delayMs, error) => {
    if (error === undefined) return;
    state.setBroker(false, messageOf(error));
    pushSoon();
  });

  const server = createServer((request, response) => {
    handleRequest(request, response, state, clients).catch((error: unknown) => {
      logger.error({ err: error }, 'dashboard: request failed');
      if (!response.headersSent) response.writeHead(500, { 'content-type': 'text/plain' });
      response.end('internal error\n');
    });
  });
  const keepalive = setInterval(() => {
    for (const client of clients) client.write(': keepalive\n\n');
  }, KEEPALIVE_MS);
  try {
    await listen(server, options.port, options.host);
  } catch (error) {
    clearInterval(keepalive);
    await client.close();
    throw error;
  }
  const address = server.address() as AddressInfo;
  const hostForUrl = address.family === 'IPv6' ? `[${address.address}]` : address.address;

  return {
    url: `http://${hostForUrl}:${address.port}/`,
    state,
    close: async () => {
      clearInterval(keepalive);
      clearTimeout(pushTimer);
      for (const browser of clients) browser.end();
      clients.clear();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await client.close();
    },
  };
}

async function handleRequest(
  request: IncomingMessage,
  response: ServerResponse,
  state: DashboardState,
  clients: Set<ServerResponse>,
): Promise<void> {
  const path = new URL(request.url ?? '/', 'http://dashboard').pathname;
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    response.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' });
    response.end('method not allowed\n');
    return;
  }
  if (path === '/events') {
    response.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
    });
    // The whole state at once, so a new or reconnected browser never waits for the next event.
    response.write(`retry: 2000\nevent: state\ndata: ${JSON.stringify(state.snapshot())}\n\n`);
    clients.add(response);
    request.on('close', () => clients.delete(response));
    return;
  }
  if (path === '/api/state') {
    response.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-cache' });
    response.end(JSON.stringify(state.snapshot()));
    return;
  }
  const asset = STATIC_FILES[path];
  if (!asset) {
    response.writeHead(404, { 'content-type': 'text/plain' });
    response.end('not found\n');
    return;
  }
  const body = await readFile(`${PUBLIC_DIR}${asset.file}`);
  response.writeHead(200, {
    'content-type': asset.type,
    'cache-control': 'no-cache',
    'x-content-type-options': 'nosniff',
    'content-security-policy': "default-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'",
  });
  response.end(request.method === 'HEAD' ? undefined : body);
}

function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}
