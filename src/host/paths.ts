import { lstat, realpath, stat } from 'node:fs/promises';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import { PathEscapeError, ValidationError } from '../errors/index.js';
import { fileName } from '../protocol/names.js';
import { FS_CALL_TIMEOUT_MS, withDeadline } from './deadline.js';

/**
 * Root confinement (invariant 6): every path a command names must lie under a configured root,
 * also after symlinks are resolved, and also when the path does not exist yet (then its deepest
 * existing ancestor is resolved). All checks happen before any host tool runs.
 *
 * Error codes (ValidationError): INVALID_PATH (not absolute, not normalised, control characters),
 * INVALID_NAME (a segment below the root that is not a plain file name), PATH_OUTSIDE_ROOTS.
 */

/** Segments below a root: the protocol's file-name rule (no spaces, quotes, `;`, `$`, leading `.` or `-`). */
function nameProblem(name: string): string | undefined {
  const parsed = fileName.safeParse(name);
  return parsed.success ? undefined : (parsed.error.issues[0]?.message ?? 'invalid file name');
}

/**
 * Checks one file name (a single path segment) and returns it.
 * @throws ValidationError INVALID_NAME
 */
export function checkFileName(name: unknown, field = 'name'): string {
  if (typeof name !== 'string')
    throw new ValidationError('INVALID_NAME', `${field} must be a string`, { field });
  const problem = nameProblem(name);
  if (problem)
    throw new ValidationError('INVALID_NAME', `${field} ${JSON.stringify(name)}: ${problem}`, { field });
  return name;
}

/**
 * Checks that `path` is absolute and normalised: no `.`/`..`/empty segments, no control characters.
 * @throws ValidationError INVALID_PATH
 */
export function checkAbsolutePath(path: unknown, field = 'path'): string {
  if (typeof path !== 'string' || path.length === 0 || path.length > 4096) {
    throw new ValidationError(
      'INVALID_PATH',
      `${field} must be a non-empty string of at most 4096 characters`,
      {
        field,
      },
    );
  }
  // biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point
  if (/[\u0000-\u001f\u007f]/.test(path)) {
    throw new ValidationError('INVALID_PATH', `${field} contains control characters`, { field });
  }
  if (!path.startsWith('/')) {
    throw new ValidationError('INVALID_PATH', `${field} ${JSON.stringify(path)} is not absolute`, { field });
  }
  const segments = path === '/' ? [] : path.slice(1).split('/');
  if (segments.some((s) => s === '' || s === '.' || s === '..')) {
    throw new ValidationError(
      'INVALID_PATH',
      `${field} ${JSON.stringify(path)} is not normalised (no "..", "." or "//")`,
      { field },
    );
  }
  return path;
}

/** True when `child` is `root` itself or lies below it (both absolute and normalised). Pure, no I/O. */
export function isInside(child: string, root: string): boolean {
  const rel = relative(root, child);
  return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !rel.startsWith(sep));
}

/** The root (as configured) that `path` lies under lexically, or undefined. */
export function rootOf(path: string, roots: readonly string[]): string | undefined {
  return roots.map((r) => resolve(r)).find((root) => isInside(path, root));
}

/**
 * Resolves symlinks in `path`. When the path does not exist, the deepest existing ancestor is
 * resolved and the missing tail appended. A dangling symlink is refused (its target is unknown).
 */
export async function realpathAllowMissing(path: string): Promise<string> {
  const missing: string[] = [];
  let current = path;
  for (;;) {
    try {
      const real = await realpath(current);
      return missing.length === 0 ? real : join(real, ...missing.reverse());
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      const link = await lstat(current).catch(() => undefined);
      if (link?.isSymbolicLink()) {
        throw new ValidationError('INVALID_PATH', `${current} is a symlink whose target does not exist`, {
          field: 'path',
          cause: error,
        });
      }
      const parent = dirname(current);
      if (parent === current) throw error;
      missing.push(basename(current));
      current = parent;
    }
  }
}

/**
 * Confines `path` to `roots`: checks its form, that it lies under a root lexically with plain
 * file-name segments below the root, and that its real path (symlinks resolved) is still under
 * the real path of a root. Returns the real path; use it, not the input, for the tool call.
 *
 * @param roots configured roots (absolute). A root that does not exist confines nothing.
 * @throws ValidationError INVALID_PATH | INVALID_NAME | PATH_OUTSIDE_ROOTS
 */
export async function confinePath(path: unknown, roots: readonly string[], field = 'path'): Promise<string> {
  const checked = checkAbsolutePath(path, field);
  const root = rootOf(checked, roots);
  if (root === undefined) {
    throw new ValidationError(
      'PATH_OUTSIDE_ROOTS',
      `${field} ${JSON.stringify(checked)} is not under a configured root (${roots.join(', ')})`,
      { field },
    );
  }
  const below = relative(root, checked);
  for (const segment of below === '' ? [] : below.split(sep)) {
    const problem = nameProblem(segment);
    if (problem) {
      throw new ValidationError('INVALID_NAME', `${field}: segment ${JSON.stringify(segment)}: ${problem}`, {
        field,
      });
    }
  }
  const real = await realpathAllowMissing(checked);
  const realRoots = await Promise.all(roots.map((r) => realpathAllowMissing(resolve(r))));
  if (!realRoots.some((r) => isInside(real, r))) {
    throw new ValidationError(
      'PATH_OUTSIDE_ROOTS',
      `${field} ${JSON.stringify(checked)} resolves to ${real}, outside the configured roots (a symlink points out)`,
      { field },
    );
  }
  return real;
}

/**
 * Joins a checked file name to a directory and confines the result (a name cannot carry `/` or `..`).
 * @throws ValidationError INVALID_NAME | INVALID_PATH | PATH_OUTSIDE_ROOTS
 */
export async function confineChild(
  directory: string,
  name: unknown,
  roots: readonly string[],
  field = 'name',
): Promise<string> {
  return confinePath(join(directory, checkFileName(name, field)), roots, field);
}

/**
 * True when `path` exists; false only for ENOENT (any other error is thrown). Bounded: the path
 * may lie on an NFS store whose server is gone (HOST_TIMEOUT past the deadline).
 */
export async function pathExists(path: string): Promise<boolean> {
  const found = stat(path).then(
    () => true,
    (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return false;
      throw e;
    },
  );
  return withDeadline(found, { operation: 'stat', path, timeoutMs: FS_CALL_TIMEOUT_MS });
}

/** The shape of src/host/exec.ts runTool (adapters take one to run their tool). */
type ToolRunner<O, R> = (file: string, args: readonly string[], options: O) => Promise<R>;

/**
 * The paths in a tool's argument list: every absolute argument, and a relative `-b`/`-B` backing
 * file resolved against the directory of the image (the last absolute argument), as the tool will.
 */
export function toolPaths(args: readonly string[]): string[] {
  const absolute = args.filter((a) => a.startsWith('/'));
  const image = absolute[absolute.length - 1];
  const paths = [...absolute];
  args.forEach((arg, i) => {
    const value = args[i + 1];
    if ((arg === '-b' || arg === '-B') && value && !value.startsWith('/') && value !== '' && image) {
      paths.push(join(dirname(image), value));
    }
  });
  return paths;
}

/**
 * Re-resolves every path under a root right before a tool uses it: the command's paths were
 * confined at intake, but a directory may have been swapped for a symlink since (while the job
 * waited or ran). Paths outside every root (LVM device nodes) are not the roots' business.
 * What is left is the short gap between this check and the tool's own open(): bounded, not zero.
 * @throws PathEscapeError (PATH_ESCAPES_ROOTS)
 */
export async function recheckToolPaths(args: readonly string[], roots: readonly string[]): Promise<void> {
  const realRoots = await Promise.all(roots.map((r) => realpathAllowMissing(resolve(r))));
  for (const path of toolPaths(args)) {
    if (rootOf(path, roots) === undefined) continue;
    let real: string;
    try {
      real = await realpathAllowMissing(path);
    } catch (error) {
      if (error instanceof ValidationError) throw new PathEscapeError(path, null, { cause: error });
      throw error;
    }
    if (!realRoots.some((r) => isInside(real, r))) throw new PathEscapeError(path, real);
  }
}

/** Wraps a tool runner so that every call re-resolves its path arguments first (recheckToolPaths). */
export function confinedRunner<O, R>(run: ToolRunner<O, R>, roots: readonly string[]): ToolRunner<O, R> {
  return async (file, args, options) => {
    await recheckToolPaths(args, roots);
    return run(file, args, options);
  };
}
