// TEST-ONLY fault injection for the crash matrix. Inert unless AGENT_FAILPOINTS is set.
//
//   AGENT_FAILPOINTS="offline:export:before,lvm-cow:repoint:after,offline:export:during,export-rate=4M"
//
// - `<plan>:<step>:before|after`: the agent SIGKILLs itself right before a step starts or right
//   after its end was journaled (plan = offline | lvm-cow | live-rotate | delete | revert).
// - `<plan>:export:during`: SIGKILL at the first export progress update between 0 and 100 %.
// - `lvm-cow:clone:during`, `lvm-cow:repoint:during` (VM paused by us), `live-rotate:commit-frozen:during`
//   (libvirt's block commit started, not waited for), `live-rotate:switch:during`
//   (libvirt's external snapshot returned, the journal not yet updated).
// - `export-rate=<bytes/s>`: qemu-img convert runs with `-r <rate>` (a slow export to cancel or kill).
// SIGKILL (not an exception) so that nothing — no finally, no rollback — runs: exactly what kill -9 does.
import { writeSync } from 'node:fs';
import type { RunOptions, RunResult } from '../host/exec.js';

export type ToolRunner = (file: string, args: readonly string[], options: RunOptions) => Promise<RunResult>;

/** The parsed failpoint list; `none` does nothing. */
export class Failpoints {
  static readonly none = new Failpoints(new Set(), null);

  private constructor(
    private readonly points: ReadonlySet<string>,
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

  /** Read once at start-up from the environment. */
  static fromEnv(env: NodeJS.ProcessEnv = process.env): Failpoints {
    return Failpoints.parse(env.AGENT_FAILPOINTS);
  }

  get active(): boolean {
    return this.points.size > 0 || this.exportRate !== null;
  }

  /** Kills the process with SIGKILL when `point` is set. */
  hit(point: string): void {
    if (!this.points.has(point)) return;
    // Synchronous: the line must reach the log before the process disappears.
    writeSync(2, `failpoint ${point}: SIGKILL\n`);
    process.kill(process.pid, 'SIGKILL');
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
