import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

// The lab suites: real device-mapper and LVM, run INSIDE the lab guest by test/lab/run-suites.sh
// (`npm run test:lab`). On a host without device-mapper the global setup fails and says so.
export default defineConfig({
  root: fileURLToPath(new URL('../..', import.meta.url)),
  // The project folder is a 9p share: keep vite's cache in the guest's own /tmp.
  cacheDir: '/tmp/vitest-lab-cache',
  test: {
    name: 'lab',
    include: ['test/lab/suites/**/*.test.ts'],
    // The pool's log-writes replay shows its PV on several devices, which the other suites' lvm
    // scans would see: it runs only with lab_logwrites set (`npm run test:logwrites`).
    exclude: process.env.lab_logwrites ? [] : ['test/lab/suites/log-writes-pool.test.ts'],
    globalSetup: ['test/lab/lab-global-setup.ts'],
    pool: 'forks',
    maxWorkers: 2,
    // Node runs 5-10x slower under emulation, and a busy host slows it 2-3x more (a fault case takes
    // 40-75 s on an idle host, 150-185 s at load average 15).
    testTimeout: 300_000,
    hookTimeout: 300_000,
    reporters: ['default'],
  },
});
