import type { VolumeRef } from './commands.js';
import type { EventKind } from './events.js';

/**
 * Event routing keys: `<hostId>.<volumeKey>.<kind>` on the events topic exchange.
 * A dashboard binds `hv01.#` (one host), `*.lvm~vg0~vol-7.*` (one volume) or `*.*.failed` (one kind).
 * Inside a word, "." and other special characters are percent-encoded so a name never adds a word.
 */
export function routingWord(value: string): string {
  return encodeURIComponent(value)
    .replace(/\./g, '%2E')
    .replace(/[*#]/g, (c) => `%${c.charCodeAt(0).toString(16)}`);
}

/** Stable key of a volume: `lvm~<vg>~<lv>` or `file~<pool path>~<file>`, encoded as one routing word. */
export function volumeKey(volume: VolumeRef | null | undefined): string {
  if (!volume) return 'agent';
  const raw = volume.kind === 'lvm' ? `lvm~${volume.vg}~${volume.lv}` : `file~${volume.pool}~${volume.file}`;
  return routingWord(raw);
}

export function eventRoutingKey(
  hostId: string,
  volume: VolumeRef | null | undefined,
  kind: EventKind,
): string {
  return `${routingWord(hostId)}.${volumeKey(volume)}.${kind}`;
}

/** Binding pattern for an events subscriber; omitted filters match anything. */
export function eventBindingPattern(
  filter: { hostId?: string; volume?: VolumeRef; kind?: EventKind } = {},
): string {
  const host = filter.hostId ? routingWord(filter.hostId) : '*';
  const vol = filter.volume ? volumeKey(filter.volume) : '*';
  return `${host}.${vol}.${filter.kind ?? '*'}`;
}
