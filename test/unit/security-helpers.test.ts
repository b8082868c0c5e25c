import { describe, expect, it } from 'vitest';
import { hostRights, managementRights, vhostOf } from '../../src/cli/broker-provision.js';
import { loadConfig } from '../../src/config/index.js';
import { toolPaths } from '../../src/host/paths.js';
import { readEnvelope } from '../../src/protocol/index.js';

const topology = loadConfig({ env: {} }).config.topology;

describe('broker rights', () => {
  it('a host user gets literal names (dots escaped), no configure right, events only under its id', () => {
    const r = hostRights(topology, '/', 'kvm-01', 'clvm-agent-kvm-01');
    expect(r.permissions).toEqual({
      configure: '^$',
      write: '^(clvm\\.events|amq\\.default)$',
      read: '^clvm\\.agent\\.kvm-01$',
    });
    expect(r.topic).toEqual({ exchange: 'clvm.events', write: '^kvm-01\\.', read: '^$' });
    // The topic pattern does not match a longer host id with the same prefix.
    expect(new RegExp(r.topic!.write).test('kvm-011.agent.started')).toBe(false);
    expect(new RegExp(r.permissions.read).test('clvm.agent.kvm-01x')).toBe(false);
  });

  it('the management user can read the dead letters and publish commands, but not publish events', () => {
    const r = managementRights(topology, '/', 'clvm-management');
    expect(new RegExp(r.permissions.write).test('clvm.commands')).toBe(true);
    expect(new RegExp(r.permissions.write).test('clvm.events')).toBe(false);
    expect(new RegExp(r.permissions.read).test('clvm.commands.dead')).toBe(true);
  });

  it('takes the vhost from the URL', () => {
    expect(vhostOf('amqp://u:p@h:5672')).toBe('/');
    expect(vhostOf('amqps://u:p@h/')).toBe('/');
    expect(vhostOf('amqp://u:p@h/%2Fprod')).toBe('/prod');
  });
});

describe('toolPaths', () => {
  it('finds absolute arguments and relative backing files next to the image', () => {
    expect(
      toolPaths(['create', '-q', '-f', 'qcow2', '-b', 'snap-1.qcow2', '-F', 'qcow2', '/pool/p1/top.qcow2']),
    ).toEqual(['/pool/p1/top.qcow2', '/pool/p1/snap-1.qcow2']);
    expect(toolPaths(['rebase', '-u', '-b', '', '/pool/a.qcow2'])).toEqual(['/pool/a.qcow2']);
    expect(toolPaths(['convert', '-B', '/store/s1', '/pool/a', '/store/.s2.part'])).toEqual([
      '/store/s1',
      '/pool/a',
      '/store/.s2.part',
    ]);
  });
});

describe('readEnvelope', () => {
  it('says which header is missing or malformed; line breaks can never enter the signed bytes', () => {
    const ok = {
      'x-clvm-signature': `${'A'.repeat(86)}==`,
      'x-clvm-key-id': 'k1',
      'x-clvm-host-id': 'h1',
      'x-clvm-issued-at': '2026-11-30T05:00:00.000Z',
      'x-clvm-expires-at': '2026-11-30T05:15:00Z',
    };
    expect(readEnvelope(ok).ok).toBe(true);
    expect(readEnvelope({ ...ok, 'x-clvm-key-id': Buffer.from('k1') }).ok).toBe(true);
    expect(readEnvelope({})).toMatchObject({ ok: false, missing: true, header: 'x-clvm-signature' });
    expect(readEnvelope({ ...ok, 'x-clvm-host-id': 'h1\nkey-id:k2' })).toMatchObject({
      ok: false,
      missing: false,
      header: 'x-clvm-host-id',
    });
    expect(readEnvelope({ ...ok, 'x-clvm-expires-at': undefined })).toMatchObject({
      header: 'x-clvm-expires-at',
    });
    expect(readEnvelope({ ...ok, 'x-clvm-signature': 'c2hvcnQ=' })).toMatchObject({
      header: 'x-clvm-signature',
    });
  });
});
