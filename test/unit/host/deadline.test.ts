// A file-system call on a dead hard NFS mount never returns: the job must not wait for it.
import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/errors/index.js';
import { StuckCallGate, withDeadline } from '../../../src/host/deadline.js';

describe('withDeadline', () => {
  it('rejects a call that never answers with HOST_TIMEOUT, retryable, naming the call', async () => {
    const never = new Promise<number>(() => undefined);
    const error = await withDeadline(never, { operation: 'statfs', path: '/store', timeoutMs: 20 }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(AgentError);
    expect((error as AgentError).code).toBe('HOST_TIMEOUT');
    expect((error as AgentError).retryable).toBe(true);
    expect((error as AgentError).message).toContain('statfs of /store');
  });

  it('passes an answer and a failure through unchanged', async () => {
    expect(await withDeadline(Promise.resolve(7), { operation: 'stat', path: '/x', timeoutMs: 1000 })).toBe(
      7,
    );
    const eio = Object.assign(new Error('EIO'), { code: 'EIO' });
    await expect(
      withDeadline(Promise.reject(eio), { operation: 'stat', path: '/x', timeoutMs: 1000 }),
    ).rejects.toBe(eio);
  });
});

describe('StuckCallGate', () => {
  const call = (operation: string, timeoutMs = 20) => ({ operation, path: '/store/vol/snap-1', timeoutMs });

  it('after a call on a root outlives its deadline, refuses further calls on that root at once until it answers', async () => {
    const gate = new StuckCallGate();
    let answer: (value: number) => void = () => undefined;
    const stuck = gate.run(
      '/store',
      () => new Promise<number>((resolve) => (answer = resolve)),
      call('statfs'),
    );
    await expect(stuck).rejects.toMatchObject({ code: 'HOST_TIMEOUT', retryable: true });
    expect(gate.stuckOn('/store')).toMatchObject({ operation: 'statfs' });

    let started = false;
    const refused = gate.run(
      '/store',
      async () => {
        started = true;
        return 1;
      },
      call('unlink', 60_000),
    );
    await expect(refused).rejects.toMatchObject({ code: 'HOST_TIMEOUT', details: { stuck: 'statfs' } });
    expect(started, 'the refused call took no thread').toBe(false);
    // Another root is not affected.
    expect(await gate.run('/other', async () => 2, call('stat'))).toBe(2);

    answer(0);
    await new Promise((r) => setImmediate(r));
    expect(gate.stuckOn('/store')).toBeUndefined();
    expect(await gate.run('/store', async () => 3, call('stat'))).toBe(3);
  });

  it('a call that fails in time leaves the root open', async () => {
    const gate = new StuckCallGate();
    const eio = Object.assign(new Error('EIO'), { code: 'EIO' });
    await expect(gate.run('/store', () => Promise.reject(eio), call('stat', 1000))).rejects.toBe(eio);
    expect(gate.stuckOn('/store')).toBeUndefined();
  });
});
