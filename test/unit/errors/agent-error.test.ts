// toAgentError: what a failure that is not an AgentError becomes in a failed event.
import { describe, expect, it } from 'vitest';
import { AgentError, toAgentError } from '../../../src/errors/index.js';

function systemError(code: string, syscall: string, path: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: failed, ${syscall} '${path}'`), {
    code,
    syscall,
    path,
    errno: -5,
  });
}

describe('toAgentError', () => {
  it('gives disk and store failures of system calls the host codes (an fsync EIO was INTERNAL)', () => {
    const eio = toAgentError(systemError('EIO', 'fsync', '/store/vol/.snap-2.part'));
    expect(eio).toMatchObject({ code: 'HOST_IO_ERROR', retryable: true });
    expect(eio.details).toEqual({ errno: 'EIO', syscall: 'fsync', path: '/store/vol/.snap-2.part' });
    expect(toAgentError(systemError('ENOSPC', 'write', '/store/x'))).toMatchObject({
      code: 'HOST_NO_SPACE',
      retryable: false,
    });
    expect(toAgentError(systemError('ESTALE', 'open', '/store/x')).code).toBe('HOST_IO_ERROR');
    expect(toAgentError(systemError('ETIMEDOUT', 'read', '/store/x')).code).toBe('HOST_TIMEOUT');
    // An NFS unlink refused while the file's silly-rename is pending (the nfs-store lab suite).
    const busy = toAgentError(systemError('EBUSY', 'unlink', '/store/vol/.snap-1.part'));
    expect([busy.code, busy.retryable]).toEqual(['HOST_BUSY', true]);
  });

  it('keeps AgentErrors and makes anything else INTERNAL', () => {
    const own = new AgentError('X', 'x');
    expect(toAgentError(own)).toBe(own);
    expect(toAgentError(new Error('bug')).code).toBe('INTERNAL');
    expect(toAgentError(systemError('ENOENT', 'open', '/x')).code).toBe('INTERNAL');
    expect(toAgentError('text').code).toBe('INTERNAL');
  });
});
