// Integration prerequisites are installed and started by scripts/ensure-host.sh (npm test runs it).
// Here we only make sure a broker URL is known, failing with a message that says what is missing.
import { startBrokerIfNeeded, stopBroker } from './broker.js';

export async function setup(): Promise<void> {
  await startBrokerIfNeeded();
}

export async function teardown(): Promise<void> {
  await stopBroker();
}
