// Crash matrix, live-rotate strategy, part 1 (up to the switch and the export; the later steps are
// in live-rotate-crash-late.test.ts, to keep each file short): a plain file pool (no reflink
// needed), a running type='qemu' VM, RabbitMQ and real agent processes killed with SIGKILL at step
// boundaries and right after libvirt's external snapshot returned (switch:during). The guest
// also writes while the agent is dead: those writes reach the live disk and stay out of the snapshot.
import { crashMatrixSuite, crashSetup, liveRotateCrashAt } from '../../support/crash-matrix.js';

// Point of no return: switch (libvirt put the new layer on top). Cells before it roll back; the
// rest finish. The finishing cells come first so that the rolled-back ones are deltas on a chain.
const cells: Array<[string, boolean]> = [
  ['live-rotate:switch:during', false], // snapshot-create-as returned, the journal still says started
  ['live-rotate:switch:after', false],
  ['live-rotate:export:before', false],
  ['live-rotate:export:during', false],
  ['live-rotate:create-overlay:before', true],
  ['live-rotate:create-overlay:after', true],
  ['live-rotate:switch:before', true],
];

crashMatrixSuite({
  title: 'crash matrix: live-rotate with a running VM on a plain file pool (create to export)',
  cellTitle: 'kill -9 at %s, restart: rolled back = %s, chain intact, VM never paused, no write lost',
  setup: (cleanup) => crashSetup(cleanup, 'crashlr', { strategy: 'live-rotate', vm: true }),
  cells,
  at: liveRotateCrashAt,
});
