import { StrategyUnavailableError } from '../errors/index.js';
import { CONCRETE_STRATEGIES, type ConcreteStrategy, type StrategyName } from '../protocol/index.js';
import { type Strategy, strategyOf, type VolumeProbe } from './strategies/index.js';

export interface StrategyChoice {
  name: ConcreteStrategy;
  reason: string;
}

export interface StrategyInput {
  requested: StrategyName;
  /** A QEMU process holds the volume (running or paused VM). */
  vmRunning: boolean;
  poolKind: 'lvm' | 'file';
  /** Each candidate strategy's probe of the volume (absent or null: not asked). */
  probes: Partial<Record<ConcreteStrategy, VolumeProbe>>;
}

/**
 * The strategies the planner may choose, in the order `auto` tries them: the requested one, or for
 * `auto` those the table offers for the VM's state (stopped → offline; running → live-rotate, then
 * lvm-cow). Their probes are what the planner needs asked.
 */
export function candidateStrategies(requested: StrategyName, vmRunning: boolean): Strategy[] {
  if (requested !== 'auto') return [strategyOf(requested)];
  const vm = vmRunning ? 'running' : 'stopped';
  return CONCRETE_STRATEGIES.map(strategyOf)
    .filter((s) => s.auto.vm === vm)
    .sort((a, b) => a.auto.rank - b.auto.rank);
}

/**
 * Picks the strategy (pure) from the table. `auto`: the first candidate that fits, saying why the
 * ones before it did not. An explicit request that cannot run here is refused with the reason,
 * never silently replaced.
 * @throws StrategyUnavailableError
 */
export function chooseStrategy(input: StrategyInput): StrategyChoice {
  const facts = (name: ConcreteStrategy) => ({
    vmRunning: input.vmRunning,
    poolKind: input.poolKind,
    probe: input.probes[name] ?? null,
  });
  const candidates = candidateStrategies(input.requested, input.vmRunning);
  if (input.requested !== 'auto') {
    const fit = candidates[0]!.fit(facts(input.requested));
    if (!fit.fits) throw new StrategyUnavailableError(input.requested, fit.whyNot);
    return { name: input.requested, reason: `requested (${fit.why})` };
  }
  const situation = input.vmRunning ? 'the VM is running' : 'no running VM holds the volume';
  const unavailable: string[] = [];
  for (const strategy of candidates) {
    const fit = strategy.fit(facts(strategy.name));
    if (!fit.fits) {
      unavailable.push(`${strategy.name} is unavailable (${fit.whyNot})`);
      continue;
    }
    const reason = !input.vmRunning
      ? `auto: ${situation}, so ${strategy.name} (${fit.why})`
      : unavailable.length === 0
        ? `auto: ${situation} and ${fit.why}`
        : `auto: ${situation} and ${unavailable.join(' and ')}, so ${strategy.name} (${fit.why})`;
    return { name: strategy.name, reason };
  }
  throw new StrategyUnavailableError('auto', `${situation}, ${unavailable.join(' and ')}`);
}

export interface KindInput {
  /** The last snapshot of the chain (parents' last), or null. */
  parentName: string | null;
  parentExists: boolean;
  /** Members of the parent's chain inside the store (the parent included). */
  parentDepth: number;
  /** The active volume's header names the parent as its backing: its top layer is exactly the delta. */
  activeBacksOntoParent: boolean;
  maxChainLength: number;
}

export type KindChoice = { kind: 'delta' } | { kind: 'full'; reason: string };

/** Full or delta (pure): delta only when the parent exists, is the active's backing and the chain has room. */
export function chooseKind(input: KindInput): KindChoice {
  if (input.parentName === null) return { kind: 'full', reason: 'no parent snapshot: first of a chain' };
  if (!input.parentExists)
    return { kind: 'full', reason: `parent ${input.parentName} is missing from the store` };
  if (input.parentDepth >= input.maxChainLength) {
    return {
      kind: 'full',
      reason: `chain depth ${input.parentDepth} reached maxChainLength ${input.maxChainLength}`,
    };
  }
  if (!input.activeBacksOntoParent) {
    return { kind: 'full', reason: `the active volume does not back onto parent ${input.parentName}` };
  }
  return { kind: 'delta' };
}
