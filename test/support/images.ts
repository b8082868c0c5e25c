import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';

/**
 * Test oracles and builders that call qemu-img / qemu-io directly (not through the agent's
 * adapters), so a bug in the adapters cannot hide itself.
 */

export const MiB = 1024 * 1024;
export const KiB = 1024;

/** A fresh temp directory (unique per call) and its removal. */
export async function tempDir(prefix: string): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), `${prefix}-`));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** `qemu-img create -f qcow2 [-b backing -F qcow2] path [size]`. */
export async function makeQcow2(
  path: string,
  sizeBytes?: number,
  opts: { backing?: string; clusterSize?: number } = {},
): Promise<string> {
  const args = ['create', '-q', '-f', 'qcow2'];
  if (opts.backing) args.push('-b', opts.backing, '-F', 'qcow2');
  if (opts.clusterSize) args.push('-o', `cluster_size=${opts.clusterSize}`);
  args.push(path);
  if (sizeBytes !== undefined) args.push(String(sizeBytes));
  await execa('qemu-img', args, { timeout: 30_000 });
  return path;
}

/** Writes `pattern` (a byte) over [offset, offset+length) of a QCOW2 image with qemu-io. */
export async function writePattern(
  path: string,
  pattern: number,
  offset: number,
  length: number,
): Promise<void> {
  await execa('qemu-io', ['-f', 'qcow2', '-c', `write -P ${pattern} ${offset} ${length}`, path], {
    timeout: 60_000,
  });
}

/** True when every byte of [offset, offset+length) reads as `pattern` through the whole chain. */
export async function hasPattern(
  path: string,
  pattern: number,
  offset: number,
  length: number,
): Promise<boolean> {
  const result = await execa(
    'qemu-io',
    ['-r', '-U', '-f', 'qcow2', '-c', `read -P ${pattern} ${offset} ${length}`, path],
    { timeout: 60_000, reject: false },
  );
  return result.exitCode === 0 && !/verification failed/i.test(String(result.stdout));
}

/** `qemu-img compare -U`: 0 identical, 1 different (anything else throws). */
export async function sameContent(a: string, b: string): Promise<boolean> {
  const result = await execa('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', a, b], {
    timeout: 120_000,
    reject: false,
  });
  if (result.exitCode === 0) return true;
  if (result.exitCode === 1) return false;
  throw new Error(`qemu-img compare failed (${result.exitCode}): ${String(result.stderr)}`);
}

/** Raw `qemu-img map --output=json` entries. */
export async function mapOf(
  path: string,
): Promise<Array<{ start: number; length: number; depth: number; data: boolean; zero: boolean }>> {
  const { stdout } = await execa('qemu-img', ['map', '-U', '--output=json', '-f', 'qcow2', path], {
    timeout: 30_000,
  });
  return JSON.parse(String(stdout));
}

/** Raw `qemu-img info --output=json` of one image. */
export async function infoOf(path: string): Promise<Record<string, unknown>> {
  const { stdout } = await execa('qemu-img', ['info', '-U', '--output=json', '-f', 'qcow2', path], {
    timeout: 30_000,
  });
  return JSON.parse(String(stdout));
}

/** `qemu-img check` exit code (0 clean, 2 corrupt, 3 leaks). */
export async function checkExitCode(path: string): Promise<number> {
  const result = await execa('qemu-img', ['check', '-U', '-f', 'qcow2', path], {
    timeout: 30_000,
    reject: false,
  });
  return result.exitCode ?? -1;
}
