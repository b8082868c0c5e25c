import type { HandlerRegistry } from '../jobs/types.js';
import { notImplementedHandlers } from './not-implemented.js';
import { type HostProbe, pingHandler } from './ping.js';

export { capabilityProbe, hostReport } from './host-probe.js';
export { ENGINE_COMMAND_TYPES, notImplementedHandlers } from './not-implemented.js';
export { cachedProbe, type HostProbe, type HostReport, pingHandler } from './ping.js';

/**
 * The handlers every agent has: agent.ping, and NOT_IMPLEMENTED for the engine's command types.
 * Spread the engine's registry after it to replace the placeholders.
 */
export function baseHandlers(opts: {
  agentVersion: string;
  hostId: string;
  probe: HostProbe;
}): HandlerRegistry {
  return { ...notImplementedHandlers(), 'agent.ping': pingHandler(opts) };
}
