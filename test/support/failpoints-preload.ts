// Preloaded into agent processes of the crash tests (`node --import tsx --import <this> src/main.ts`):
// arms AGENT_FAILPOINTS on the engine's checkpoints, and turns `export-rate` into the host's export
// bandwidth limit. The agent itself never reads AGENT_FAILPOINTS.
import { Failpoints } from './failpoints.js';

const failpoints = Failpoints.parse(process.env.AGENT_FAILPOINTS);
failpoints.arm();
const rate = failpoints.exportBytesPerSecond;
if (rate !== null) process.env.AGENT_EXPORT_BYTES_PER_SECOND = String(rate);
