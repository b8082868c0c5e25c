// The power-cut matrix (`npm run test:powercut`): the lab VM loses power (SIGKILL of its QEMU) at
// seeded random moments of snapshot jobs, boots again on the same disks, runs the engine's start-up
// recovery and checks everything (test/lab/powercut/guest.ts). One boot per cut.
//
//   node --import tsx test/lab/powercut/run.ts [--cuts 100] [--seed 14] [--out FILE]
//                                              [--strategies offline,lvm-cow,live-rotate]
//
// Each boot aims at one step of one strategy, both a seeded choice (the strategy among --strategies,
// default all three; the step among its steps, test/support/step-order.ts), and cuts a seeded
// random 0-1.5 s after that step starts: so every step gets its share of cuts, short ones too (a
// schedule over the whole job's time puts most cuts into its longest step). The step a cut hit is
// the last one the guest printed (the aimed one or a later one). live-rotate's volume is held by a
// running VM (a bare QEMU in the lab guest, started on its active layer at each of its boots; the cut
// takes it down with the guest). `--cuts N` counts real cuts (a job that ended before its cut, or
// never reached the aimed step, is a boot, not a cut). Exit code 1 when any check found a problem.
// Results: a summary on stdout and a JSON file (default .lab-cache/powercut-<seed>.json).
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { type LabStrategy, STEP_ORDER } from '../../support/step-order.js';

const here = dirname(fileURLToPath(import.meta.url));
const project = join(here, '..', '..', '..');
const arg = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
};
const cuts = Number(arg('cuts', '100'));
const seed = Number(arg('seed', '14'));
const out = arg('out', join(project, '.lab-cache', `powercut-${seed}.json`));
const STRATEGIES = arg('strategies', Object.keys(STEP_ORDER).join(',')).split(',') as LabStrategy[];
for (const s of STRATEGIES) {
  if (!(s in STEP_ORDER)) throw new Error(`--strategies: unknown strategy ${s}`);
}
/** A cut lands this long at most after its step starts. */
const CUT_WINDOW_MS = 1_500;

/** mulberry32: a small seeded generator, so a schedule can be run again exactly. */
function rng(s: number): () => number {
  let a = s >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The guest program, bundled once on the host with the esbuild that tsx brings: node under emulation
 * starts a bundle in about a second, where tsx compiles every source file again at every boot.
 */
async function bundleGuest(): Promise<string> {
  const esbuild = join(project, 'node_modules', '.bin', 'esbuild');
  if (!existsSync(esbuild)) return '--import tsx test/lab/powercut/guest.ts';
  const bundle = join('.lab-cache', 'powercut-guest.mjs');
  await execa(
    esbuild,
    [
      'test/lab/powercut/guest.ts',
      '--bundle',
      '--platform=node',
      '--format=esm',
      '--target=node20',
      `--outfile=${bundle}`,
      '--log-level=warning',
      // Less to parse at every boot (node under emulation spends seconds loading the bundle).
      '--minify-whitespace',
      '--minify-syntax',
      "--banner:js=import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);",
    ],
    { cwd: project, timeout: 120_000 },
  );
  return bundle;
}
const guestProgram = await bundleGuest();
const logDir = join(project, '.lab-cache', 'powercut-logs');
rmSync(logDir, { recursive: true, force: true });
mkdirSync(logDir, { recursive: true });

interface Boot {
  exitCode: number;
  lines: string[];
  seconds: number;
}

async function boot(
  diskDir: string,
  guestArgs: string,
  cut?: { step: string; afterMs: number },
): Promise<Boot> {
  const started = performance.now();
  const r = await execa(
    'bash',
    [
      join(here, '..', 'run.sh'),
      '--timeout',
      '900',
      '--disks',
      '3',
      '--disk-size',
      '1G',
      '--disk-dir',
      diskDir,
      ...(cut === undefined
        ? []
        : ['--cut-at-step', cut.step, '--cut-after-ms', String(Math.round(cut.afterMs))]),
      '--',
      `node ${guestProgram} ${guestArgs}`,
    ],
    {
      cwd: project,
      reject: false,
      all: true,
      timeout: 20 * 60_000,
      // A loaded host boots slowly; one boot per cut, so a retried boot costs the whole cut.
      env: {
        LAB_BOOT_WATCHDOG: process.env.LAB_BOOT_WATCHDOG ?? '120',
        LAB_BOOT_ATTEMPTS: process.env.LAB_BOOT_ATTEMPTS ?? '5',
      },
    },
  );
  writeFileSync(join(logDir, `${guestArgs.replace(/\W+/g, '-')}-${Date.now()}.log`), String(r.all ?? ''));
  return {
    exitCode: r.exitCode ?? -1,
    lines: String(r.all ?? '').split('\n'),
    seconds: Math.round((performance.now() - started) / 100) / 10,
  };
}

const tagged = (b: Boot, tag: string) =>
  b.lines.filter((l) => l.startsWith(`${tag} `)).map((l) => l.slice(tag.length + 1));
const lastCheck = (b: Boot) => {
  const c = tagged(b, 'POWERCUT-CHECK').at(-1);
  return c === undefined
    ? null
    : (JSON.parse(c) as { problems: string[]; recovery?: unknown; journal?: string });
};

/** Writes the results so far (after every cut: a long run stopped early still leaves its record). */
function writeSummary(finished: boolean) {
  const counted = results.filter((r) => r.powerCut);
  const perStep: Record<string, number> = {};
  for (const r of counted) perStep[`${r.strategy}:${r.step}`] = (perStep[`${r.strategy}:${r.step}`] ?? 0) + 1;
  const summary = {
    seed,
    finished,
    boots: results.length,
    cuts: counted.length,
    uncut: results.length - counted.length,
    perStep,
    problems,
    results,
  };
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, `${JSON.stringify(summary, null, 1)}\n`);
  return { counted, perStep };
}

const diskDir = mkdtempSync(join(tmpdir(), 'clvm-powercut-'));
const random = rng(seed);
const results: Array<Record<string, unknown>> = [];
const problems: string[] = [];
let failed = false;
try {
  const setup = await boot(diskDir, 'setup');
  const setupCheck = lastCheck(setup);
  if (setup.exitCode !== 0 || setupCheck === null || setupCheck.problems.length > 0) {
    throw new Error(`set-up boot failed (exit ${setup.exitCode}):\n${setup.lines.slice(-40).join('\n')}`);
  }
  console.log(`set-up: ${setup.seconds} s`);
  let previous: Record<string, unknown> | null = null;
  // Boots until `cuts` jobs were really cut (a cut timed after the job's end is a boot, not a cut),
  // at most twice as many boots.
  for (let i = 0; results.filter((r) => r.powerCut).length < cuts && i < 2 * cuts; i++) {
    const strategy = STRATEGIES[Math.floor(random() * STRATEGIES.length)]!;
    const order: readonly string[] = STEP_ORDER[strategy];
    const aimedAt = order[Math.floor(random() * order.length)]!;
    const delay = random() * CUT_WINDOW_MS;
    const b = await boot(diskDir, `cycle ${strategy}`, { step: aimedAt, afterMs: delay });
    const check = lastCheck(b);
    // This boot's check is the verdict on the previous cut.
    if (previous !== null) {
      previous.check = check;
      if (check === null || check.problems.length > 0) {
        failed = true;
        problems.push(
          `cut ${previous.cut}: ${check === null ? 'no check (boot failed)' : check.problems.join('; ')}`,
        );
      }
    }
    if (b.exitCode !== 137 && b.exitCode !== 0) {
      failed = true;
      problems.push(`boot ${i}: exit ${b.exitCode}\n${b.lines.slice(-30).join('\n')}`);
      break;
    }
    // Only the new job's steps (recovery of the previous cut prints its own first).
    const armedAt = b.lines.findIndex((l) => l.startsWith('POWERCUT-T armed '));
    const steps = tagged({ ...b, lines: armedAt < 0 ? [] : b.lines.slice(armedAt) }, 'POWERCUT-STEP');
    const result: Record<string, unknown> = {
      cut: i,
      strategy,
      aimedAt,
      delayMs: Math.round(delay),
      powerCut: b.exitCode === 137,
      // After the job's end: between its last step and the model update (still a cut).
      step:
        b.exitCode === 137
          ? tagged(b, 'POWERCUT-UNCUT').length > 0
            ? 'after-job'
            : (steps.at(-1) ?? 'before-first-step')
          : 'uncut',
      seconds: b.seconds,
    };
    results.push(result);
    previous = result;
    console.log(`cut ${i}: ${strategy} ${aimedAt} + ${result.delayMs} ms → ${result.step} (${b.seconds} s)`);
    writeSummary(false);
  }
  const final = await boot(diskDir, 'check');
  const check = lastCheck(final);
  if (previous !== null) previous.check = check;
  if (check === null || check.problems.length > 0) {
    failed = true;
    problems.push(`last cut: ${check === null ? 'no check' : check.problems.join('; ')}`);
  }
} catch (error) {
  failed = true;
  problems.push(String(error));
} finally {
  rmSync(diskDir, { recursive: true, force: true });
}

const { counted, perStep } = writeSummary(true);
console.log(
  `power cuts: ${counted.length} (of ${results.length} boots, seed ${seed}); per step ${JSON.stringify(perStep)}`,
);
console.log(problems.length === 0 ? 'no problems' : `PROBLEMS:\n${problems.join('\n')}`);
process.exit(failed ? 1 : 0);
