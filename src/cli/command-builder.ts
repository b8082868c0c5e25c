import { randomUUID } from 'node:crypto';
import type { z } from 'zod';
import { type Command, type CommandType, commandSchema, type VolumeRef } from '../protocol/index.js';
import { usageError } from './exit-codes.js';

/** The command-line flag that fills each params field, so schema errors name what the operator typed. */
const FLAG_OF_PARAM: Readonly<Record<string, string>> = {
  volume: '--volume',
  vm: '--vm',
  'store.root': '--store-root',
  'store.dir': '--store-dir',
  parents: '--parent',
  snapshot: '--snapshot',
  chain: '--chain',
  mode: '--mode',
  'options.strategy': '--strategy',
  'options.verify': '--verify',
  'options.maxChainLength': '--max-chain',
  'compare.snapshot': '--compare-snapshot',
  'compare.image': '--compare-image',
  jobId: '<job-id>',
};

/** A fresh command id: `snapctl-<uuid>` (valid under the protocol's id rule). */
export function newCommandId(): string {
  return `snapctl-${randomUUID()}`;
}

/**
 * Reads a volume argument: `lvm:<vg>/<lv>` or `file:<pool dir>/<file>` (the last path segment is
 * the file). Only the shape is checked here; the names are checked by the command schema.
 */
export function parseVolume(text: string): VolumeRef {
  const lvm = /^lvm:([^/]+)\/([^/]+)$/.exec(text);
  if (lvm) return { kind: 'lvm', vg: lvm[1]!, lv: lvm[2]! };
  const file = /^file:(\/.*)\/([^/]+)$/.exec(text);
  if (file) return { kind: 'file', pool: file[1]!, file: file[2]! };
  throw usageError(`--volume "${text}" is not lvm:<vg>/<lv> or file:<absolute pool dir>/<file>`, {
    field: '--volume',
  });
}

/** A comma-separated list (or several uses of the flag) as an array; empty items dropped. */
export function parseList(values: readonly string[] | string | undefined): string[] {
  const all = typeof values === 'string' ? [values] : (values ?? []);
  return all
    .flatMap((v) => v.split(','))
    .map((v) => v.trim())
    .filter((v) => v.length > 0);
}

/**
 * Builds a command and validates it with the protocol's zod schema (defaults applied), so
 * nothing the agent would refuse for its shape ever leaves snapctl. Throws a USAGE error that
 * names the flag.
 */
export function buildCommand<T extends CommandType>(
  type: T,
  params: Record<string, unknown>,
  id: string = newCommandId(),
): Extract<Command, { type: T }> {
  const parsed = commandSchema.safeParse({ id, type, params, createdAt: new Date().toISOString() });
  if (!parsed.success) throw usageError(describeIssues(parsed.error.issues), { issues: parsed.error.issues });
  return parsed.data as Extract<Command, { type: T }>;
}

function describeIssues(issues: readonly z.core.$ZodIssue[]): string {
  return issues
    .map((issue) => {
      const path = issue.path.map(String);
      if (path[0] === 'id') return `--id: ${issue.message}`;
      const paramPath = path.slice(1).join('.');
      const flag =
        FLAG_OF_PARAM[paramPath] ??
        FLAG_OF_PARAM[path.slice(1, 3).join('.')] ??
        FLAG_OF_PARAM[path[1] ?? ''] ??
        paramPath;
      const where = paramPath && flag !== paramPath ? `${flag} (${paramPath})` : flag || 'command';
      return `${where}: ${issue.message}`;
    })
    .join('; ');
}
