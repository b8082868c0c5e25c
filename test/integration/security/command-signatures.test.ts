// Ed25519 command signatures against the real broker and a real agent: every refusal is a
// `rejected` event with its own code, the command is dead-lettered and its handler never runs;
// snapctl signs with a key file written by `snapctl keys generate`; a replay never runs twice.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HandlerRegistry } from '../../../src/jobs/types.js';
import {
  type CommandEnvelope,
  envelopeFor,
  generateSigningKeyPair,
  COMMAND_SIGNATURE_HEADERS as H,
  parsePrivateKey,
  signBody,
  signCommand,
} from '../../../src/protocol/index.js';
import { startTestAgent, type TestAgent, TestClient } from '../../support/agent.js';
import { brokerUrl } from '../../support/broker.js';
import { uniqueSuffix } from '../../support/names.js';
import { lastJson, snapctl, topologyFlags } from '../../support/snapctl.js';
import { waitFor } from '../../support/wait.js';

const current = generateSigningKeyPair();
const retired = generateSigningKeyPair();
const stranger = generateSigningKeyPair();

describe('Ed25519 command signatures (real broker, real agent)', () => {
  const calls: string[] = [];
  const handlers: HandlerRegistry = {
    'agent.ping': async (ctx) => {
      calls.push(ctx.jobId);
      return {};
    },
  };
  let agent: TestAgent;
  const stopped: TestAgent[] = [];
  let client: TestClient;
  let keyDir: string;
  let hostId: string;

  beforeAll(async () => {
    hostId = `i12-sig-${uniqueSuffix()}`;
    keyDir = await mkdtemp(join(tmpdir(), 'i12-keys-'));
    agent = await startTestAgent({
      handlers,
      overrides: {
        hostId,
        security: {
          publicKeys: { 'mp-2026b': current.publicRaw, 'mp-2026a': retired.publicPem },
          acceptedKeyIds: ['mp-2026b'],
          clockSkewMs: 60_000,
          maxCommandLifetimeMs: 3_600_000,
        },
      },
    });
    client = await TestClient.open(agent);
  });
  afterAll(async () => {
    await client?.close();
    await agent?.stop();
    for (const old of stopped) await old.stop();
    if (keyDir) await rm(keyDir, { recursive: true, force: true });
  });

  const ping = (id: string) => Buffer.from(JSON.stringify({ id, type: 'agent.ping', params: {} }));
  const sign = (body: Buffer, envelope: Partial<CommandEnvelope> = {}, pem = current.privatePem) =>
    signCommand(body, { ...envelopeFor(hostId, 'mp-2026b', 600_000), ...envelope }, parsePrivateKey(pem));
  const at = (offsetMs: number) => new Date(Date.now() + offsetMs).toISOString();

  it('refuses each kind of bad envelope with its own code; none runs; all are dead-lettered', async () => {
    const cases: Array<{ id: string; headers: Record<string, unknown>; code: string; body?: Buffer }> = [
      { id: 'i12-none', headers: {}, code: 'SIGNATURE_MISSING' },
      // A legacy HMAC signature does not count once publicKeys are configured.
      {
        id: 'i12-hmac',
        headers: { 'x-signature': signBody(ping('i12-hmac'), 'k') },
        code: 'SIGNATURE_MISSING',
      },
      {
        id: 'i12-other-key',
        headers: sign(ping('i12-other-key'), {}, stranger.privatePem),
        code: 'SIGNATURE_INVALID',
      },
      {
        id: 'i12-tampered',
        headers: sign(ping('i12-tampered')),
        body: Buffer.from(JSON.stringify({ id: 'i12-tampered', type: 'agent.ping', params: {} }, null, 1)),
        code: 'SIGNATURE_INVALID',
      },
      {
        id: 'i12-claims-edited',
        headers: { ...sign(ping('i12-claims-edited')), [H.expiresAt]: at(3_000_000) },
        code: 'SIGNATURE_INVALID',
      },
      {
        id: 'i12-malformed',
        headers: { ...sign(ping('i12-malformed')), [H.issuedAt]: 'yesterday' },
        code: 'SIGNATURE_ENVELOPE_INVALID',
      },
      {
        id: 'i12-unknown-key',
        headers: sign(ping('i12-unknown-key'), { keyId: 'mp-1999' }),
        code: 'SIGNING_KEY_UNKNOWN',
      },
      {
        id: 'i12-retired-key',
        headers: sign(ping('i12-retired-key'), { keyId: 'mp-2026a' }, retired.privatePem),
        code: 'SIGNING_KEY_RETIRED',
      },
      {
        id: 'i12-other-host',
        headers: sign(ping('i12-other-host'), { hostId: 'i12-someone-else' }),
        code: 'WRONG_HOST',
      },
      {
        id: 'i12-expired',
        headers: sign(ping('i12-expired'), { issuedAt: at(-120_000), expiresAt: at(-1_000) }),
        code: 'COMMAND_EXPIRED',
      },
      {
        id: 'i12-future',
        headers: sign(ping('i12-future'), { issuedAt: at(300_000), expiresAt: at(600_000) }),
        code: 'COMMAND_NOT_YET_VALID',
      },
      {
        id: 'i12-too-long',
        headers: sign(ping('i12-too-long'), { issuedAt: at(0), expiresAt: at(7_200_000) }),
        code: 'COMMAND_LIFETIME_TOO_LONG',
      },
    ];
    for (const k of cases) await client.send(k.body ?? ping(k.id), { messageId: k.id, headers: k.headers });
    for (const k of cases) {
      const terminal = await client.waitTerminal(k.id);
      expect(terminal.kind, k.id).toBe('rejected');
      expect(terminal.event.data, k.id).toMatchObject({
        jobId: k.id,
        error: { code: k.code, retryable: false },
      });
    }
    const dead = await waitFor(
      async () => {
        const found = await client.deadLetters();
        return found.length >= cases.length ? found : undefined;
      },
      15_000,
      () => 'not every refused command reached the dead-letter queue',
    );
    expect(dead.map((m) => m.properties.messageId).sort()).toEqual(cases.map((k) => k.id).sort());
    expect(calls).toEqual([]);
  });

  it('runs a signed command once; the same message again is refused COMMAND_REPLAYED, also after a restart', async () => {
    const body = ping('i12-once');
    const headers = sign(body);
    await client.send(body, { headers });
    expect((await client.waitTerminal('i12-once')).kind).toBe('succeeded');
    await client.send(body, { headers });
    // Refusals under a used id carry correlationid <id>#<body digest>: they never join the job's events.
    const replays = () => client.events.filter((e) => e.event.correlationid.startsWith('i12-once#'));
    const replay = await waitFor(
      () => replays().find((e) => e.kind === 'rejected'),
      15_000,
      () => 'no answer to the replay',
    );
    expect(replay.event.data).toMatchObject({ error: { code: 'COMMAND_REPLAYED' } });
    // A fresh signature on the same id is a replay too: a signed id runs once.
    await client.send(body, { headers: sign(body) });
    await waitFor(
      () => (replays().filter((e) => e.kind === 'rejected').length === 2 ? true : undefined),
      15_000,
      () => 'no answer to the re-signed replay',
    );
    // Restart the agent on the same state dir: the journal still knows the id.
    await agent.stopAgent();
    stopped.push(agent);
    agent = await startTestAgent({
      handlers,
      reuse: agent,
      stateDir: agent.stateDir,
      overrides: { security: agent.config.security },
    });
    await client.send(body, { headers });
    await waitFor(
      () => (replays().filter((e) => e.kind === 'rejected').length === 3 ? true : undefined),
      15_000,
      () => 'no answer to the replay after the restart',
    );
    expect(calls.filter((id) => id === 'i12-once')).toEqual(['i12-once']);
    expect(client.terminal('i12-once').map((e) => e.kind)).toEqual(['succeeded']);
  });

  it('snapctl keys generate writes a pair (not a key the agent trusts: refused); snapctl signs with the trusted key file', async () => {
    const prefix = join(keyDir, 'mp-2026b');
    const generated = await snapctl(['keys', 'generate', '--out', prefix, '--key-id', 'mp-2026b', '--json']);
    expect(generated.exitCode, generated.stderr).toBe(0);
    const out = lastJson(generated.stdout) as { publicRaw: string; privateFile: string };
    expect(out.publicRaw).toMatch(/^[A-Za-z0-9+/]{43}=$/);
    // The generated key is not the agent's: its signature is refused.
    const names = agent.names;
    const flags = [...topologyFlags(brokerUrl(), names), '--host', hostId, '--timeout', '30', '--json'];
    const refused = await snapctl([
      'ping',
      ...flags,
      '--signing-key-file',
      out.privateFile,
      '--key-id',
      'mp-2026b',
    ]);
    expect(refused.exitCode, refused.stderr).toBe(3);
    expect(lastJson(refused.stdout)).toMatchObject({
      outcome: 'rejected',
      event: { data: { error: { code: 'SIGNATURE_INVALID' } } },
    });
    // The agent's own key (as the management plane holds it) signs a command that runs.
    const ownKey = join(keyDir, 'current.key');
    await writeFile(ownKey, current.privatePem, { mode: 0o600 });
    const ok = await snapctl(['ping', ...flags, '--id', 'i12-snapctl-ok'], {
      SNAPCTL_SIGNING_KEY_FILE: ownKey,
      SNAPCTL_KEY_ID: 'mp-2026b',
    });
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect(calls).toContain('i12-snapctl-ok');
  });
});
