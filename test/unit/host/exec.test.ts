// How host tool failures are classified from their stderr (the codes the failed events carry).
import { describe, expect, it } from 'vitest';
import { HostCommandError } from '../../../src/errors/index.js';
import { classifyFailure } from '../../../src/host/exec.js';

describe('classifyFailure', () => {
  it('reads an I/O error as io-error (HOST_IO_ERROR, retryable), even when lvm also says "not found"', () => {
    // lvm with its only PV on a dm-error device: the read error first, then "not found".
    const lvm =
      '  /dev/mapper/fpool1: read failed: Input/output error\n  Volume group "faultvg1" not found\n  Cannot process volume group faultvg1';
    expect(classifyFailure(lvm)).toBe('io-error');
    const qemuImg =
      "qemu-img: Could not open '/tmp/s/snap-3': Could not read image header: Input/output error";
    expect(classifyFailure(qemuImg)).toBe('io-error');
    expect(classifyFailure('qemu-img: error while reading at byte 0: Stale file handle')).toBe('io-error');
    const error = new HostCommandError('io-error', 'qemu-img check failed', {
      command: 'qemu-img',
      args: [],
    });
    expect(error.code).toBe('HOST_IO_ERROR');
    expect(error.retryable).toBe(true);
  });

  it('keeps the other kinds', () => {
    expect(classifyFailure('Volume group "vg0" not found')).toBe('not-found');
    expect(classifyFailure('qemu-img: error while writing: No space left on device')).toBe('no-space');
    expect(classifyFailure('something else')).toBe('failed');
  });
});
