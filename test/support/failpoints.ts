// TEST-ONLY fault injection for the crash matrix, outside src: the engine publishes its checkpoints
// on a diagnostics channel (src/snapshot/checkpoints.ts) and this subscribes.
//
//   AGENT_FAILPOINTS="offline:export:before,lvm-cow:repoint:after,offline:export:during,export-rate=4M"
//
// - `<plan>:<step>:before|after|during`, `<plan>:export:during`: SIGKILL at that checkpoint
//   (plan = offline | lvm-cow | live-rotate | delete | revert).
// - `export-rate=<bytes/s>`: exports run slowly (qemu-img convert `-r`), so they can be cancelled or
//   killed half-way. In-process: `wrapRunner`; in an agent process: the host's own export bandwidth
//   limit (AGENT_EXPORT_BYTES_PER_SECOND), set by the preload module.
// SIGKILL (not an exception) so that nothing — no finally, no rollback — runs: exactly what kill -9 does.
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { writeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { RunOptions, RunResult } from '../../src/host/exec.js';
import { CHECKPOINT_CHANNEL, type Checkpoint } from '../../src/snapshot/checkpoints.js';

/** The preload module that arms AGENT_FAILPOINTS in an agent process (`node --import`). */
export const FAILPOINTS_PRELOAD = fileURLToPath(new URL('./failpoints-preload.ts', import.meta.url));

export type ToolRunner = (file: string, args: readonly string[], options: RunOptions) => Promise<RunResult>;

const SUFFIX = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 } as const;

/** The parsed failpoint list; `none` does nothing. */
export class Failpoints {
  static readonly none = new Failpoints(new Set(), null);

  private constructor(
    readonly points: ReadonlySet<string>,
    /** Rate limit of qemu-img convert, e.g. "4M"; null when not set. */
    readonly exportRate: string | null,
  ) {}

  /** Parses the AGENT_FAILPOINTS syntax above (empty or undefined: none). */
  static parse(spec: string | undefined): Failpoints {
    if (spec === undefined || spec.trim() === '') return Failpoints.none;
    const points = new Set<string>();
    let rate: string | null = null;
    for (const item of spec.split(',').map((s) => s.trim())) {
      if (item === '') continue;
      const rateMatch = /^export-rate=(\d+[KMG]?)$/.exec(item);
      if (rateMatch) rate = rateMatch[1] ?? null;
      else if (/^[a-z-]+:[a-z-]+:(before|after|during)$/.test(item)) points.add(item);
      else throw new Error(`AGENT_FAILPOINTS: cannot read ${JSON.stringify(item)}`);
    }
    return new Failpoints(points, rate);
  }

  get active(): boolean {
    return this.points.size > 0 || this.exportRate !== null;
  }

  /** The export rate in bytes per second (qemu-img's suffixes: K, M, G are powers of 1024). */
  get exportBytesPerSecond(): number | null {
    const match = this.exportRate === null ? null : /^(\d+)([KMG]?)$/.exec(this.exportRate);
    if (!match) return null;
    return Number(match[1]) * SUFFIX[match[2] as keyof typeof SUFFIX];
  }

  /**
   * Subscribes to the engine's checkpoints: `onHit` (default: SIGKILL this process) runs at each
   * point in the list. Returns the unsubscribe function.
   */
  arm(onHit: (point: string) => void = sigkill): () => void {
    const listener = (message: unknown) => {
      const { point } = message as Checkpoint;
      if (this.points.has(point)) onHit(point);
    };
    subscribe(CHECKPOINT_CHANNEL, listener);
    return () => unsubscribe(CHECKPOINT_CHANNEL, listener);
  }

  /** Wraps a tool runner so qemu-img convert obeys `export-rate`. */
  wrapRunner(run: ToolRunner): ToolRunner {
    const rate = this.exportRate;
    if (rate === null) return run;
    return (file, args, options) =>
      args[0] === 'convert' && /qemu-img$/.test(file)
        ? run(file, ['convert', '-r', rate, ...args.slice(1)], options)
        : run(file, args, options);
  }
}

function sigkill(point: string): void {
  // Synchronous: the line must reach the log before the process disappears.
  writeSync(2, `failpoint ${point}: SIGKILL\n`);
  process.kill(process.pid, 'SIGKILL');
}
