// Each strategy's snapshot.create steps in the order they run (src/snapshot/strategies/*.ts; the
// engine builds its lists per plan). The chain suites check the engine's against it; the lab's fault
// matrix tells rolled-back from past the point of no return with it; the power cuts aim at its steps.
export const STEP_ORDER = {
  offline: [
    'create-staging',
    'export',
    'publish',
    'verify',
    'rebase-staging',
    'retire-active',
    'promote-staging',
    'remove-retired',
  ],
  'lvm-cow': ['clone', 'export', 'publish', 'verify', 'remove-clone', 'repoint'],
  'live-rotate': [
    'create-overlay',
    'switch',
    'export',
    'publish',
    'verify',
    'record-layer',
    'commit-frozen',
    'remove-frozen',
  ],
} as const satisfies Record<string, readonly string[]>;

export type LabStrategy = keyof typeof STEP_ORDER;
