import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { Logger } from './logger.js';

/** One readiness condition, e.g. "consumer active" or "publisher connected". */
export interface ReadinessCheck {
  name: string;
  /** True when ready; otherwise `detail` says why not. */
  check(): { ok: boolean; detail?: string };
}

export interface HealthServerOptions {
  host: string;
  port: number;
  registry: Registry;
  readiness: ReadinessCheck[];
  logger: Logger;
}

export interface HealthServer {
  /** The bound address (port resolved when 0 was asked). */
  address: { host: string; port: number };
  close(): Promise<void>;
}

/**
 * node:http server for probes and scraping:
 * - GET /livez: 200 whenever the event loop answers (it does nothing else on purpose);
 * - GET /readyz: 200 only when every readiness check passes, else 503; the JSON body says why;
 * - GET /metrics: the agent's Prometheus registry.
 */
export async function startHealthServer(opts: HealthServerOptions): Promise<HealthServer> {
  const server = createServer((req, res) => {
    handle(req, res, opts).catch((error: unknown) => {
      opts.logger.error({ err: error, url: req.url }, 'health server request failed');
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('internal error\n');
    });
  });
  // Probes hold no long connections; do not let keep-alive sockets delay shutdown.
  server.keepAliveTimeout = 1000;
  server.requestTimeout = 10_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (error) => opts.logger.error({ err: error }, 'health server error'));
  const bound = server.address() as AddressInfo;
  return {
    address: { host: bound.address, port: bound.port },
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((error) => (error ? reject(error) : resolve()));
        server.closeAllConnections();
      }),
  };
}

async function handle(req: IncomingMessage, res: ServerResponse, opts: HealthServerOptions) {
  const path = (req.url ?? '/').split('?')[0];
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD' }).end();
    return;
  }
  switch (path) {
    case '/livez':
      json(res, 200, { status: 'ok' });
      return;
    case '/readyz': {
      const checks = Object.fromEntries(opts.readiness.map((c) => [c.name, c.check()]));
      const ready = Object.values(checks).every((c) => c.ok);
      json(res, ready ? 200 : 503, { status: ready ? 'ready' : 'not ready', checks });
      return;
    }
    case '/metrics': {
      const body = await opts.registry.metrics();
      res.writeHead(200, { 'content-type': opts.registry.contentType }).end(body);
      return;
    }
    default:
      json(res, 404, { error: 'not found', paths: ['/livez', '/readyz', '/metrics'] });
  }
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' }).end(`${JSON.stringify(body)}\n`);
}
