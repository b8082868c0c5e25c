/**
 * What one virsh command costs through the host's virsh session against a virsh process of its
 * own (docs/benchmarks.md "Snapshot cost"), one run: `virsh version` (connects to libvirtd, no
 * domain) and `domstate` of a running test domain, alternating in rounds so both see the same load.
 *
 *   node --import tsx bench/virsh-session.ts [--rounds 20] [--per-round 10]
 *
 * Needs libvirtd (bash scripts/ensure-host.sh).
 */
import { parseArgs } from 'node:util';
import { runTool } from '../src/host/exec.js';
import { VirshSession } from '../src/host/virsh-session.js';
import {
  Cleanup,
  createQcow2,
  LIBVIRT_URI,
  makeTempDir,
  startTestDomain,
} from '../test/support/libvirt-fixtures.js';
import { load, median, ms, percentile } from './bench-util.js';

const { values } = parseArgs({
  options: { rounds: { type: 'string', default: '20' }, 'per-round': { type: 'string', default: '10' } },
});
const rounds = Number(values.rounds);
const perRound = Number(values['per-round']);

const cleanup = new Cleanup();
try {
  const dir = await makeTempDir(cleanup, 'h16virsh');
  await createQcow2(`${dir}/disk.qcow2`, 64);
  const dom = await startTestDomain(cleanup, {
    label: 'h16virsh',
    disk: { type: 'file', path: `${dir}/disk.qcow2` },
  });
  const session = new VirshSession({ uri: LIBVIRT_URI });
  cleanup.add('session', () => session.close());
  const commands: Array<[string, string[]]> = [
    ['version', ['version']],
    ['domstate', ['domstate', '--reason', '--domain', dom.name]],
  ];
  console.log(`${new Date().toISOString()}; load average at start ${load()}`);
  for (const [name, args] of commands) {
    const viaSession: number[] = [];
    const viaProcess: number[] = [];
    await session.run(args, { timeoutMs: 30_000 }); // the shell is started outside the numbers
    for (let r = 0; r < rounds; r++) {
      for (let i = 0; i < perRound; i++) {
        const t0 = performance.now();
        await session.run(args, { timeoutMs: 30_000 });
        viaSession.push(performance.now() - t0);
      }
      for (let i = 0; i < perRound; i++) {
        const t0 = performance.now();
        await runTool('virsh', ['-c', LIBVIRT_URI, ...args], { timeoutMs: 30_000 });
        viaProcess.push(performance.now() - t0);
      }
    }
    console.log(
      `- ${name}: session p50 ${ms(median(viaSession))} ms, p99 ${ms(percentile(viaSession, 99))} ms; ` +
        `process p50 ${ms(median(viaProcess))} ms, p99 ${ms(percentile(viaProcess, 99))} ms; ` +
        `ratio ${(median(viaProcess) / median(viaSession)).toFixed(1)} (n=${viaSession.length} each)`,
    );
  }
  console.log(`load average at end ${load()}; virsh shells started: ${session.stats.starts}`);
} finally {
  await cleanup.run();
}
