/**
 * lvm-cow's clone pause on a real LVM pool (docs/benchmarks.md, issue 16). Runs inside the lab guest
 * (root, device-mapper, real LVM):
 *
 *   nice -n 10 bash test/lab/run.sh -- node --import tsx bench/lab-lvm-cow-pause.ts [--rounds 12]
 *
 * A bare QEMU (`-machine none`, TCG) holds a QCOW2 on an LV of a scratch VG through -blockdev, with
 * a QMP socket, as libvirt's QEMU does. Per round, interleaved:
 * - pause as the strategy does it: LvmVolumeBackend.prepareClone(name) (its lookups, before the
 *   pause) → QMP `stop` → the prepared clone → `cont` (the clone step's body; the project's Lvm
 *   adapter, so every lvm2 process started inside the pause is counted);
 * - the same cowClone without a pause;
 * - the floor: `stop` → the one `lvcreate -s` process (the adapter's own argv) → `cont`;
 * - bare `stop` → `cont`, nothing inside.
 * Pauses are QEMU's own STOP → RESUME event timestamps; each lvm2 process is timed around the
 * adapter's runner. The snapshot LV is removed after each round, outside any pause.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { runTool } from '../src/host/exec.js';
import { FilePool } from '../src/host/file-pool.js';
import { Lvm, type ToolRunner } from '../src/host/lvm.js';
import { QemuImg } from '../src/host/qemu-img.js';
import { LvmVolumeBackend, type VolumeBackend } from '../src/snapshot/volumes.js';
import { QmpClient, scratchVg, sh } from '../test/support/lab/lab.js';
import { median, ms, percentile } from './bench-util.js';

const MiB = 1024 * 1024;
const { values } = parseArgs({
  options: { rounds: { type: 'string', default: '12' }, 'size-mib': { type: 'string', default: '256' } },
});
const rounds = Number(values.rounds);
const sizeMiB = Number(values['size-mib']);

/** Every lvm2 process the adapter starts: tool, argv, wall time around the runner. */
interface ToolCall {
  tool: string;
  args: readonly string[];
  ms: number;
}
const calls: ToolCall[] = [];
const timedRun: ToolRunner = async (file, args, options) => {
  const started = performance.now();
  try {
    return await runTool(file, args, options);
  } finally {
    calls.push({ tool: basename(file), args, ms: performance.now() - started });
  }
};

const lvm = new Lvm({ timeoutMs: 120_000, run: timedRun });
const qemuImg = new QemuImg({ timeoutMs: 120_000, exportTimeoutMs: 120_000 });
const work = mkdtempSync(join(tmpdir(), 'h16l-'));
const scratch = await scratchVg('h16lvg');
const vg = scratch.vg;
const filePool = new FilePool({ roots: [work], qemuImg, timeoutMs: 60_000 });
// Typed as the strategy sees it: prepareClone(name), then the prepared clone inside the pause.
const backend: VolumeBackend = new LvmVolumeBackend({ lvm, qemuImg, filePool }, vg, 'vm-disk');

let qemu: ReturnType<typeof execa> | undefined;
let qmp: QmpClient | undefined;
try {
  const { fullyAllocatedBytes } = await qemuImg.measure({ sizeBytes: sizeMiB * MiB });
  const lv = await lvm.createVolume({ vg, name: 'vm-disk', sizeBytes: fullyAllocatedBytes });
  await qemuImg.create({ path: lv.path, sizeBytes: sizeMiB * MiB });
  await sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 16M', lv.path]);
  const socket = join(work, 'qmp.sock');
  const blockdev = {
    driver: 'qcow2',
    'node-name': 'fmt',
    file: { driver: 'host_device', filename: lv.path, 'node-name': 'file', cache: { direct: true } },
  };
  qemu = execa(
    'qemu-system-x86_64',
    ['-machine', 'none', '-nodefaults', '-display', 'none', '-accel', 'tcg'].concat(
      ['-qmp', `unix:${socket},server=on,wait=off`],
      ['-blockdev', JSON.stringify(blockdev)],
    ),
    { reject: false, timeout: 30 * 60_000 },
  );
  const monitor = await QmpClient.connect(socket);
  qmp = monitor;

  /** STOP → RESUME by QEMU's event timestamps around `inside`, plus `inside`'s own wall time. */
  const paused = async (inside: () => Promise<void>): Promise<{ pauseMs: number; insideMs: number }> => {
    const before = monitor.events.length;
    await monitor.execute('stop');
    const started = performance.now();
    try {
      await inside();
    } finally {
      await monitor.execute('cont');
    }
    const insideMs = performance.now() - started;
    const ev = monitor.events.slice(before);
    const stop = ev.find((e) => e.event === 'STOP');
    const resume = ev.find((e) => e.event === 'RESUME');
    if (stop === undefined || resume === undefined) throw new Error('no STOP/RESUME event');
    return { pauseMs: resume.atMs - stop.atMs, insideMs };
  };
  /** The calls made during `fn` (the lvm2 processes and their times). */
  const recorded = async <T>(fn: () => Promise<T>): Promise<{ value: T; made: ToolCall[] }> => {
    const from = calls.length;
    const value = await fn();
    return { value, made: calls.slice(from) };
  };
  const lvcreateOf = (made: ToolCall[]): ToolCall => {
    const call = made.find((c) => c.tool === 'lvcreate');
    if (call === undefined) throw new Error('cowClone started no lvcreate');
    return call;
  };

  const r = {
    strategyPause: [] as number[],
    strategyInside: [] as number[],
    strategyLvcreate: [] as number[],
    unpausedClone: [] as number[],
    unpausedLvcreate: [] as number[],
    floorPause: [] as number[],
    floorLvcreate: [] as number[],
    barePause: [] as number[],
  };
  let processesInPause = '';
  const inPauseByTool = new Map<string, number[]>();
  for (let i = 1; i <= rounds; i++) {
    const cow = `vm-disk-cow-${i}`;
    // 1. The clone step's pause as lvm-cow runs it.
    const clone = await backend.prepareClone(`${cow}a`);
    const strategy = await recorded(() => paused(clone));
    r.strategyPause.push(strategy.value.pauseMs);
    r.strategyInside.push(strategy.value.insideMs);
    const lvcreate = lvcreateOf(strategy.made);
    r.strategyLvcreate.push(lvcreate.ms);
    processesInPause = strategy.made.map((c) => c.tool).join(' → ');
    for (const c of strategy.made) inPauseByTool.set(c.tool, [...(inPauseByTool.get(c.tool) ?? []), c.ms]);
    await lvm.removeVolume(vg, `${cow}a`);
    // 2. The same clone, VM running.
    const unpaused = await recorded(async () => {
      const started = performance.now();
      await backend.cowClone(`${cow}b`);
      return performance.now() - started;
    });
    r.unpausedClone.push(unpaused.value);
    r.unpausedLvcreate.push(lvcreateOf(unpaused.made).ms);
    await lvm.removeVolume(vg, `${cow}b`);
    // 3. The floor: the one lvcreate -s process (the adapter's argv) and nothing else in the pause.
    const args = lvcreate.args.map((a) => (a === `${cow}a` ? `${cow}c` : a));
    const floor = await recorded(() =>
      paused(async () => {
        await timedRun('lvcreate', args, { timeoutMs: 120_000, env: { LVM_SUPPRESS_FD_WARNINGS: '1' } });
      }),
    );
    r.floorPause.push(floor.value.pauseMs);
    r.floorLvcreate.push(lvcreateOf(floor.made).ms);
    await lvm.removeVolume(vg, `${cow}c`);
    // 4. Nothing inside.
    r.barePause.push((await paused(async () => {})).pauseMs);
    process.stderr.write(
      `round ${i}: strategy pause ${ms(strategy.value.pauseMs)} ms, lvcreate ${ms(lvcreate.ms)} ms, floor ${ms(floor.value.pauseMs)} ms, bare ${ms(r.barePause.at(-1) ?? Number.NaN)} ms\n`,
    );
  }

  const stats = (v: number[]) => `p50 ${ms(median(v))} ms, p99 ${ms(percentile(v, 99))} ms`;
  const bare50 = median(r.barePause);
  console.log(`lvm-cow clone pause on LVM, lab guest (TCG), ${rounds} rounds, ${sizeMiB} MiB QCOW2 on an LV`);
  console.log(`- processes inside the strategy's pause: ${processesInPause}`);
  console.log(`- strategy pause, QEMU STOP → RESUME: ${stats(r.strategyPause)}`);
  for (const [tool, times] of inPauseByTool) {
    const perRound = times.length / rounds;
    console.log(`  ${tool} (${perRound} per pause), each: ${stats(times)}`);
  }
  console.log(`  cowClone inside it (Node's clock): ${stats(r.strategyInside)}`);
  console.log(`  its lvcreate -s process alone: ${stats(r.strategyLvcreate)}`);
  console.log(
    `  ratio pause / lvcreate -s (p50): ${(median(r.strategyPause) / median(r.strategyLvcreate)).toFixed(2)}`,
  );
  console.log(
    `- cowClone without a pause: ${stats(r.unpausedClone)}; its lvcreate -s: ${stats(r.unpausedLvcreate)}`,
  );
  console.log(`- floor, stop → lvcreate -s only → cont, STOP → RESUME: ${stats(r.floorPause)}`);
  console.log(`  its lvcreate -s: ${stats(r.floorLvcreate)}`);
  console.log(
    `  ratio pause / lvcreate -s (p50): ${(median(r.floorPause) / median(r.floorLvcreate)).toFixed(2)}`,
  );
  console.log(`- bare stop → cont, STOP → RESUME: ${stats(r.barePause)}`);
  console.log(
    `- ratios to bare stop + cont (p50): strategy ${(median(r.strategyPause) / bare50).toFixed(0)}×, floor ${(median(r.floorPause) / bare50).toFixed(0)}×`,
  );
} finally {
  if (qmp !== undefined) {
    await qmp.execute('quit').catch(() => qemu?.kill('SIGKILL'));
    qmp.close();
  }
  await qemu;
  rmSync(work, { recursive: true, force: true });
  await scratch.cleanup();
}
