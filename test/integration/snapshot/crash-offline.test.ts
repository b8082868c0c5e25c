// Crash matrix, offline strategy (file pool, no VM), through RabbitMQ with real agent processes.
import { crashMatrixSuite, crashSetup } from '../../support/crash-matrix.js';

// Point of no return: promote-staging (the volume name opens the new overlay from then on).
// The finishing cells run first so the rolled-back ones are deltas on an existing chain.
const cells: Array<[string, boolean]> = [
  ['offline:promote-staging:after', false],
  ['offline:remove-retired:after', false],
  ['offline:create-staging:before', true],
  ['offline:create-staging:after', true],
  ['offline:export:during', true],
  ['offline:export:after', true],
  ['offline:publish:after', true],
  ['offline:verify:after', true],
  ['offline:rebase-staging:after', true],
  ['offline:retire-active:after', true],
];

crashMatrixSuite({
  title: 'crash matrix: offline',
  cellTitle: 'kill -9 at %s, restart: rolled back = %s, chain intact, one terminal event',
  setup: (cleanup) => crashSetup(cleanup, 'crashoff', { strategy: 'offline', vm: false }),
  cells,
});
