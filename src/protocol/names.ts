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

/**
 * The same rule as lvmNameProblem, as one ECMAScript regular expression, so the JSON Schema in
 * docs/asyncapi.yaml states it exactly (lookaheads for "." / "..", reserved prefixes and words).
 */
export const LVM_NAME_PATTERN = new RegExp(
  `^(?!\\.{1,2}$)(?!${LVM_RESERVED_PREFIXES.join('|')})(?!.*(?:${LVM_RESERVED_WORDS.join('|')}))[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$`,
);

export const lvmName = z
  .string()
  .min(1, 'invalid LVM name: must be 1 to 127 characters')
  .max(127, 'invalid LVM name: must be 1 to 127 characters')
  .regex(
    LVM_NAME_PATTERN,
    `invalid LVM name: letters, digits and "+_.-", not starting with "-", not "." or "..", not starting with ${LVM_RESERVED_PREFIXES.join(' or ')}, without the reserved words ${LVM_RESERVED_WORDS.join(' ')}`,
  )
  .describe('LVM VG or LV name (lvm(8) VALID NAMES)');

/** libvirt domain names as CloudStack makes them (i-2-34-VM, r-5-VM, uuids). */
export const vmName = z
  .string()
  .regex(
    /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/,
    'invalid VM name: letters, digits and "_.-" only, at most 128 characters',
  );

/** One path segment (a file name): no separators, no leading dot or dash, no control characters. */
export const FILE_NAME_SOURCE = '[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}';
export const fileName = z
  .string()
  .regex(
    new RegExp(`^${FILE_NAME_SOURCE}$`),
    'invalid file name: letters, digits and "_.+-" only, not starting with "." or "-"',
  );

/** A relative directory below a root: file-name segments joined by "/" (so no "..", "." or "//"). */
export const relativeDir = z
  .string()
  .min(1, 'invalid directory: empty')
  .max(1024, 'invalid directory: longer than 1024 characters')
  .regex(
    new RegExp(`^${FILE_NAME_SOURCE}(?:/${FILE_NAME_SOURCE})*$`),
    'invalid directory: relative, segments of letters, digits and "_.+-" (not starting with "." or "-"), no leading or trailing "/"',
  );

/**
 * An absolute, normalised path whose every segment is a file name (the rule the agent applies to
 * the segments below a root applies to the root's own too): no "..", ".", "//", trailing "/",
 * spaces or control characters. Configured roots follow the same rule (config check).
 */
export const absolutePath = z
  .string()
  .max(4096, 'invalid path: longer than 4096 characters')
  .regex(
    new RegExp(`^(?:/${FILE_NAME_SOURCE})+$`),
    'invalid path: must be absolute and normalised, segments of letters, digits and "_.+-" not starting with "." or "-"',
  );

/** Names live rotation gives a volume's active layer: `<base>.lr-a` ... (docs/strategies.md "live-rotate"). */
const LAYER_SUFFIXES = ['a', 'b', 'c', 'd'].map((s) => `.lr-${s}`);
const LAYER_NAME = /\.lr-[a-d]$/;

/** The volume's base name (the file or LV the volume was created as) for any of its layer names. */
export function baseNameOf(name: string): string {
  return name.replace(LAYER_NAME, '');
}

/** The volume's names in a pool: its base name first, then every layer name. */
export function familyNames(name: string): string[] {
  const base = baseNameOf(name);
  return [base, ...LAYER_SUFFIXES.map((s) => `${base}${s}`)];
}

export function isLayerName(name: string): boolean {
  return LAYER_NAME.test(name);
}
