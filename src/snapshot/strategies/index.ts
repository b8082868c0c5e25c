// The strategy table: one line per strategy. Its keys are the protocol's CONCRETE_STRATEGIES
// (`satisfies` fails the build when a name has no strategy or a strategy no name).
import type { Capabilities } from '../../host/capabilities.js';
import { CONCRETE_STRATEGIES, type ConcreteStrategy } from '../../protocol/index.js';
import { liveRotate } from './live-rotate.js';
import { lvmCow } from './lvm-cow.js';
import { offline } from './offline.js';
import type { HostOptions, Strategy, StrategySupport } from './strategy.js';

export const STRATEGIES = {
  offline,
  'lvm-cow': lvmCow,
  'live-rotate': liveRotate,
} as const satisfies Record<ConcreteStrategy, Strategy>;

export { LIVE_ROTATE_DISABLED } from './live-rotate.js';
export type { Fit, HostOptions, Strategy, StrategyHooks, StrategySupport, VolumeProbe } from './strategy.js';

/** The strategy of a name, as the common shape. */
export function strategyOf(name: ConcreteStrategy): Strategy {
  return STRATEGIES[name];
}

/** Where each strategy can run on this host (the capability report, ping). */
export function hostSupport(
  host: Capabilities,
  options: HostOptions = { liveRotate: 'enabled' },
): Record<ConcreteStrategy, StrategySupport> {
  const support = {} as Record<ConcreteStrategy, StrategySupport>;
  for (const name of CONCRETE_STRATEGIES) support[name] = STRATEGIES[name].onHost(host, options);
  return support;
}
