import { existsSync, readFileSync } from 'node:fs';

/** The lab suites need real device-mapper: fail (never skip) anywhere else, saying how to run them. */
export function setup(): void {
  const hostname = existsSync('/etc/hostname') ? readFileSync('/etc/hostname', 'utf8').trim() : '';
  if (!existsSync('/dev/mapper/control') || hostname !== 'lab') {
    throw new Error(
      'The lab suites need real LVM (device-mapper), which this kernel lacks: run them inside the lab VM with ' +
        '`npm run test:lab` (bash test/lab/run-suites.sh), not with vitest directly.',
    );
  }
}
