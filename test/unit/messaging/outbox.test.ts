import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { OutgoingEvent } from '../../../src/jobs/ports.js';
import { Outbox } from '../../../src/messaging/outbox.js';
import { silentLogger } from '../../../src/observability/logger.js';
import type { AgentEvent } from '../../../src/protocol/index.js';

const logger = silentLogger();

function event(n: number): OutgoingEvent {
  return {
    event: { id: `e${n}`, type: 'io.clvm.snapshot-agent.started' } as AgentEvent,
    routingKey: `h.agent.started`,
    persistent: true,
  };
}

describe('Outbox (real files)', () => {
  const dirs: string[] = [];
  afterEach(async () => {
    for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
  });
  async function dir(): Promise<string> {
    const path = await mkdtemp(join(tmpdir(), 'outbox-unit-'));
    dirs.push(path);
    return path;
  }

  it('keeps concurrent appends in call order, and reloads them in that order', async () => {
    const path = join(await dir(), 'nested', 'outbox');
    const outbox = await Outbox.open(path, logger);
    await Promise.all(Array.from({ length: 30 }, (_, i) => outbox.append(event(i + 1))));
    expect(outbox.entries().map((e) => e.event.event.id)).toEqual(
      Array.from({ length: 30 }, (_, i) => `e${i + 1}`),
    );

    const reopened = await Outbox.open(path, logger);
    expect(reopened.entries().map((e) => e.event)).toEqual(outbox.entries().map((e) => e.event));
    expect(reopened.head()?.event.event.id).toBe('e1');
  });

  it('removes confirmed entries from disk and continues numbering after a reload', async () => {
    const path = await dir();
    const outbox = await Outbox.open(path, logger);
    const first = await outbox.append(event(1));
    await outbox.append(event(2));
    await outbox.remove(first);
    expect(outbox.depth).toBe(1);
    expect(await readdir(path)).toEqual(['0000000000000002.json']);

    const reopened = await Outbox.open(path, logger);
    const third = await reopened.append(event(3));
    expect(third.seq).toBe(3);
    expect(reopened.entries().map((e) => e.event.event.id)).toEqual(['e2', 'e3']);
  });

  it('drops a half-written temp file and sets an unreadable entry aside instead of sending it', async () => {
    const path = await dir();
    const outbox = await Outbox.open(path, logger);
    await outbox.append(event(1));
    await writeFile(join(path, '0000000000000002.json.tmp'), '{"half":');
    await writeFile(join(path, '0000000000000003.json'), 'not json');
    await writeFile(join(path, '0000000000000004.json'), JSON.stringify(event(4)));

    const reopened = await Outbox.open(path, logger);
    expect(reopened.entries().map((e) => e.event.event.id)).toEqual(['e1', 'e4']);
    expect((await readdir(path)).sort()).toEqual([
      '0000000000000001.json',
      '0000000000000003.json.corrupt',
      '0000000000000004.json',
    ]);
    expect((await reopened.append(event(5))).seq).toBe(5);
  });

  it('fails with OUTBOX_UNAVAILABLE when the directory cannot be used', async () => {
    const path = await dir();
    await writeFile(join(path, 'file'), 'x');
    await expect(Outbox.open(join(path, 'file', 'outbox'), logger)).rejects.toMatchObject({
      code: 'OUTBOX_UNAVAILABLE',
    });
  });
});
