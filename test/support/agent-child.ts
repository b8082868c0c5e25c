// Agent process for tests that need a slow job in a real child process (SIGTERM tests):
// the same runAgentProcess as src/main.ts, with snapshot.create taking TEST_SLOW_CREATE_MS.
import { runAgentProcess } from '../../src/service/process.js';
import { slowHandler } from './agent.js';

const ms = Number(process.env.TEST_SLOW_CREATE_MS ?? '1000');
await runAgentProcess({ handlers: () => ({ 'snapshot.create': slowHandler(ms) }) });
