// Crash matrix, lvm-cow strategy (reflink file pool on XFS, running type='qemu' VM), through
// RabbitMQ with real agent processes; includes kills while the agent has the VM paused.
import { crashMatrixSuite, crashSetup } from '../../support/crash-matrix.js';
import { mountXfs } from '../../support/xfs.js';

// Point of no return: repoint (the active image's header names the new snapshot).
const cells: Array<[string, boolean]> = [
  ['lvm-cow:repoint:after', false],
  ['lvm-cow:clone:before', true],
  ['lvm-cow:clone:during', true], // VM paused by the agent
  ['lvm-cow:clone:after', true],
  ['lvm-cow:export:during', true],
  ['lvm-cow:export:after', true],
  ['lvm-cow:publish:after', true],
  ['lvm-cow:verify:after', true],
  ['lvm-cow:remove-clone:after', true],
  ['lvm-cow:repoint:during', true], // VM paused by the agent, header not yet changed
];

crashMatrixSuite({
  title: 'crash matrix: lvm-cow with a running VM',
  cellTitle: 'kill -9 at %s, restart: rolled back = %s, chain intact, VM running, one terminal event',
  setup: async (cleanup) => {
    const xfs = await mountXfs(`clvmt-crashcow-${process.pid}`);
    cleanup.add('xfs', () => xfs.cleanup());
    return crashSetup(cleanup, 'crashcow', { strategy: 'lvm-cow', vm: true, poolRoot: xfs.mountPoint });
  },
  cells,
});
