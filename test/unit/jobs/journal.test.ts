import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { writeFileAtomic } from '../../../src/atomic-file.js';
import { newRecord } from '../../../src/jobs/intake.js';
import { JobJournal, type JobRecord } from '../../../src/jobs/journal.js';

function record(id: string, over: Partial<JobRecord> = {}): JobRecord {
  return {
    ...newRecord(
      { id, type: 'agent.ping', params: {} },
      { replyTo: undefined, correlationId: undefined },
      'host-1',
      '',
    ),
    ...over,
  };
}

describe('JobJournal', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'journal-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('persists records and step facts across a reopen, in write order', async () => {
    const j = new JobJournal(dir);
    await j.open();
    await j.create(record('job-1'));
    const steps = j.stepJournal('job-1');
    await Promise.all([steps.write({ a: 1 }), steps.write({ b: 2 }), steps.write({ a: 3 })]);
    await expect(j.create(record('job-1'))).rejects.toThrow(/already journaled/);

    const again = new JobJournal(dir);
    await again.open();
    expect(again.get('job-1')?.steps).toEqual({ a: 3, b: 2 });
    expect(again.get('job-1')?.stepsWritten).toBe(true);
    expect(again.stepJournal('job-1').read()).toEqual({ a: 3, b: 2 });
    const onDisk = JSON.parse(await readFile(join(dir, 'jobs', 'job-1.json'), 'utf8')) as JobRecord;
    expect(onDisk.steps).toEqual({ a: 3, b: 2 });
  });

  it('keeps only the ids of finished, published jobs in memory and reads their records from disk', async () => {
    const j = new JobJournal(dir);
    await j.open();
    await j.create(record('done'));
    await j.create(record('open'));
    const event = { id: 'e1', type: 'io.clvm.snapshot-agent.succeeded' } as unknown as NonNullable<
      JobRecord['terminal']
    >['event'];
    await j.update('done', (r) => {
      r.state = 'succeeded';
      r.finishedAt = new Date().toISOString();
      r.terminal = { event, routingKey: 'h.agent.succeeded', published: false };
    });
    expect(j.list().map((r) => r.id)).toEqual(['done', 'open']); // not yet in the outbox: still listed
    await j.update('done', (r) => {
      r.terminal!.published = true;
    });
    expect(j.list().map((r) => r.id)).toEqual(['open']);
    expect(j.has('done')).toBe(true);
    expect(j.get('done')).toMatchObject({ state: 'succeeded', terminal: { event, published: true } });
    await expect(j.create(record('done'))).rejects.toThrow(/already journaled/);
    await expect(j.update('done', () => undefined)).rejects.toThrow(/not in the journal/);

    const again = new JobJournal(dir);
    await again.open();
    expect(again.list().map((r) => r.id)).toEqual(['open']);
    expect(again.has('done')).toBe(true);
    expect(again.get('done')?.terminal?.published).toBe(true);
    expect(again.get('never')).toBeUndefined();
  });

  it('removes temp files of interrupted writes and prunes old finished jobs', async () => {
    const j = new JobJournal(dir);
    await j.open();
    const old = new Date(Date.now() - 10 * 24 * 3600_000).toISOString();
    await j.create(
      record('old', {
        state: 'succeeded',
        finishedAt: old,
        terminal: { event: {} as never, routingKey: 'x', published: true },
      }),
    );
    await j.create(record('young'));
    await writeFile(join(dir, 'jobs', '.young.json.abc.tmp'), '{"torn');
    const again = new JobJournal(dir);
    await again.open();
    expect(again.has('old')).toBe(false);
    expect(again.has('young')).toBe(true);
    expect((await readdir(join(dir, 'jobs'))).sort()).toEqual(['young.json']);
  });

  it('keeps a finished signed command past the retention until its expiresAt (a replay stays recognised)', async () => {
    const j = new JobJournal(dir);
    await j.open();
    const old = new Date(Date.now() - 10 * 24 * 3600_000).toISOString();
    const finished = {
      state: 'succeeded' as const,
      finishedAt: old,
      terminal: { event: {} as never, routingKey: 'x', published: true },
    };
    await j.create(
      record('signed-live', { ...finished, commandExpiresAt: new Date(Date.now() + 60_000).toISOString() }),
    );
    await j.create(record('signed-gone', { ...finished, commandExpiresAt: old }));
    const again = new JobJournal(dir);
    await again.open();
    expect(again.has('signed-live')).toBe(true);
    expect(again.has('signed-gone')).toBe(false);
  });

  it('writeFileAtomic leaves no temp file when the target directory is missing', async () => {
    await expect(writeFileAtomic(join(dir, 'nope', 'x.json'), 'x')).rejects.toThrow(/ENOENT/);
    await writeFileAtomic(join(dir, 'x.json'), 'one');
    await writeFileAtomic(join(dir, 'x.json'), 'two');
    expect(await readFile(join(dir, 'x.json'), 'utf8')).toBe('two');
    expect(await readdir(dir)).toEqual(['x.json']);
  });
});
