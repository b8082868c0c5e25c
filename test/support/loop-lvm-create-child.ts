// Child process of live-rotate-block-crash.test.ts: runs one snapshot.create with the LoopLvm
// stand-in and real libvirt, so AGENT_FAILPOINTS can SIGKILL it at a step boundary like the agent.
//   node --import tsx --import ./failpoints-preload.ts loop-lvm-create-child.ts '<json spec>'
import { SnapshotStore } from '../../src/host/store.js';
import { createSnapshot } from '../../src/snapshot/index.js';
import { LoopLvm } from './loop-lvm.js';
import { type CreateCommand, FileStepJournal, jobContext, makeHarness } from './snapshot-harness.js';

interface ChildSpec {
  lvm: { vg: string; dir: string; capacityBytes: number };
  storeRoot: string;
  command: CreateCommand;
  journal: string;
}

const spec = JSON.parse(process.argv[2]!) as ChildSpec;
const h = await makeHarness('lrchild');
const deps = {
  ...h.deps,
  lvm: LoopLvm.open(spec.lvm.vg, spec.lvm.dir, spec.lvm.capacityBytes).asLvm(),
  store: new SnapshotStore({ roots: [spec.storeRoot], qemuImg: h.deps.qemuImg }),
};
try {
  const result = await createSnapshot(jobContext(spec.command, new FileStepJournal(spec.journal)), deps);
  process.stdout.write(`${JSON.stringify(result)}\n`);
} finally {
  await h.cleanup();
}
