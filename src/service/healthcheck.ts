#!/usr/bin/env node
// The image's HEALTHCHECK: asks the agent's own /livez, on the address the agent's configuration
// gives (same file, same environment), so a changed http.port or http.host is followed.
// Exit 0 healthy, 1 not (Docker's convention).
import { loadConfig } from '../config/index.js';
import { messageOf } from '../errors/index.js';

const TIMEOUT_MS = 4000;

/** The address to probe: a wildcard bind address is reached through loopback. */
function livezUrl(http: { host: string; port: number }): string {
  const host =
    http.host === '0.0.0.0' || http.host === '' ? '127.0.0.1' : http.host === '::' ? '[::1]' : http.host;
  const bracketed = host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
  return `http://${bracketed}:${http.port}/livez`;
}

async function main(): Promise<number> {
  const { config } = loadConfig();
  const response = await fetch(livezUrl(config.http), { signal: AbortSignal.timeout(TIMEOUT_MS) });
  return response.ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(`healthcheck: ${messageOf(error)}`);
    process.exit(1);
  },
);
