import { readFileSync } from 'node:fs';
import { mkdir, readdir, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { isAtomicTempFile, writeFileAtomic } from '../atomic-file.js';
import { JournalError } from '../errors/journal-error.js';
import { fsyncPath } from '../fsync.js';
import type { AgentEvent, Command, CommandType, VolumeRef } from '../protocol/index.js';
import type { StepJournal } from './types.js';

export type JobState = 'queued' | 'running' | 'succeeded' | 'failed';

/** A terminal event as recorded before it is published (replayed by recovery when unpublished). */
export interface RecordedTerminal {
  event: AgentEvent;
  routingKey: string;
  /** True once the event is durably in the publisher's outbox. */
  published: boolean;
}

/** One job as stored in `<stateDir>/jobs/<id>.json`. */
export interface JobRecord {
  version: 1;
  id: string;
  type: CommandType;
  command: Command;
  volume: VolumeRef | null;
  /** Jobs with the same lock key run one at a time (the volume); null: no lock, no global limit. */
  lockKey: string | null;
  replyTo: string | null;
  /** AMQP correlationId of the command, echoed on replies (defaults to the command id). */
  correlationId: string | null;
  state: JobState;
  /** Last event sequence number used for this job; the next event gets sequence + 1. */
  sequence: number;
  acceptedAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  /** How many times a handler was started for it (recovery re-runs count). */
  runs: number;
  /** The handler's StepJournal facts. */
  steps: Record<string, unknown>;
  /** True once the handler wrote to its StepJournal (a step ran, so "nothing to roll back" is unknown). */
  stepsWritten: boolean;
  terminal: RecordedTerminal | null;
  /** expiresAt of a signed command: the record (its id) is kept at least until then. */
  commandExpiresAt?: string | null;
  /**
   * The job's `accepted` event, built before the record is written so recovery can publish it
   * (same event id) when the agent died before it reached the outbox. Absent in older records.
   */
  accepted?: RecordedTerminal;
  /** Hex SHA-256 of the command's raw body: a later message under this id is a duplicate only when equal. */
  bodySha256?: string;
}

const FILE_SUFFIX = '.json';
/** Finished jobs stay this long for duplicate detection, then start-up prunes them. */
export const DEFAULT_RETENTION_MS = 7 * 24 * 3600_000;

/**
 * The local job journal: one JSON file per job under `<stateDir>/jobs`, each write atomic and
 * fsynced (writeFileAtomic). Records stay in memory too; writes to one job are serialised.
 * Command ids are file names: the protocol's id rule (letters, digits, `_.:-`, no leading dot)
 * keeps them inside the directory.
 */
export class JobJournal {
  readonly dir: string;
  /** Jobs not finished, or whose terminal event is not yet in the outbox. */
  private readonly records = new Map<string, JobRecord>();
  /**
   * Finished jobs whose terminal event is in the outbox: only their ids stay in memory (for
   * duplicate detection); the record is read from its file when asked for. Keeping 7 days of
   * records as objects cost ~4 KB of heap per command (44 MB after 10,000 pings).
   */
  private readonly finished = new Set<string>();
  private readonly writeChains = new Map<string, Promise<void>>();

  constructor(stateDir: string) {
    this.dir = join(stateDir, 'jobs');
  }

  /**
   * Creates the directory, removes temp files of interrupted writes, loads every record and
   * prunes finished jobs older than `retentionMs` whose signed expiresAt (if any) has passed.
   */
  async open(retentionMs = DEFAULT_RETENTION_MS, now = Date.now()): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    let pruned = false;
    for (const name of await readdir(this.dir)) {
      const path = join(this.dir, name);
      if (isAtomicTempFile(name)) {
        await unlink(path);
        pruned = true;
        continue;
      }
      if (!name.endsWith(FILE_SUFFIX)) continue;
      let record: JobRecord;
      try {
        record = JSON.parse(await readFile(path, 'utf8')) as JobRecord;
      } catch (error) {
        // Never skip a job silently: an unreadable record stops the start-up with its path.
        throw new JournalError(`journal record ${path} is unreadable: ${String(error)}`, error);
      }
      const finished = record.finishedAt ? Date.parse(record.finishedAt) : Number.NaN;
      // A signed command's id stays until its expiresAt too, so a replay is always recognised.
      const expires = record.commandExpiresAt ? Date.parse(record.commandExpiresAt) : Number.NaN;
      const expired = Number.isNaN(expires) || now > expires;
      if (record.terminal?.published && now - finished > retentionMs && expired) {
        await unlink(path);
        pruned = true;
        continue;
      }
      if (record.terminal?.published) this.finished.add(record.id);
      else this.records.set(record.id, record);
    }
    if (pruned) await fsyncPath(this.dir);
  }

  /** The record of job `id`; a finished one is read from its file (rare: duplicates, job.cancel). */
  get(id: string): JobRecord | undefined {
    const record = this.records.get(id);
    if (record || !this.finished.has(id)) return record;
    const path = join(this.dir, `${id}${FILE_SUFFIX}`);
    try {
      // Synchronous: callers need the record at once, and it is one small local file.
      return JSON.parse(readFileSync(path, 'utf8')) as JobRecord;
    } catch (error) {
      throw new JournalError(`journal record ${path} is unreadable: ${String(error)}`, error);
    }
  }

  has(id: string): boolean {
    return this.records.has(id) || this.finished.has(id);
  }

  /**
   * Every record still to act on (not finished, or its terminal event not yet in the outbox),
   * oldest accepted first. Finished and published jobs are not listed: recovery has nothing to do.
   */
  list(): JobRecord[] {
    return [...this.records.values()].sort((a, b) => a.acceptedAt.localeCompare(b.acceptedAt));
  }

  /**
   * Durably records a new job. The caller checked for duplicates first.
   * @throws JournalError when the write fails (nothing is recorded then)
   */
  async create(record: JobRecord): Promise<void> {
    if (this.has(record.id)) throw new Error(`job ${record.id} is already journaled`);
    this.records.set(record.id, record);
    try {
      await this.enqueue(record.id, () => this.persist(record));
    } catch (error) {
      this.records.delete(record.id);
      throw error;
    }
  }

  /**
   * Applies `mutate` to the record and persists it; writes to one job happen in call order.
   * `durable: false` skips the directory fsync, for facts that may be lost in a power cut without harm
   * (a later durable write of the same record carries them anyway). Returns the updated record.
   */
  async update(
    id: string,
    mutate: (record: JobRecord) => void,
    options: { durable?: boolean } = {},
  ): Promise<JobRecord> {
    const record = this.records.get(id);
    if (!record) throw new Error(`job ${id} is not in the journal`);
    await this.enqueue(id, async () => {
      mutate(record);
      await this.persist(record, options.durable ?? true);
      if (record.terminal?.published) {
        this.records.delete(id);
        this.finished.add(id);
      }
    });
    return record;
  }

  /** The StepJournal a handler gets for one job (facts live in the job record). */
  stepJournal(id: string): StepJournal {
    return {
      read: <T extends Record<string, unknown>>() => structuredClone(this.records.get(id)?.steps ?? {}) as T,
      write: async (patch) => {
        await this.update(id, (record) => {
          record.steps = { ...record.steps, ...structuredClone(patch) };
          record.stepsWritten = true;
        });
      },
    };
  }

  private enqueue(id: string, write: () => Promise<void>): Promise<void> {
    const previous = this.writeChains.get(id) ?? Promise.resolve();
    const next = previous.then(write, write);
    const tail = next.catch(() => undefined);
    this.writeChains.set(id, tail);
    void tail.then(() => {
      if (this.writeChains.get(id) === tail) this.writeChains.delete(id);
    });
    return next;
  }

  private async persist(record: JobRecord, durable = true): Promise<void> {
    try {
      await writeFileAtomic(join(this.dir, `${record.id}${FILE_SUFFIX}`), `${JSON.stringify(record)}\n`, {
        durable,
      });
    } catch (error) {
      throw new JournalError(`cannot write the journal of job ${record.id}: ${String(error)}`, error);
    }
  }
}
