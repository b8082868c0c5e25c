import { defineConfig } from 'vitest/config';

// Suites: unit (pure logic), integration (real RabbitMQ, qemu-img, libvirtd + QEMU, loop devices).
// The lab suites (real LVM) run inside the lab VM through test/lab, not here.
export default defineConfig({
  test: {
    pool: 'forks',
    reporters: process.env.CI ? ['default'] : ['default'],
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          testTimeout: 20_000,
          // Projects with different maxWorkers need distinct group orders (vitest 4): unit runs first.
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          testTimeout: 120_000,
          hookTimeout: 120_000,
          maxWorkers: 2,
          sequence: { groupOrder: 1 },
          globalSetup: ['test/support/global-setup.ts'],
        },
      },
    ],
  },
});
