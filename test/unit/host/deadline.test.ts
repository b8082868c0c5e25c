// A file-system call on a dead hard NFS mount never returns: the job must not wait for it.
import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/errors/index.js';
import { withDeadline } from '../../../src/host/deadline.js';

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
