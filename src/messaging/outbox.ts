import { mkdir, open, readdir, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { OutboxError } from '../errors/index.js';
import type { OutgoingEvent } from '../jobs/ports.js';
import type { Logger } from '../observability/logger.js';

/** One event waiting in the outbox. */
export interface OutboxEntry {
  /** Position in the outbox; entries are published in this order. */
  seq: number;
  event: OutgoingEvent;
}

const ENTRY = /^(\d{16})\.json$/;
const TEMP_SUFFIX = '.tmp';
const QUARANTINE_DIR = 'quarantine';

/**
 * The on-disk outbox of persistent events: one file per entry (`<16-digit seq>.json`) in one
 * directory. An append writes a temp file, fsyncs it, renames it to its final name and fsyncs the
 * directory, so after a crash an entry is either whole or absent (a leftover temp file is
 * deleted on open). Entries are read back in sequence order and removed once the broker confirmed
 * them. One file per entry keeps removal a single unlink, with no log to compact; the outbox is
 * short (events wait here only while the broker is away).
 *
 * Appends are serialised so the order on disk is the order of the calls.
 */
export class Outbox {
  private readonly entriesInOrder: OutboxEntry[] = [];
  private nextSeq: number;
  private appendChain: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly dir: string,
    loaded: OutboxEntry[],
  ) {
    this.entriesInOrder = loaded;
    this.nextSeq = (loaded.at(-1)?.seq ?? 0) + 1;
  }

  /**
   * Opens (creating it if needed) the outbox in `dir` and loads what it holds. An entry that
   * cannot be parsed is renamed to `*.corrupt`, logged as an error and skipped (it cannot be sent).
   */
  static async open(dir: string, logger: Logger): Promise<Outbox> {
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      const names = await readdir(dir);
      const loaded: OutboxEntry[] = [];
      for (const name of names.sort()) {
        const path = join(dir, name);
        if (name.endsWith(TEMP_SUFFIX)) {
          // An append that crashed before its rename: the caller never saw it succeed.
          await unlink(path);
          continue;
        }
        const match = ENTRY.exec(name);
        if (!match) continue;
        const event = await readEntry(path, logger);
        if (event) loaded.push({ seq: Number(match[1]), event });
      }
      return new Outbox(dir, loaded);
    } catch (error) {
      throw new OutboxError(`cannot open the event outbox in ${dir}`, { cause: error, path: dir });
    }
  }

  /** Entries waiting to be confirmed. */
  get depth(): number {
    return this.entriesInOrder.length;
  }

  /** The oldest entry, the next to publish. */
  head(): OutboxEntry | undefined {
    return this.entriesInOrder[0];
  }

  /** A snapshot of every waiting entry, oldest first. */
  entries(): readonly OutboxEntry[] {
    return [...this.entriesInOrder];
  }

  /** Writes `event` durably (fsynced file and directory) and returns its entry. */
  append(event: OutgoingEvent): Promise<OutboxEntry> {
    const result = this.appendChain.then(() => this.write(event));
    // The chain continues after a failed append; the failure goes to this caller.
    this.appendChain = result.catch(() => undefined);
    return result;
  }

  /** Deletes a confirmed entry. */
  async remove(entry: OutboxEntry): Promise<void> {
    const index = this.entriesInOrder.indexOf(entry);
    if (index >= 0) this.entriesInOrder.splice(index, 1);
    try {
      await unlink(this.pathOf(entry.seq));
    } catch (error) {
      throw new OutboxError(`cannot remove outbox entry ${entry.seq}`, {
        cause: error,
        path: this.pathOf(entry.seq),
      });
    }
    // No directory fsync: if the unlink is lost in a crash the event is sent again (at least once).
  }

  /** Where entries the broker can never accept are kept (`quarantine/<seq>.json` + `<seq>.reason.json`). */
  get quarantineDir(): string {
    return join(this.dir, QUARANTINE_DIR);
  }

  /**
   * Moves `entry` aside for good: its event goes to the quarantine folder with `reason`, and in
   * the outbox it is replaced in place (same position) by `replacement`, or removed when that is
   * null. Crash-safe in that order: a crash in between leaves the original in the outbox, which is
   * then quarantined again (same file names) at the next attempt.
   */
  async quarantine(entry: OutboxEntry, reason: string, replacement: OutgoingEvent | null): Promise<void> {
    const name = String(entry.seq).padStart(16, '0');
    try {
      await mkdir(this.quarantineDir, { recursive: true, mode: 0o700 });
      await writeDurably(
        join(this.quarantineDir, `${name}.reason.json`),
        JSON.stringify({
          seq: entry.seq,
          eventId: entry.event.event.id,
          reason,
          at: new Date().toISOString(),
        }),
      );
      await writeDurably(join(this.quarantineDir, `${name}.json`), safeJson(entry.event));
      await syncDir(this.quarantineDir);
      if (replacement) {
        await writeDurably(this.pathOf(entry.seq), JSON.stringify(replacement));
        entry.event = replacement;
      } else {
        await this.remove(entry);
      }
      await syncDir(this.dir);
    } catch (error) {
      throw new OutboxError(`cannot quarantine outbox entry ${entry.seq}`, {
        cause: error,
        path: this.pathOf(entry.seq),
      });
    }
  }

  private async write(event: OutgoingEvent): Promise<OutboxEntry> {
    const seq = this.nextSeq;
    const finalPath = this.pathOf(seq);
    const tempPath = `${finalPath}${TEMP_SUFFIX}`;
    try {
      const file = await open(tempPath, 'wx', 0o600);
      try {
        await file.writeFile(JSON.stringify(event));
        await file.sync();
      } finally {
        await file.close();
      }
      await rename(tempPath, finalPath);
      await syncDir(this.dir);
    } catch (error) {
      await unlink(tempPath).catch(() => undefined);
      throw new OutboxError(`cannot write event ${event.event.id} to the outbox`, {
        cause: error,
        path: finalPath,
      });
    }
    this.nextSeq = seq + 1;
    const entry = { seq, event };
    this.entriesInOrder.push(entry);
    return entry;
  }

  private pathOf(seq: number): string {
    return join(this.dir, `${String(seq).padStart(16, '0')}.json`);
  }
}

async function readEntry(path: string, logger: Logger): Promise<OutgoingEvent | undefined> {
  const text = await readFile(path, 'utf8');
  try {
    const parsed = JSON.parse(text) as OutgoingEvent;
    if (
      parsed &&
      typeof parsed.routingKey === 'string' &&
      parsed.event &&
      typeof parsed.event.id === 'string'
    ) {
      return parsed;
    }
    throw new Error('not an outbox entry (routingKey or event.id missing)');
  } catch (error) {
    logger.error(
      { err: error, path },
      'unreadable outbox entry moved aside as *.corrupt; it will not be published',
    );
    await rename(path, `${path}.corrupt`);
    return undefined;
  }
}

/** Writes a file through a temp file + fsync + rename (the caller fsyncs the directory). */
async function writeDurably(path: string, text: string): Promise<void> {
  const temp = `${path}${TEMP_SUFFIX}`;
  const file = await open(temp, 'w', 0o600);
  try {
    await file.writeFile(text);
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(temp, path);
}

/** JSON of anything an entry may hold; a value JSON cannot carry (BigInt, cycle) is described instead. */
function safeJson(value: unknown): string {
  try {
    return JSON.stringify(value);
  } catch (error) {
    return JSON.stringify({ unserialisable: String(error) });
  }
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
