import { z } from 'zod';

/**
 * Name rules, checked before any host tool sees a name (invariant 6).
 * LVM: lvm(8) "VALID NAMES" — letters, digits and + _ . -, not starting with "-",
 * not "." or "..", no reserved prefixes or suffix words, at most 127 characters.
 */
const LVM_RESERVED_PREFIXES = ['snapshot', 'pvmove'];
const LVM_RESERVED_WORDS = [
  '_cdata',
  '_cmeta',
  '_corig',
  '_iorig',
  '_mimage',
  '_mlog',
  '_pmspare',
  '_rimage',
  '_rmeta',
  '_tdata',
  '_tmeta',
  '_vdata',
  '_vorigin',
];

export function lvmNameProblem(name: string): string | undefined {
  if (name.length === 0 || name.length > 127) return 'must be 1 to 127 characters';
  if (!/^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$/.test(name)) {
    return 'may hold only letters, digits and "+_.-" and must not start with "-"';
  }
  if (name === '.' || name === '..') return 'must not be "." or ".."';
  if (LVM_RESERVED_PREFIXES.some((p) => name.startsWith(p)))
    return `must not start with ${LVM_RESERVED_PREFIXES.join(' or ')}`;
  const word = LVM_RESERVED_WORDS.find((w) => name.includes(w));
  if (word) return `must not contain the reserved word ${word}`;
  return undefined;
}

export const lvmName = z.string().superRefine((v, ctx) => {
  const problem = lvmNameProblem(v);
  if (problem) ctx.addIssue({ code: 'custom', message: `invalid LVM name: ${problem}` });
});

/** libvirt domain names as CloudStack makes them (i-2-34-VM, r-5-VM, uuids). */
export const vmName = z
  .string()
  .regex(
    /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/,
    'invalid VM name: letters, digits and "_.-" only, at most 128 characters',
  );

/** One path segment (a file name): no separators, no leading dot or dash, no control characters. */
export const fileName = z
  .string()
  .regex(
    /^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}$/,
    'invalid file name: letters, digits and "_.+-" only, not starting with "." or "-"',
  );

/** A relative directory below a root: file-name segments joined by "/". */
export const relativeDir = z
  .string()
  .min(1)
  .max(1024)
  .refine(
    (v) => v.split('/').every((seg) => /^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}$/.test(seg)),
    'invalid directory: relative, segments of letters, digits and "_.+-", no "..", no leading "/"',
  );

/** An absolute, normalised path with no "..", "." or empty segments. */
export const absolutePath = z
  .string()
  .max(4096)
  .refine(
    (v) =>
      v.startsWith('/') &&
      v
        .slice(1)
        .split('/')
        .every((seg) => seg.length > 0 && seg !== '.' && seg !== '..' && !/[\0\n\r]/.test(seg)),
    'invalid path: must be absolute and normalised (no "..", ".", "//", or control characters)',
  );
