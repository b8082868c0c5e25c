// Each strategy's snapshot.create steps in the order they run (src/snapshot/strategies/*.ts), for
// the lab's matrices: the fault matrix tells rolled-back from past the point of no return with it,
// the power-cut matrix picks the step each cut aims at. The engine's own lists are built per plan.
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
