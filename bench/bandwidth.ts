/**
 * Export bandwidth limits: does an export run at the limit, do concurrent exports share it, and does
 * the progress ETA hold? Runs the real engine (createSnapshot, offline strategy, file volumes) with
 * the host's ExportBandwidth at several limits, with 1 and with 3 concurrent exports (all at the
 * host rate: they take turns), plus one export with a per-command limit of half the host's.
 *
 *   node --import tsx bench/bandwidth.ts [--limits 8,16,32] [--seconds 10] [--quantum-ms 5000]
 *
 * Rate = bytes qemu-img copied / time from the first convert start to the last convert end.
 * ETA check: at the progress update nearest 50 %, (bytesTotal - bytesDone) / bytesPerSecond
 * against the time the export really took from there.
 */
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { runTool } from '../src/host/exec.js';
import { QemuImg } from '../src/host/qemu-img.js';
import type { ProgressUpdate } from '../src/jobs/types.js';
import { ExportBandwidth } from '../src/snapshot/export-bandwidth.js';
import { createSnapshot } from '../src/snapshot/index.js';
import {
  FileStepJournal,
  fileSnapshotCommand,
  jobContext,
  makeHarness,
} from '../test/support/snapshot-harness.js';

const MiB = 1024 * 1024;
const { values } = parseArgs({
  options: {
    limits: { type: 'string', default: '8,16,32' },
    seconds: { type: 'string', default: '10' },
    'quantum-ms': { type: 'string' },
  },
});
const limitsMiB = values.limits.split(',').map(Number);
const seconds = Number(values.seconds);
const quantumMs = values['quantum-ms'] === undefined ? undefined : Number(values['quantum-ms']);

interface Span {
  start: number;
  end: number;
}

interface ExportRun {
  bytes: number;
  span: Span;
  etaRatio: number | null;
}

async function main(): Promise<void> {
  const h = await makeHarness('bw');
  const spans: Span[] = [];
  // The engine's qemu-img, with convert calls timed.
  h.deps.qemuImg = new QemuImg({
    timeoutMs: 60_000,
    exportTimeoutMs: 600_000,
    run: async (file, args, options) => {
      const start = performance.now();
      try {
        return await runTool(file, args, options);
      } finally {
        if (args[0] === 'convert') spans.push({ start, end: performance.now() });
      }
    },
  });
  let volumeCount = 0;

  async function volumeWith(dataBytes: number): Promise<string> {
    const file = `vol-${++volumeCount}.qcow2`;
    const path = join(h.pool, file);
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', path, String(Math.max(dataBytes * 2, 64 * MiB))]);
    for (let offset = 0; offset < dataBytes; offset += 256 * MiB) {
      const length = Math.min(256 * MiB, dataBytes - offset);
      await execa('qemu-io', [
        '-f',
        'qcow2',
        '-c',
        `write -P ${(volumeCount % 200) + 1} ${offset} ${length}`,
        path,
      ]);
    }
    return file;
  }

  /** One snapshot.create; returns its export's bytes, time span and ETA ratio at ~50 %. */
  async function exportOnce(file: string, bandwidth: number | undefined): Promise<ExportRun> {
    const updates: Array<{ at: number; u: ProgressUpdate }> = [];
    const cmd = fileSnapshotCommand(h, {
      file,
      vm: null,
      parents: [],
      snapshot: `${file}.snap-${Date.now()}`,
      options: {
        strategy: 'offline',
        verify: 'none',
        ...(bandwidth ? { bandwidthBytesPerSecond: bandwidth } : {}),
      },
    });
    const ctx = jobContext(cmd, new FileStepJournal(join(h.base, `${cmd.id}.json`)), {
      onProgress: (u) => {
        if (u.step === 'export') updates.push({ at: performance.now(), u });
      },
    });
    await createSnapshot(ctx, h.deps);
    const exportUpdates = updates.filter((x) => x.u.bytesTotal !== undefined && x.u.bytesTotal > 0);
    const last = exportUpdates.at(-1);
    const bytes = last?.u.bytesTotal ?? 0;
    const end = last?.at ?? performance.now();
    const mid = exportUpdates
      .filter((x) => x.u.bytesPerSecond !== undefined)
      .reduce<(typeof exportUpdates)[number] | undefined>(
        (best, x) =>
          best === undefined || Math.abs((x.u.percent ?? 0) - 50) < Math.abs((best.u.percent ?? 0) - 50)
            ? x
            : best,
        undefined,
      );
    let etaRatio: number | null = null;
    if (mid?.u.bytesPerSecond) {
      const etaS = ((mid.u.bytesTotal ?? 0) - (mid.u.bytesDone ?? 0)) / mid.u.bytesPerSecond;
      const actualS = (end - mid.at) / 1000;
      etaRatio = actualS > 0 ? etaS / actualS : null;
    }
    return { bytes, span: { start: exportUpdates[0]?.at ?? end, end }, etaRatio };
  }

  console.log(
    `# bench/bandwidth.ts — ${new Date().toISOString()}, load ${loadavg()[0]!.toFixed(1)}, ` +
      `${seconds} s of data per scenario, quantum ${quantumMs ?? 'default'} ms`,
  );
  console.log('');
  console.log(
    '| host limit MiB/s | scenario | exports | data MiB | wall s | achieved MiB/s | ÷ expected | per export MiB/s | ETA ÷ actual at ~50 % |',
  );
  console.log('| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |');
  try {
    for (const limitMiB of limitsMiB) {
      const limit = limitMiB * MiB;
      h.deps.bandwidth = new ExportBandwidth({ hostLimit: limit, ...(quantumMs ? { quantumMs } : {}) });
      const scenarios: Array<{ name: string; count: number; perCommand?: number; expected: number }> = [
        { name: 'one export', count: 1, expected: limit },
        { name: 'three at once', count: 3, expected: limit },
        { name: 'one, command limit ½', count: 1, perCommand: Math.round(limit / 2), expected: limit / 2 },
      ];
      for (const s of scenarios) {
        const total = Math.round((s.expected * seconds) / MiB) * MiB;
        const each = Math.round(total / s.count / MiB) * MiB;
        const files = [];
        for (let i = 0; i < s.count; i++) files.push(await volumeWith(each));
        // The volumes' pages on disk first: write-back must not compete with the measured exports.
        await execa('sync');
        spans.length = 0;
        const runs = await Promise.all(files.map((f) => exportOnce(f, s.perCommand)));
        const start = Math.min(...spans.map((x) => x.start));
        const end = Math.max(...spans.map((x) => x.end));
        const bytes = runs.reduce((sum, r) => sum + r.bytes, 0);
        const wall = (end - start) / 1000;
        const achieved = bytes / wall;
        const perExport = runs
          .map((r) => (r.bytes / ((r.span.end - r.span.start) / 1000) / MiB).toFixed(1))
          .join(', ');
        const eta = runs.map((r) => (r.etaRatio === null ? '-' : r.etaRatio.toFixed(2))).join(', ');
        console.log(
          `| ${limitMiB} | ${s.name} | ${s.count} | ${(bytes / MiB).toFixed(0)} | ${wall.toFixed(2)} | ` +
            `${(achieved / MiB).toFixed(2)} | **${(achieved / s.expected).toFixed(3)}** | ${perExport} | ${eta} |`,
        );
      }
    }
  } finally {
    await h.cleanup();
  }
}

await main();
