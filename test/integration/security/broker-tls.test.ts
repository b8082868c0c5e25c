// TLS to the broker against a real TLS listener (a RabbitMQ node started for these tests, with a
// CA made by openssl; it requires a client certificate): the agent and snapctl connect with the
// configured CA and client certificate; a server certificate the CA did not sign and a missing
// client certificate are refused; a bad CA or certificate path stops the agent with exit 78 naming the key.
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openBrokerConnection } from '../../../src/client/index.js';
import { loadConfig } from '../../../src/config/index.js';
import { brokerTlsOptions } from '../../../src/messaging/broker-tls.js';
import { startTestAgent, type TestAgent } from '../../support/agent.js';
import { lastJson, snapctl } from '../../support/snapctl.js';
import { startTlsBroker, type TlsBroker } from '../../support/tls-broker.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));

describe('TLS to the broker (real TLS listener)', () => {
  let broker: TlsBroker;
  let agent: TestAgent | undefined;

  beforeAll(async () => {
    broker = await startTlsBroker();
  });
  afterAll(async () => {
    await agent?.stop();
    await broker?.stop();
  });

  it('the agent and snapctl connect over amqps with the CA and a client certificate; a command runs', async () => {
    const tls = { caFile: broker.caFile, certFile: broker.certFile, keyFile: broker.keyFile };
    agent = await startTestAgent({
      overrides: { hostId: 'i12-tls-agent', broker: { urls: [broker.url], tls } },
    });
    const run = await snapctl(
      [
        'ping',
        '--host',
        'i12-tls-agent',
        '--broker-url',
        broker.url,
        '--commands-exchange',
        agent.names.commandsExchange,
        '--events-exchange',
        agent.names.eventsExchange,
        '--timeout',
        '30',
        '--json',
      ],
      {
        AGENT_BROKER_CA_FILE: tls.caFile,
        AGENT_BROKER_CERT_FILE: tls.certFile,
        AGENT_BROKER_KEY_FILE: tls.keyFile,
      },
    );
    expect(run.exitCode, run.stderr).toBe(0);
    expect(lastJson(run.stdout)).toMatchObject({ ok: true, outcome: 'succeeded' });
  });

  it('refuses a server whose certificate the configured CA did not sign, and goes nowhere without a client certificate', async () => {
    const otherCa = brokerTlsOptions({
      caFile: broker.otherCaFile,
      certFile: broker.certFile,
      keyFile: broker.keyFile,
    });
    await expect(
      openBrokerConnection({ urls: [broker.url], connectTimeoutMs: 10_000, tls: otherCa }),
    ).rejects.toThrow(/certificate|self.signed|unable to verify/i);
    const noClientCert = brokerTlsOptions({ caFile: broker.caFile, certFile: '', keyFile: '' });
    const refused = await openBrokerConnection({
      urls: [broker.url],
      connectTimeoutMs: 10_000,
      tls: noClientCert,
    }).then(
      () => 'connected',
      (error: Error) => error.message,
    );
    console.log(`without a client certificate: ${refused}`);
    await expect(
      openBrokerConnection({ urls: [broker.url], connectTimeoutMs: 10_000, tls: noClientCert }),
    ).rejects.toThrow(/BROKER_UNREACHABLE|unreachable|certificate|closed|socket|handshake/i);
    // The right CA and certificate work (the two refusals are about the certificates, not the node).
    const connection = await openBrokerConnection({
      urls: [broker.url],
      connectTimeoutMs: 10_000,
      tls: brokerTlsOptions({ caFile: broker.caFile, certFile: broker.certFile, keyFile: broker.keyFile }),
    });
    await connection.close();
  });

  it('a bad CA or certificate path stops the agent at start: exit 78 naming the key', async () => {
    const start = (env: Record<string, string>) =>
      execa('node', ['--import', 'tsx', 'src/main.ts'], {
        cwd: ROOT,
        env: {
          AGENT_BROKER_URLS: broker.url,
          AGENT_STATE_DIR: '/tmp/i12-never-used',
          AGENT_HTTP_PORT: '0',
          ...env,
        },
        reject: false,
        timeout: 60_000,
      });
    const [badCa, notACert] = await Promise.all([
      start({ AGENT_BROKER_CA_FILE: '/nonexistent/i12-ca.pem' }),
      start({
        AGENT_BROKER_CA_FILE: broker.caFile,
        AGENT_BROKER_CERT_FILE: '/etc/hostname',
        AGENT_BROKER_KEY_FILE: broker.keyFile,
      }),
    ]);
    expect(badCa.exitCode, badCa.stderr).toBe(78);
    expect(badCa.stderr).toMatch(/\[key: broker\.tls\.caFile\].*\/nonexistent\/i12-ca\.pem/);
    expect(notACert.exitCode, notACert.stderr).toBe(78);
    expect(notACert.stderr).toMatch(/\[key: broker\.tls\.certFile\]/);
    // The same check, in-process: a certificate without its key names the missing key.
    expect(() => loadConfig({ env: { AGENT_BROKER_CERT_FILE: broker.certFile } })).toThrowError(
      /broker\.tls\.keyFile/,
    );
  });
});
