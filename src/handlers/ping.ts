import type { CommandHandlerFn } from '../jobs/types.js';
import type { EventData, StrategyName } from '../protocol/index.js';

type PingResult = EventData<'succeeded'>['result'] & {
  agentVersion: string;
  hostId: string;
  tools: { qemuImg: string | null; qemu: string | null; libvirt: string | null; lvm2: string | null };
  strategies: StrategyName[];
};

/** What ping reports about the host: tool versions and the strategies it can run. */
export interface HostReport {
  tools: PingResult['tools'];
  strategies: StrategyName[];
}

/** Asks the host what it has; injected so ping does not depend on how the probe is made. */
export type HostProbe = () => Promise<HostReport>;

/**
 * Caches a probe for `ttlMs`: 1,000 pings must not start 4,000 processes. Concurrent callers share
 * one probe in flight; a failed probe is not cached.
 */
export function cachedProbe(probe: HostProbe, ttlMs: number, now: () => number = Date.now): HostProbe {
  let cached: { at: number; value: Promise<HostReport> } | undefined;
  return () => {
    if (cached && now() - cached.at < ttlMs) return cached.value;
    const entry = { at: now(), value: probe() };
    cached = entry;
    entry.value.catch(() => {
      if (cached === entry) cached = undefined;
    });
    return entry.value;
  };
}

/** `agent.ping`: agent version, host id, host tool versions and runnable strategies. */
export function pingHandler(opts: {
  agentVersion: string;
  hostId: string;
  probe: HostProbe;
}): CommandHandlerFn<'agent.ping'> {
  return async () => {
    const report = await opts.probe();
    const result: PingResult = {
      agentVersion: opts.agentVersion,
      hostId: opts.hostId,
      tools: report.tools,
      strategies: report.strategies,
    };
    return result;
  };
}
