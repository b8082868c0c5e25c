import { mkdir, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { recordingHandlers, type TestClient } from '../../support/agent.js';
import { agentsPerTest } from '../../support/agents-per-test.js';
import { waitFor } from '../../support/wait.js';

interface Case {
  name: string;
  id: string;
  body: unknown;
  code: string;
  field?: string;
  headers?: Record<string, unknown>;
  signingKey?: string;
}

describe('invalid input (real broker)', () => {
  const frame = agentsPerTest();

  /** Sends every case, then checks: one rejected event each (code, field), dead-lettered, nothing ran. */
  async function expectRejected(c: TestClient, cases: Case[], calls: string[]) {
    for (const k of cases) {
      await c.send(k.body, {
        messageId: k.id,
        headers: k.headers,
        signingKey: k.signingKey,
        replyTo: c.replyQueue,
        correlationId: `corr-${k.id}`,
      });
    }
    for (const k of cases) {
      const terminal = await c.waitTerminal(k.id);
      expect(terminal.kind, k.name).toBe('rejected');
      expect(terminal.event.data, k.name).toMatchObject({
        jobId: k.id,
        error: { code: k.code, retryable: false, ...(k.field ? { field: k.field } : {}) },
      });
      expect(terminal.event.sequence).toBe('0000000001');
    }
    // The rejected event also answers replyTo, with the caller's correlationId.
    await waitFor(
      () => (c.replies.length >= cases.length ? true : undefined),
      10_000,
      () => 'replies missing',
    );
    for (const k of cases) {
      const reply = c.replies.find((r) => r.event.correlationid === k.id);
      expect(reply?.correlationId, k.name).toBe(`corr-${k.id}`);
    }
    const dead = await waitFor(
      async () => {
        const found = await c.deadLetters();
        return found.length >= cases.length ? found : undefined;
      },
      15_000,
      () => 'not every rejected command reached the dead-letter queue',
    );
    expect(dead.map((m) => m.properties.messageId).sort()).toEqual(cases.map((k) => k.id).sort());
    expect(calls).toEqual([]);
    for (const k of cases) expect(c.terminal(k.id), k.name).toHaveLength(1);
  }

  it('refuses bad bodies, names and paths: rejected with code and field, dead-lettered, never run', async () => {
    const { runs: calls, handlers } = recordingHandlers();
    const agent = await frame.start({ handlers, overrides: { pools: { volumeGroups: ['vg0'] } } });
    const client = await frame.openClient(agent);
    const store = agent.config.store.roots[0]!;
    const pool = agent.config.pools.fileRoots[0]!;
    await mkdir(join(pool, 'p1'), { recursive: true });
    await symlink('/etc', join(pool, 'escape'));
    const create = (id: string, params: Record<string, unknown>) => ({
      id,
      type: 'snapshot.create',
      params: {
        volume: { kind: 'lvm', vg: 'vg0', lv: 'vol-1' },
        store: { root: store, dir: 'vol-1' },
        snapshot: 'snap-1',
        ...params,
      },
    });
    const cases: Case[] = [
      { name: 'not JSON', id: 'bad-json', body: '{"id": "bad-json", ', code: 'INVALID_JSON', field: 'body' },
      {
        name: 'schema: missing field',
        id: 'bad-schema',
        body: {
          id: 'bad-schema',
          type: 'snapshot.create',
          params: { volume: { kind: 'lvm', vg: 'vg0', lv: 'a' } },
        },
        code: 'SCHEMA_INVALID',
        field: 'params.store',
      },
      {
        name: 'schema: unknown key',
        id: 'bad-key',
        body: { id: 'bad-key', type: 'agent.ping', params: { shell: 'rm -rf /' } },
        code: 'SCHEMA_INVALID',
        field: 'params.shell',
      },
      {
        name: 'unknown type',
        id: 'bad-type',
        body: { id: 'bad-type', type: 'vm.destroy', params: {} },
        code: 'UNKNOWN_COMMAND_TYPE',
        field: 'type',
      },
      {
        name: 'oversize body',
        id: 'bad-size',
        body: { id: 'bad-size', type: 'agent.ping', params: {}, pad: 'x'.repeat(70_000) },
        code: 'MESSAGE_TOO_LARGE',
        field: 'body',
      },
      {
        name: 'invalid LV name',
        id: 'bad-lv',
        body: create('bad-lv', { volume: { kind: 'lvm', vg: 'vg0', lv: 'vol;reboot' } }),
        code: 'INVALID_NAME',
        field: 'params.volume.lv',
      },
      {
        name: 'reserved LV name',
        id: 'bad-lv-reserved',
        body: create('bad-lv-reserved', { volume: { kind: 'lvm', vg: 'vg0', lv: 'snapshot1' } }),
        code: 'INVALID_NAME',
        field: 'params.volume.lv',
      },
      {
        name: 'invalid VG name',
        id: 'bad-vg',
        body: create('bad-vg', { volume: { kind: 'lvm', vg: '-vg', lv: 'a' } }),
        code: 'INVALID_NAME',
        field: 'params.volume.vg',
      },
      {
        name: 'VG not allowed',
        id: 'bad-vg-allowed',
        body: create('bad-vg-allowed', { volume: { kind: 'lvm', vg: 'vg9', lv: 'a' } }),
        code: 'VOLUME_GROUP_NOT_ALLOWED',
        field: 'params.volume.vg',
      },
      {
        name: 'invalid VM name',
        id: 'bad-vm',
        body: create('bad-vm', { vm: 'i-2-34-VM $(id)' }),
        code: 'INVALID_NAME',
        field: 'params.vm',
      },
      {
        name: 'store root not configured',
        id: 'bad-store-root',
        body: create('bad-store-root', { store: { root: '/tmp', dir: 'x' } }),
        code: 'STORE_ROOT_NOT_CONFIGURED',
        field: 'params.store.root',
      },
      {
        name: 'store dir climbs out',
        id: 'bad-store-dir',
        body: create('bad-store-dir', { store: { root: store, dir: '../../etc' } }),
        code: 'INVALID_PATH',
        field: 'params.store.dir',
      },
      {
        name: 'pool outside the roots',
        id: 'bad-pool',
        body: create('bad-pool', { volume: { kind: 'file', pool: '/etc', file: 'passwd' } }),
        code: 'PATH_OUTSIDE_ROOTS',
        field: 'params.volume.pool',
      },
      {
        name: 'pool escapes through a symlink',
        id: 'bad-pool-link',
        body: create('bad-pool-link', {
          volume: { kind: 'file', pool: join(pool, 'escape'), file: 'passwd' },
        }),
        code: 'PATH_OUTSIDE_ROOTS',
        field: 'params.volume.pool',
      },
      {
        name: 'file name with a slash',
        id: 'bad-file',
        body: create('bad-file', { volume: { kind: 'file', pool: join(pool, 'p1'), file: '../../x' } }),
        code: 'INVALID_NAME',
        field: 'params.volume.file',
      },
    ];
    await expectRejected(client, cases, calls);

    // The agent keeps running: a valid command still goes through.
    await client.send({ id: 'good-after-bad', type: 'agent.ping', params: {} });
    expect((await client.waitTerminal('good-after-bad')).kind).toBe('succeeded');
    expect(calls).toEqual(['good-after-bad']);
    const metrics = await (await fetch(`${await agent.httpUrl()}/metrics`)).text();
    expect(metrics).toMatch(/clvm_agent_commands_rejected_total\{reason="INVALID_NAME"\} 5/);
  });

  it('with signing on: a missing or bad signature is rejected before parsing; a signed command runs', async () => {
    const { runs: calls, handlers } = recordingHandlers();
    const key = 'test-signing-key-0123456789';
    const agent = await frame.start({ handlers, overrides: { security: { signingKey: key } } });
    const client = await frame.openClient(agent);
    const ping = (id: string) => ({ id, type: 'agent.ping', params: {} });
    await expectRejected(
      client,
      [
        { name: 'unsigned', id: 'sig-missing', body: ping('sig-missing'), code: 'SIGNATURE_MISSING' },
        {
          name: 'signed with another key',
          id: 'sig-bad',
          body: ping('sig-bad'),
          signingKey: 'another-key',
          code: 'SIGNATURE_INVALID',
        },
        {
          name: 'garbage signature on garbage body',
          id: 'sig-garbage',
          body: 'not json at all',
          headers: { 'x-signature': 'sha256=deadbeef' },
          code: 'SIGNATURE_INVALID',
        },
      ],
      calls,
    );
    await client.send(ping('sig-good'), { signingKey: key });
    expect((await client.waitTerminal('sig-good')).kind).toBe('succeeded');
    expect(calls).toEqual(['sig-good']);
  });
});
