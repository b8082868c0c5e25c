// Crash matrix, live-rotate strategy, part 2 (see crash-live-rotate.test.ts): kills from the end of
// the export to the end, all after the point of no return, so every job finishes. The first cell
// makes the full snapshot, the rest are deltas; commit-frozen:during kills the agent while
// libvirt's block commit may still run (libvirt finishes it; recovery waits for it).
import { crashMatrixSuite, crashSetup, liveRotateCrashAt } from '../../support/crash-matrix.js';

const cells: Array<[string, boolean]> = [
  ['live-rotate:export:after', false],
  ['live-rotate:publish:after', false],
  ['live-rotate:verify:after', false],
  ['live-rotate:record-layer:after', false],
  ['live-rotate:commit-frozen:during', false],
  ['live-rotate:commit-frozen:after', false],
  ['live-rotate:remove-frozen:before', false],
];

crashMatrixSuite({
  title: 'crash matrix: live-rotate with a running VM on a plain file pool (export to the end)',
  cellTitle: 'kill -9 at %s, restart: finished, chain intact, VM never paused, no write lost',
  setup: (cleanup) => crashSetup(cleanup, 'crashlr2', { strategy: 'live-rotate', vm: true }),
  cells,
  at: liveRotateCrashAt,
});
