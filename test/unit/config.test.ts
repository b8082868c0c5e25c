import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/index.js';
import { ConfigError } from '../../src/errors/index.js';
import { generateSigningKeyPair } from '../../src/protocol/index.js';

describe('config', () => {
  it('loads defaults with the hostname as host id', () => {
    const { config } = loadConfig({ env: {} });
    expect(config.hostId).toMatch(/^[A-Za-z0-9]/);
    expect(config.topology.commandsExchange).toBe('clvm.commands');
  });

  it('takes environment overrides, lists split on commas', () => {
    const { config } = loadConfig({
      env: {
        AGENT_HOST_ID: 'hv-07',
        AGENT_BROKER_URLS: 'amqp://a:1,amqp://b:2',
        AGENT_STORE_ROOTS: '/s1,/s2',
      },
    });
    expect(config.hostId).toBe('hv-07');
    expect(config.broker.urls).toEqual(['amqp://a:1', 'amqp://b:2']);
    expect(config.store.roots).toEqual(['/s1', '/s2']);
  });

  it('names the key and the problem on a bad value', () => {
    expect(() => loadConfig({ env: { AGENT_HOST_ID: 'bad.host' } })).toThrowError(ConfigError);
    expect(() => loadConfig({ env: { AGENT_HOST_ID: 'bad.host' } })).toThrowError(/hostId: .*no dots/);
    expect(() => loadConfig({ env: { AGENT_STORE_ROOTS: 'relative/path' } })).toThrowError(/store.roots/);
  });

  it('checks the command signing keys: form, accepted ids, legacy HMAC alone, lifetime within the journal retention', () => {
    const pair = generateSigningKeyPair();
    const { config } = loadConfig({
      env: {
        AGENT_PUBLIC_KEYS: `mp-a=${pair.publicRaw},mp-b=${pair.publicRaw}`,
        AGENT_ACCEPTED_KEY_IDS: 'mp-b',
      },
    });
    expect(Object.keys(config.security.publicKeys)).toEqual(['mp-a', 'mp-b']);
    expect(config.security.acceptedKeyIds).toEqual(['mp-b']);
    expect(config.security.clockSkewMs).toBe(300_000);
    expect(() => loadConfig({ env: { AGENT_PUBLIC_KEYS: 'mp-a=bm90IGEga2V5' } })).toThrowError(
      /security.publicKeys: .*mp-a/,
    );
    expect(() =>
      loadConfig({ env: { AGENT_PUBLIC_KEYS: `mp-a=${pair.publicRaw}`, AGENT_ACCEPTED_KEY_IDS: 'mp-z' } }),
    ).toThrowError(/security.acceptedKeyIds: mp-z/);
    expect(() =>
      loadConfig({ env: { AGENT_PUBLIC_KEYS: `mp-a=${pair.publicRaw}`, AGENT_SIGNING_KEY: 'shared' } }),
    ).toThrowError(/security.signingKey: .*choose one/);
    expect(() =>
      loadConfig({ env: { AGENT_MAX_COMMAND_LIFETIME_MS: String(8 * 24 * 3600_000) } }),
    ).toThrowError(/security.maxCommandLifetimeMs/);
  });

  it('refuses unknown keys in a config file', () => {
    expect(() => loadConfig({ env: {}, overrides: { nonsense: 1 } })).toThrowError(/nonsense/);
  });

  it('never shows secrets in the redacted dump', () => {
    const { redacted } = loadConfig({
      env: { AGENT_SIGNING_KEY: 'top-secret-key', AGENT_BROKER_URLS: 'amqp://user:pw-secret@h:5672' },
    });
    expect(redacted).not.toContain('top-secret-key');
    expect(redacted).not.toContain('pw-secret');
  });
});
