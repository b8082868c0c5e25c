import { randomBytes } from 'node:crypto';

/**
 * `<pid>-<8 hex>`: unique across test files running at the same time (and across helpers
 * sharing the broker and libvirtd); the pid lets a sweep tell a dead run's leftovers.
 */
export function uniqueSuffix(): string {
  return `${process.pid}-${randomBytes(4).toString('hex')}`;
}
