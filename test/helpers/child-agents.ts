// The frame of a kill -9 test: real agent processes (test/helpers/agent-child.ts, whose
// snapshot.create sleeps TEST_SLOW_CREATE_MS), one client, all stopped after each test.
import { afterEach } from 'vitest';
import { startTestAgent, type TestAgent, type TestAgentOptions, TestClient } from './agent.js';

/** Registers an afterEach that closes the client and stops every agent started through `start`. */
export function childAgentsPerTest() {
  const agents: TestAgent[] = [];
  let client: TestClient | undefined;
  afterEach(async () => {
    await client?.close();
    client = undefined;
    // The restarted agent first (it uses the earlier one's state dir), then the earlier.
    for (const a of agents.splice(0).reverse()) await a.stop();
  });
  return {
    /** A child agent whose snapshot.create takes `slowCreateMs`; `restartOf` reuses that agent's state dir and names. */
    async start(
      slowCreateMs: number,
      opts: { restartOf?: TestAgent; overrides?: TestAgentOptions['overrides'] } = {},
    ): Promise<TestAgent> {
      const agent = await startTestAgent({
        mode: 'child',
        entry: 'test/helpers/agent-child.ts',
        env: { TEST_SLOW_CREATE_MS: String(slowCreateMs) },
        ...(opts.overrides ? { overrides: opts.overrides } : {}),
        ...(opts.restartOf ? { stateDir: opts.restartOf.stateDir, reuse: opts.restartOf } : {}),
      });
      agents.push(agent);
      return agent;
    },
    /** The test's client, on `agent`'s names (closed after the test). */
    async openClient(agent: TestAgent): Promise<TestClient> {
      client = await TestClient.open(agent);
      return client;
    },
  };
}
