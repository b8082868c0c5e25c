#!/usr/bin/env node
// snapctl: the operator CLI of clvm-snapshot-agent. Exit codes: see src/cli/exit-codes.ts.
// Only wiring: the CLI and the dashboard it can serve know nothing of each other.
import { runSnapctl } from './cli/program.js';
import { startDashboard } from './dashboard/server.js';
import { brokerTlsOptions } from './messaging/broker-tls.js';

process.exitCode = await runSnapctl(
  process.argv.slice(2),
  { stdout: process.stdout, stderr: process.stderr },
  {
    startDashboard: (config, listen) =>
      startDashboard({
        brokerUrls: config.broker.urls,
        eventsExchange: config.topology.eventsExchange,
        connectTimeoutMs: config.broker.connectTimeoutMs,
        tls: brokerTlsOptions(config.broker.tls),
        port: listen.port,
        host: listen.host,
      }),
  },
);
