// chain.verify: qemu-img check of every member, every backing pointer resolving inside the store
// roots (relative between store files), the active volume's backing, and an optional full compare.
import { ChainInvalidError, HostCommandError } from '../errors/index.js';
import { isInside } from '../host/paths.js';
import type { JobContext } from '../jobs/types.js';
import { pathExists } from './chain.js';
import type { SnapshotDeps } from './deps.js';
import { volumeBackend } from './volumes.js';

type VerifyContext = JobContext<'chain.verify'>;

export interface MemberReport {
  name: string;
  path: string;
  backing: string | null;
  corruptions: number;
  leaks: number;
}

/**
 * Read-only. Succeeds with a report when every check passes; fails with CHAIN_INVALID (details:
 * problems, members) otherwise. Nothing is changed, so a failure is always "rolled back".
 */
export async function verifyChain(ctx: VerifyContext, deps: SnapshotDeps): Promise<Record<string, unknown>> {
  const params = ctx.command.params;
  const problems: string[] = [];
  const members: MemberReport[] = [];
  const paths = await Promise.all(params.chain.map((name) => deps.store.memberPath(params.store, name)));
  const inStore = (path: string): boolean => deps.store.roots.some((root) => isInside(path, root));
  const stepCount = paths.length + (params.volume ? 1 : 0) + (params.compare ? 1 : 0);

  for (const [i, path] of paths.entries()) {
    const name = params.chain[i]!;
    ctx.progress({ step: `check ${name}`, stepIndex: i, stepCount });
    if (!(await pathExists(path))) {
      problems.push(`${name}: file ${path} is missing`);
      continue;
    }
    const info = await deps.qemuImg.info(path, { forceShare: true });
    const check = await deps.qemuImg
      .check(path, { forceShare: true, signal: ctx.signal })
      .catch((error: unknown) => {
        // qemu-img could not finish the check (exit 1): that is a finding about this member.
        if (!(error instanceof HostCommandError) || error.kind === 'aborted') throw error;
        problems.push(`${name}: qemu-img check could not complete: ${error.stderr.trim() || error.message}`);
        return null;
      });
    if (check === null) continue;
    members.push({
      name,
      path,
      backing: info.backingFile,
      corruptions: check.corruptions,
      leaks: check.leaks,
    });
    if (!check.ok) {
      problems.push(
        `${name}: qemu-img check found ${check.corruptions} corruptions, ${check.leaks} leaks, ${check.checkErrors} errors`,
      );
    }
    const expected = i > 0 ? paths[i - 1]! : null;
    if (info.backingFile === null) {
      if (expected !== null) problems.push(`${name}: has no backing file, expected ${params.chain[i - 1]}`);
      continue;
    }
    if (expected !== null && info.backingFile.startsWith('/')) {
      problems.push(
        `${name}: backing named by absolute path ${info.backingFile} (breaks when the store moves)`,
      );
    }
    const resolved = info.fullBackingFile ?? info.backingFile;
    if (expected !== null && resolved !== expected) {
      problems.push(`${name}: backs onto ${resolved}, expected ${expected}`);
    } else if (expected === null && !inStore(resolved)) {
      problems.push(`${name}: backs onto ${resolved}, outside the store roots`);
    } else if (!(await pathExists(resolved))) {
      problems.push(`${name}: backing file ${resolved} is missing`);
    }
  }

  let active: { path: string; backing: string | null } | undefined;
  if (params.volume) {
    const backend = await volumeBackend(params.volume, deps);
    ctx.progress({ step: 'check active', stepIndex: paths.length, stepCount });
    const info = await deps.qemuImg.info(backend.activePath, { forceShare: true });
    const resolved = info.fullBackingFile;
    active = { path: backend.activePath, backing: resolved };
    if (resolved !== null && inStore(resolved) && !paths.includes(resolved)) {
      problems.push(`active volume backs onto ${resolved}, which is not in the given chain`);
    } else if (resolved !== null && !(await pathExists(resolved))) {
      problems.push(`active volume's backing ${resolved} is missing`);
    }
  }

  let compare: { snapshot: string; image: string; identical: boolean; message: string } | undefined;
  if (params.compare && problems.length === 0) {
    ctx.progress({ step: 'compare', stepIndex: stepCount - 1, stepCount });
    const snapshot = await deps.store.memberPath(params.store, params.compare.snapshot);
    const image = inStore(params.compare.image)
      ? await deps.store.confine(params.compare.image, 'compare.image')
      : await deps.filePool.confine(params.compare.image, 'compare.image');
    const format = (await deps.qemuImg.info(image, { forceShare: true })).format === 'raw' ? 'raw' : 'qcow2';
    const result = await deps.qemuImg.compare(snapshot, image, {
      forceShare: true,
      formatB: format,
      signal: ctx.signal,
    });
    compare = {
      snapshot: params.compare.snapshot,
      image,
      identical: result.identical,
      message: result.message,
    };
    if (!result.identical)
      problems.push(`${params.compare.snapshot} differs from ${image}: ${result.message}`);
  }

  if (problems.length > 0) {
    const error = new ChainInvalidError('chain verification failed', problems, { members, active, compare });
    error.details.rolledBack = true;
    throw error;
  }
  return { ok: true, members, ...(active ? { active } : {}), ...(compare ? { compare } : {}) };
}
