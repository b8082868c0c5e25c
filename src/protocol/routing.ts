import { createHash } from 'node:crypto';
import type { VolumeRef } from './commands.js';
import type { EventKind } from './events.js';
import { baseNameOf } from './names.js';

/**
 * Event routing keys: `<hostWord>.<volumeWord>.<kind>` on the events topic exchange.
 * A dashboard binds `hv01.#` (one host), `*.lvm~vg0~vol-7.*` (one volume) or `*.*.failed` (one kind).
 *
 * Encoding of one word (the whole rule; docs/asyncapi.yaml states it too):
 * 1. the value's UTF-16 is made well-formed (a lone surrogate becomes U+FFFD) and taken as UTF-8;
 * 2. every byte outside `A-Z a-z 0-9 _ -` is written `%XX` (upper-case hex), so "." "*" "#" "~"
 *    never appear raw and a name never adds a word or a wildcard;
 * 3. a word longer than ROUTING_WORD_MAX characters becomes its first ROUTING_WORD_PREFIX characters
 *    (never cutting a `%XX`) + `~h` + the first 16 hex digits of SHA-256 of the whole encoded word.
 * So a key is at most 2 × 82 + 1 + 1 + 11 characters: far below AMQP's 255-byte limit, whatever the
 * names. The full names stay in the event body (`subject`, `data`).
 */
export const ROUTING_WORD_MAX = 82;
export const ROUTING_WORD_PREFIX = 64;

/** Step 1 and 2: percent-encoding of a value; total (never throws, whatever the string). */
export function encodeWord(value: string): string {
  // Buffer's UTF-8 encoder writes a lone surrogate as U+FFFD: never throws.
  const bytes = Buffer.from(value, 'utf8');
  let out = '';
  for (const byte of bytes) {
    const isPlain =
      (byte >= 0x30 && byte <= 0x39) ||
      (byte >= 0x41 && byte <= 0x5a) ||
      (byte >= 0x61 && byte <= 0x7a) ||
      byte === 0x5f ||
      byte === 0x2d;
    out += isPlain ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** Step 3: bounds an encoded word (words within the limit are returned unchanged). */
export function boundWord(encoded: string): string {
  if (encoded.length <= ROUTING_WORD_MAX) return encoded;
  let cut = ROUTING_WORD_PREFIX;
  const percent = encoded.lastIndexOf('%', cut - 1);
  if (percent >= 0 && percent > cut - 3) cut = percent;
  const hash = createHash('sha256').update(encoded).digest('hex').slice(0, 16);
  return `${encoded.slice(0, cut)}~h${hash}`;
}

/** One routing-key word for any value: encoded and bounded. */
export function routingWord(value: string): string {
  return boundWord(encodeWord(value));
}

/**
 * Full key of a volume: `lvm~<vg>~<lv>` or `file~<pool path>~<file>`, each part encoded (so "~"
 * inside a name is `%7E`). The event `subject`; not bounded. `agent` when there is no volume.
 */
export function volumeKey(volume: VolumeRef | null | undefined): string {
  if (!volume) return 'agent';
  const parts = volume.kind === 'lvm' ? ['lvm', volume.vg, volume.lv] : ['file', volume.pool, volume.file];
  return parts.map((p) => encodeWord(String(p))).join('~');
}

/**
 * One key for every name of a volume (its base name and live rotation's layer names, which a
 * command may use while the management plane catches up with `volumePath`): the job lock, so two
 * jobs on the same volume never run at once whatever name each was given.
 */
export function volumeFamilyKey(volume: VolumeRef): string {
  return volumeKey(
    volume.kind === 'lvm'
      ? { ...volume, lv: baseNameOf(volume.lv) }
      : { ...volume, file: baseNameOf(volume.file) },
  );
}

/** The volume's routing word: volumeKey bounded. */
export function volumeWord(volume: VolumeRef | null | undefined): string {
  return boundWord(volumeKey(volume));
}

export function eventRoutingKey(
  hostId: string,
  volume: VolumeRef | null | undefined,
  kind: EventKind,
): string {
  return `${routingWord(hostId)}.${volumeWord(volume)}.${kind}`;
}

/** Binding pattern for an events subscriber; omitted filters match anything. */
export function eventBindingPattern(
  filter: { hostId?: string; volume?: VolumeRef; kind?: EventKind } = {},
): string {
  const host = filter.hostId ? routingWord(filter.hostId) : '*';
  const vol = filter.volume ? volumeWord(filter.volume) : '*';
  return `${host}.${vol}.${filter.kind ?? '*'}`;
}
