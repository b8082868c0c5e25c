/**
 * Which `qemu-img convert` options make a snapshot export faster? Runs the QemuImg adapter's
 * convert with each option set on two sources and prints a Markdown table (median of N runs,
 * throughput, ratio to the default options). The time includes fsync of the target, as the
 * store's publish does it.
 *
 *   node --import tsx bench/convert-options.ts [--dir /path/on/target/fs] [--runs 3] [--gib 1] [--no-drop-caches]
 *
 * Sources (QCOW2, 64 KiB clusters):
 * - full: `--gib` GiB virtual, half of it data (half random bytes, half a repeated pattern), exported
 *   without -B (a flattened full snapshot);
 * - delta: a top layer of scattered 64 KiB clusters of random bytes (1/8 of the disk) over a base,
 *   exported with -B.
 * Page cache is dropped before each run (as root) so the source is read cold, like an LV.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { type ConvertOptions, QemuImg } from '../src/host/qemu-img.js';

const MiB = 1024 * 1024;

const { values } = parseArgs({
  options: {
    dir: { type: 'string' },
    runs: { type: 'string', default: '3' },
    gib: { type: 'string', default: '1' },
    'no-drop-caches': { type: 'boolean', default: false },
  },
});
const runs = Number(values.runs);
const virtualBytes = Number(values.gib) * 1024 * MiB;

type Variant = { name: string; options: Partial<ConvertOptions> };
const VARIANTS: Variant[] = [
  { name: 'default (-m 8, cache writeback)', options: {} },
  { name: '-W (out-of-order writes)', options: { tuning: { outOfOrder: true } } },
  { name: '-m 16', options: { tuning: { coroutines: 16 } } },
  { name: '-m 1', options: { tuning: { coroutines: 1 } } },
  { name: '-W -m 16', options: { tuning: { outOfOrder: true, coroutines: 16 } } },
  { name: '-t none (O_DIRECT target)', options: { tuning: { targetCache: 'none' } } },
  { name: '-T none (O_DIRECT source)', options: { tuning: { sourceCache: 'none' } } },
  {
    name: '-t none -T none -W',
    options: { tuning: { targetCache: 'none', sourceCache: 'none', outOfOrder: true } },
  },
  { name: '-c zstd', options: { compress: 'zstd' } },
  { name: '-c zstd -W', options: { compress: 'zstd', tuning: { outOfOrder: true } } },
  { name: '-c zlib', options: { compress: 'zlib' } },
];

async function qemuIo(path: string, command: string): Promise<void> {
  await execa('qemu-io', ['-f', 'qcow2', '-c', command, path], { timeout: 600_000 });
}

/** qemu-io writes at most 2 GiB - 512 bytes per command: pattern writes go in 1 GiB pieces. */
async function writePattern(path: string, pattern: number, offset: number, length: number): Promise<void> {
  const piece = 1024 * MiB;
  for (let done = 0; done < length; done += piece) {
    await qemuIo(path, `write -P ${pattern} ${offset + done} ${Math.min(piece, length - done)}`);
  }
}

async function fsync(path: string): Promise<void> {
  const handle = await open(path, 'r+');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function dropCaches(): Promise<void> {
  if (values['no-drop-caches']) return;
  await execa('sync');
  await writeFile('/proc/sys/vm/drop_caches', '3').catch((error: unknown) => {
    throw new Error('cannot drop the page cache (needs root); run with --no-drop-caches', { cause: error });
  });
}

async function buildSources(dir: string): Promise<{ full: string; delta: { top: string; base: string } }> {
  const half = virtualBytes / 2;
  const full = join(dir, 'full.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', full, String(virtualBytes)]);
  // Random pieces of 256 MiB, each different (no cross-piece dedup or compression).
  const random = join(dir, 'random.bin');
  const piece = 256 * MiB;
  for (let off = 0; off < half / 2; off += piece) {
    await writeFile(random, randomBytes(piece));
    await qemuIo(full, `write -s ${random} ${off} ${Math.min(piece, half / 2 - off)}`);
  }
  await writePattern(full, 0x5a, half / 2, half / 2);
  await rm(random);

  const base = join(dir, 'base.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(virtualBytes)]);
  await writePattern(base, 0x11, 0, half);
  const top = join(dir, 'top.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
  // One 64 KiB cluster of random bytes in every 512 KiB: 1/8 of the disk, scattered, incompressible.
  const cluster = join(dir, 'cluster.bin');
  await writeFile(cluster, randomBytes(65536));
  const commands: string[] = [];
  for (let off = 0; off < virtualBytes; off += 512 * 1024)
    commands.push('-c', `write -s ${cluster} ${off} 65536`);
  for (let i = 0; i < commands.length; i += 400) {
    await execa('qemu-io', ['-f', 'qcow2', ...commands.slice(i, i + 400), top], { timeout: 600_000 });
  }
  return { full, delta: { top, base } };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? Number.NaN;
}

async function main(): Promise<void> {
  const work = await mkdtemp(join(values.dir ?? tmpdir(), 'bench-convert-'));
  const qemuImg = new QemuImg({ timeoutMs: 60_000, exportTimeoutMs: 3_600_000 });
  try {
    const fsType = String((await execa('stat', ['-f', '-c', '%T', work])).stdout).trim();
    const cpus = String((await execa('nproc')).stdout).trim();
    console.log(
      `# qemu-img ${await qemuImg.version()}, ${cpus} CPUs, target fs ${fsType}, ${values.gib} GiB virtual, median of ${runs}`,
    );
    const sources = await buildSources(work);
    const scenarios = [
      {
        name: 'full',
        source: sources.full,
        backing: undefined,
        dataBytes: await qemuImg.allocatedBytes(sources.full),
      },
      {
        name: 'delta (-B)',
        source: sources.delta.top,
        backing: { file: sources.delta.base, format: 'qcow2' as const },
        dataBytes: await qemuImg.allocatedBytes(sources.delta.top, { topOnly: true }),
      },
    ];
    for (const scenario of scenarios) {
      console.log(`\n### ${scenario.name}: ${Math.round(scenario.dataBytes / MiB)} MiB of data to copy\n`);
      console.log('| options | median s | MiB/s | vs default | target MiB |');
      console.log('|---|---:|---:|---:|---:|');
      let baseline = 0;
      for (const variant of VARIANTS) {
        const times: number[] = [];
        let size = 0;
        for (let run = 0; run < runs; run++) {
          const target = join(work, 'target.qcow2');
          await rm(target, { force: true });
          await dropCaches();
          const started = performance.now();
          await qemuImg.convert({
            source: scenario.source,
            target,
            backing: scenario.backing,
            ...variant.options,
          });
          await fsync(target);
          times.push((performance.now() - started) / 1000);
          size = (await stat(target)).blocks * 512;
        }
        const seconds = median(times);
        if (baseline === 0) baseline = seconds;
        const throughput = scenario.dataBytes / MiB / seconds;
        console.log(
          `| ${variant.name} | ${seconds.toFixed(2)} | ${throughput.toFixed(0)} | ${(baseline / seconds).toFixed(2)}× | ${Math.round(size / MiB)} |`,
        );
      }
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

await main();
