import { describe, expect, it } from 'vitest';
import { buildCommand, newCommandId, parseList, parseVolume } from '../../../src/cli/command-builder.js';
import { EXIT, exitCodeOf } from '../../../src/cli/exit-codes.js';
import { AgentError, ConfigError, ValidationError } from '../../../src/errors/index.js';
import { commandSchema } from '../../../src/protocol/index.js';

describe('parseVolume', () => {
  it('reads lvm:<vg>/<lv> and file:<pool>/<file>', () => {
    expect(parseVolume('lvm:vg0/vol-7')).toEqual({ kind: 'lvm', vg: 'vg0', lv: 'vol-7' });
    expect(parseVolume('file:/var/lib/libvirt/images/a.qcow2')).toEqual({
      kind: 'file',
      pool: '/var/lib/libvirt/images',
      file: 'a.qcow2',
    });
  });

  it('refuses anything else with a USAGE error', () => {
    for (const bad of ['vg0/vol', 'lvm:vg0', 'lvm:vg0/a/b', 'file:relative/a', 'nfs:/x/y']) {
      expect(() => parseVolume(bad), bad).toThrow(/is not lvm:<vg>\/<lv> or file:/);
      try {
        parseVolume(bad);
      } catch (error) {
        expect(exitCodeOf(error)).toBe(EXIT.usage);
      }
    }
  });
});

describe('parseList', () => {
  it('splits commas and merges repeats, dropping blanks', () => {
    expect(parseList(['a,b', ' c ', ',', 'd'])).toEqual(['a', 'b', 'c', 'd']);
    expect(parseList(undefined)).toEqual([]);
  });
});

describe('buildCommand', () => {
  it('returns a schema-valid command with defaults applied', () => {
    const command = buildCommand('snapshot.create', {
      volume: { kind: 'lvm', vg: 'vg0', lv: 'vol-7' },
      vm: null,
      store: { root: '/mnt/snapstore', dir: 'vol-7' },
      snapshot: 'snap-1',
      options: {},
    });
    expect(commandSchema.parse(command)).toEqual(command);
    expect(command.params.options).toEqual({
      strategy: 'auto',
      quiesce: false,
      verify: 'metadata',
      compress: false,
      maxChainLength: 16,
    });
    expect(command.id).toMatch(/^snapctl-[0-9a-f-]{36}$/);
  });

  it('names the flag the operator typed when the schema refuses a value', () => {
    const attempt = () =>
      buildCommand('snapshot.create', {
        volume: { kind: 'lvm', vg: 'vg0', lv: 'snapshot-x' },
        store: { root: 'relative', dir: 'a/../b' },
        snapshot: '.hidden',
      });
    expect(attempt).toThrow(/--volume \(volume\.lv\): invalid LVM name/);
    expect(attempt).toThrow(/--store-root \(store\.root\): invalid path/);
    expect(attempt).toThrow(/--store-dir \(store\.dir\): invalid directory/);
    expect(attempt).toThrow(/--snapshot \(snapshot\): invalid file name/);
  });

  it('refuses a bad --id', () => {
    expect(() => buildCommand('agent.ping', {}, '-bad id')).toThrow(/^--id: invalid command id/);
  });

  it('generated ids are unique and valid', () => {
    const ids = new Set(Array.from({ length: 100 }, () => newCommandId()));
    expect(ids.size).toBe(100);
    for (const id of ids) expect(() => buildCommand('agent.ping', {}, id)).not.toThrow();
  });
});

describe('exitCodeOf', () => {
  it('maps each error to its documented exit code', () => {
    expect(exitCodeOf(new AgentError('JOB_FAILED', 'x'))).toBe(1);
    expect(exitCodeOf(new AgentError('USAGE', 'x'))).toBe(2);
    expect(exitCodeOf(new ValidationError('INVALID_NAME', 'x'))).toBe(2);
    expect(exitCodeOf(new ConfigError('x'))).toBe(2);
    expect(exitCodeOf(new AgentError('JOB_REJECTED', 'x'))).toBe(3);
    expect(exitCodeOf(new AgentError('TIMEOUT', 'x'))).toBe(4);
    expect(exitCodeOf(new AgentError('BROKER_UNREACHABLE', 'x'))).toBe(5);
    expect(exitCodeOf(new AgentError('NOT_ROUTED', 'x'))).toBe(6);
    expect(exitCodeOf(new AgentError('SOMETHING_ELSE', 'x'))).toBe(1);
    expect(exitCodeOf(new Error('plain'))).toBe(1);
  });
});
