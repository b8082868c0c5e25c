import { mkdir, mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ValidationError } from '../../../src/errors/index.js';
import {
  checkAbsolutePath,
  checkFileName,
  confineChild,
  confinePath,
  isInside,
  realpathAllowMissing,
} from '../../../src/host/paths.js';

// Real files in a temp dir: symlink resolution is the point of these helpers.
let base: string;
let root: string;
let outside: string;

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'paths-test-'));
  root = join(base, 'root');
  outside = join(base, 'outside');
  await mkdir(join(root, 'pool', 'sub'), { recursive: true });
  await mkdir(outside);
  await symlink(outside, join(root, 'pool', 'escape'));
  await symlink(join(root, 'pool', 'sub'), join(root, 'pool', 'inside-link'));
  await symlink(join(base, 'nowhere'), join(root, 'pool', 'dangling'));
});
afterAll(async () => {
  await rm(base, { recursive: true, force: true });
});

async function codeOf(promise: Promise<unknown>): Promise<string> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ValidationError);
  return (error as ValidationError).code;
}

describe('checkFileName', () => {
  it('accepts plain names', () => {
    for (const name of ['snap-1', 'vol_2.qcow2', 'a+b', '0']) expect(checkFileName(name)).toBe(name);
  });
  it('refuses names that could be options, paths or shell', () => {
    const bad = [
      '',
      'a b',
      "a'b",
      'a"b',
      'a;b',
      '$(reboot)',
      '`id`',
      'a\nb',
      '-rf',
      '.hidden',
      '..',
      'a/b',
      'x:y',
    ];
    for (const name of bad) expect(() => checkFileName(name), name).toThrow(ValidationError);
    expect(() => checkFileName(42)).toThrow(/must be a string/);
  });
});

describe('checkAbsolutePath', () => {
  it('refuses relative, unnormalised and control-character paths', () => {
    for (const path of ['rel/x', '/a/../b', '/a/./b', '/a//b', '/a/b/', '/a\0b', '/a\nb', '']) {
      expect(() => checkAbsolutePath(path), JSON.stringify(path)).toThrow(ValidationError);
    }
    expect(checkAbsolutePath('/a/b')).toBe('/a/b');
  });
});

describe('isInside', () => {
  it('is lexical and segment-aware', () => {
    expect(isInside('/r/a', '/r')).toBe(true);
    expect(isInside('/r', '/r')).toBe(true);
    expect(isInside('/rx/a', '/r')).toBe(false);
    expect(isInside('/a', '/r')).toBe(false);
    expect(isInside('/r/..a', '/r')).toBe(true);
  });
});

describe('confinePath', () => {
  it('returns the real path of existing and not-yet-existing paths under a root', async () => {
    expect(await confinePath(join(root, 'pool', 'sub'), [root])).toBe(join(root, 'pool', 'sub'));
    expect(await confinePath(join(root, 'pool', 'new', 'file.qcow2'), [root])).toBe(
      join(root, 'pool', 'new', 'file.qcow2'),
    );
    // A symlink that stays inside is resolved.
    expect(await confinePath(join(root, 'pool', 'inside-link', 'f'), [root])).toBe(
      join(root, 'pool', 'sub', 'f'),
    );
    expect(await confinePath(root, [outside, root])).toBe(root);
  });

  it('refuses paths outside the roots, also through symlinks and for missing files', async () => {
    expect(await codeOf(confinePath(join(outside, 'x'), [root]))).toBe('PATH_OUTSIDE_ROOTS');
    expect(await codeOf(confinePath('/etc/passwd', [root]))).toBe('PATH_OUTSIDE_ROOTS');
    expect(await codeOf(confinePath(join(root, 'pool', 'escape'), [root]))).toBe('PATH_OUTSIDE_ROOTS');
    expect(await codeOf(confinePath(join(root, 'pool', 'escape', 'new.qcow2'), [root]))).toBe(
      'PATH_OUTSIDE_ROOTS',
    );
    expect(await codeOf(confinePath(join(root, 'pool', 'dangling'), [root]))).toBe('INVALID_PATH');
    expect(await codeOf(confinePath(`${root}/pool/../../outside`, [root]))).toBe('INVALID_PATH');
    expect(await codeOf(confinePath(`${root}x/a`, [root]))).toBe('PATH_OUTSIDE_ROOTS');
  });

  it('refuses odd segments below the root', async () => {
    for (const seg of ['a b', "it's", 'a;b', '$(id)', '-x', '.part']) {
      expect(await codeOf(confinePath(join(root, seg), [root])), seg).toBe('INVALID_NAME');
    }
  });

  it('confineChild checks the name before joining', async () => {
    expect(await confineChild(join(root, 'pool'), 'v1.qcow2', [root])).toBe(join(root, 'pool', 'v1.qcow2'));
    expect(await codeOf(confineChild(join(root, 'pool'), '../../outside', [root]))).toBe('INVALID_NAME');
    expect(await codeOf(confineChild(join(root, 'pool'), '/etc/passwd', [root]))).toBe('INVALID_NAME');
  });
});

describe('realpathAllowMissing', () => {
  it('resolves the deepest existing ancestor', async () => {
    expect(await realpathAllowMissing(join(root, 'pool', 'inside-link', 'a', 'b'))).toBe(
      join(root, 'pool', 'sub', 'a', 'b'),
    );
  });
});
