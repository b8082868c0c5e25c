// The frame of a test that runs real agents: every agent a test starts, and its client, are
// stopped after the test. childAgentsPerTest is the kill -9 variant: agent processes running
// test/support/agent-child.ts, whose snapshot.create sleeps TEST_SLOW_CREATE_MS.
import { afterEach } from 'vitest';
import { startTestAgent, type TestAgent, type TestAgentOptions, TestClient } from './agent.js';

/** Registers an afterEach that closes the client and stops every agent started through `start`. */
export function agentsPerTest() {
  const agents: TestAgent[] = [];
  let client: TestClient | undefined;
  afterEach(async () => {
    await client?.close();
    client = undefined;
    // A restarted agent first (it uses the earlier one's state dir), then the earlier.
    for (const a of agents.splice(0).reverse()) await a.stop();
  });
  return {
    async start(opts: TestAgentOptions = {}): Promise<TestAgent> {
      const agent = await startTestAgent(opts);
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

/** agentsPerTest for child agents whose snapshot.create takes `slowCreateMs`. */
export function childAgentsPerTest() {
  const frame = agentsPerTest();
  return {
    /** `restartOf` reuses that agent's state dir and names. */
    start(
      slowCreateMs: number,
      opts: { restartOf?: TestAgent; overrides?: TestAgentOptions['overrides'] } = {},
    ): Promise<TestAgent> {
      return frame.start({
        mode: 'child',
        entry: 'test/support/agent-child.ts',
        env: { TEST_SLOW_CREATE_MS: String(slowCreateMs) },
        ...(opts.overrides ? { overrides: opts.overrides } : {}),
        ...(opts.restartOf ? { stateDir: opts.restartOf.stateDir, reuse: opts.restartOf } : {}),
      });
    },
    openClient: frame.openClient,
  };
}
