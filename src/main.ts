#!/usr/bin/env node
// The agent's entry point: wiring only. Handlers registered here replace the NOT_IMPLEMENTED
// placeholders (src/handlers/not-implemented.ts); agent.ping and job.cancel are built in.
import { closeVirshSessions } from './host/virsh-session.js';
import { runAgentProcess } from './service/process.js';
import { createSnapshotDeps, snapshotHandlers } from './snapshot/index.js';

await runAgentProcess({
  // The snapshot engine: snapshot.create/delete/revert and chain.verify, with the host adapters.
  handlers: (config, logger) => snapshotHandlers(createSnapshotDeps(config, logger)),
  // The host's virsh session ends with the agent (it would also end when our pipes close).
  afterStop: closeVirshSessions,
});
