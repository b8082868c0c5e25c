/**
 * live-rotate vs lvm-cow (docs/benchmarks.md "live-rotate vs lvm-cow"), issue 5's benchmark, one run:
 *
 * 1. Growth: two running type='qemu' VMs on one reflink file pool (loop-mounted XFS) get the same
 *    guest writes (fresh data at a new offset each round, 1 MiB = 16 whole 64 KiB clusters per HMP
 *    qemu-io call); after each round the real engine (createSnapshot) snapshots one with live-rotate
 *    and the other with lvm-cow, interleaved so both see the same machine load. Snapshot size
 *    (allocated bytes of the store file) ÷ guest bytes written since the previous snapshot.
 * 2. Guest I/O stall per snapshot, from QEMU's side: QEMU's trace events (log backend, µs wall-clock
 *    timestamps in the domain log, turned on with HMP trace-event around each snapshot) give the
 *    main-loop time of the switch (live-rotate: libvirt's `transaction` with a blockdev-snapshot
 *    action, request dequeued → reply) and the QMP STOP → RESUME event timestamps (lvm-cow). Next to
 *    them the engine's own numbers (switchMs fact: the virsh snapshot-create-as call through the
 *    virsh session; vmPauseMs). Then the pure QEMU cost on a bare QEMU (pc machine, TCG, one
 *    virtio-blk disk) over a direct QMP unix socket, with the commands libvirt sends for the switch
 *    (blockdev-add of the overlay's file and qcow2 nodes, then `transaction` [blockdev-snapshot]),
 *    and stop + cont; no libvirt and no process in the number.
 * 3. Export throughput: the engine's export step (exportStep → QemuImg.convert, as the engine runs
 *    it) of a frozen layer vs `cp` of a raw file holding the same bytes, pool → store, page cache
 *    dropped before each, median of runs.
 *
 *   node --import tsx bench/live-rotate.ts [--size-mib 1024] [--write-mib 16] [--snapshots 20]
 *     [--stall-samples 30] [--export-mib 16,256] [--export-runs 5] [--skip growth,stall,export]
 *
 * Needs root, libvirtd (bash scripts/ensure-host.sh), xfsprogs, loop devices; QEMU with the log
 * trace backend (Debian's has it).
 */
import { readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createConnection, type Socket } from 'node:net';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { execa, type ResultPromise } from 'execa';
import { fsyncPath } from '../src/fsync.js';
import { EXPORT_TUNING } from '../src/host/qemu-img.js';
import type { SnapshotCreateResult } from '../src/protocol/index.js';
import { exportStep } from '../src/snapshot/common-steps.js';
import { createSnapshot } from '../src/snapshot/index.js';
import {
  Cleanup,
  createQcow2,
  guestWrite,
  imagesIdentical,
  startTestDomain,
  type TestDomain,
} from '../test/support/libvirt-fixtures.js';
import {
  command,
  FileStepJournal,
  type Harness,
  jobContext,
  makeHarness,
} from '../test/support/snapshot-harness.js';
import { load, log, median, ms, percentile } from './bench-util.js';
import { pauses, traced } from './qemu-trace.js';

const MiB = 1024 * 1024;
const { values } = parseArgs({
  options: {
    'size-mib': { type: 'string', default: '1024' },
    'write-mib': { type: 'string', default: '16' },
    snapshots: { type: 'string', default: '20' },
    'stall-samples': { type: 'string', default: '30' },
    'export-mib': { type: 'string', default: '16,256' },
    'export-runs': { type: 'string', default: '5' },
    skip: { type: 'string', default: '' },
  },
});
const sizeMiB = Number(values['size-mib']);
const writeMiB = Number(values['write-mib']);
const count = Number(values.snapshots);
const stallSamples = Number(values['stall-samples']);
const exportSizes = values['export-mib'].split(',').map(Number);
const exportRuns = Number(values['export-runs']);
const skip = new Set(values.skip.split(',').filter((s) => s !== ''));
if (writeMiB * count > sizeMiB) throw new Error('--write-mib × --snapshots must fit in --size-mib');

type Strategy = 'live-rotate' | 'lvm-cow';

const stats = (v: number[]): string =>
  `n=${v.length} p50 ${ms(percentile(v, 50))} ms, p99 ${ms(percentile(v, 99))} ms, max ${ms(Math.max(...v))} ms`;

// ---------------------------------------------------------------------------------------------
// 1 + 2: the engine on two VMs with the same writes.

interface SnapRow {
  n: number;
  sizeBytes: number;
  kind: string;
  strategy: string;
  /** live-rotate: the engine's switchMs fact (virsh snapshot-create-as wall time, virsh session). */
  switchMs: number | null;
  /** lvm-cow: the engine's vmPauseMs (suspend call → resume return, both pauses). */
  vmPauseMs: number;
  /** QEMU: main-loop time of each switch command (libvirt's transaction; request dequeued → reply). */
  qemuSnapshotMs: number[];
  /** QEMU: main-loop time of every QMP command the engine sent (all of them hold the BQL). */
  qemuAllCommandsMs: number;
  /** QMP commands the engine sent (each one a virsh process). */
  qmpCommandCount: number;
  /** QEMU: the engine's longest single QMP command, ms and name. */
  qemuLongestCommand: { ms: number; execute: string };
  /** QEMU: STOP → RESUME intervals. */
  qemuPausesMs: number[];
  exportMs: number;
  totalMs: number;
}

interface Vm {
  strategy: Strategy;
  dom: TestDomain;
  file: string;
  storeDir: string;
  parents: string[];
  rows: SnapRow[];
}

async function snapshot(h: Harness, vm: Vm, n: number): Promise<SnapRow> {
  const cmd = command(
    'snapshot.create',
    {
      volume: { kind: 'file', pool: h.pool, file: vm.file },
      vm: vm.dom.name,
      store: { root: h.storeRoot, dir: vm.storeDir },
      parents: vm.parents,
      snapshot: `snap-${n}`,
      options: { strategy: vm.strategy, verify: 'none', maxChainLength: 1000 },
    },
    `bench-${vm.strategy}-${n}-${process.pid}`,
  );
  const journal = new FileStepJournal(join(h.base, `${cmd.id}.json`));
  const started = performance.now();
  const { value: result, trace } = await traced(
    vm.dom,
    (): Promise<SnapshotCreateResult> => createSnapshot(jobContext(cmd, journal), h.deps),
  );
  const totalMs = performance.now() - started;
  if (result.strategy.name !== vm.strategy)
    throw new Error(`ran ${result.strategy.name}, not ${vm.strategy}`);
  vm.parents.push(`snap-${n}`);
  const facts = (journal.read<{ engine?: { facts?: { switchMs?: number } } }>().engine?.facts ?? {}) as {
    switchMs?: number;
  };
  // The trace-event HMP commands themselves are not the engine's.
  const engineCommands = trace.commands.filter((c) => !/^(hmp trace-event|\?)/.test(c.execute));
  return {
    n,
    sizeBytes: (await stat(result.snapshot.path)).blocks * 512,
    kind: result.snapshot.kind,
    strategy: result.strategy.name,
    switchMs: facts.switchMs ?? null,
    vmPauseMs: result.vmPauseMs,
    qemuSnapshotMs: trace.commands
      .filter((c) => c.execute === 'transaction' || c.execute === 'blockdev-snapshot')
      .map((c) => c.endMs - c.startMs),
    qemuAllCommandsMs: engineCommands.reduce((a, c) => a + (c.endMs - c.startMs), 0),
    qmpCommandCount: engineCommands.length,
    qemuLongestCommand: engineCommands.reduce(
      (a, c) => (c.endMs - c.startMs > a.ms ? { ms: c.endMs - c.startMs, execute: c.execute } : a),
      { ms: 0, execute: '-' },
    ),
    qemuPausesMs: pauses(trace),
    exportMs: result.steps.find((s) => s.name === 'export')?.durationMs ?? 0,
    totalMs,
  };
}

async function growthAndStall(): Promise<{ lr: SnapRow[]; cow: SnapRow[] }> {
  const cleanup = new Cleanup();
  const h = await makeHarness('benchlr', { reflink: true, xfsBytes: Math.max(512, 4 * sizeMiB) * MiB });
  cleanup.add('harness', () => h.cleanup());
  try {
    const vms: Vm[] = [];
    for (const strategy of ['live-rotate', 'lvm-cow'] as const) {
      const file = `vol-${strategy}.qcow2`;
      await createQcow2(join(h.pool, file), sizeMiB);
      const dom = await startTestDomain(cleanup, {
        label: `bench${strategy.replace('-', '')}`,
        disk: { type: 'file', path: join(h.pool, file) },
      });
      vms.push({ strategy, dom, file, storeDir: strategy, parents: [], rows: [] });
    }
    for (let n = 1; n <= count; n++) {
      // Both VMs get the same fresh data at a new offset; the order alternates between rounds.
      const order = n % 2 === 1 ? vms : [...vms].reverse();
      for (const vm of order) {
        for (let m = 0; m < writeMiB; m++)
          await guestWrite(vm.dom, 1 + (n % 250), ((n - 1) * writeMiB + m) * MiB, MiB);
      }
      for (const vm of order) {
        const row = await snapshot(h, vm, n);
        vm.rows.push(row);
        log(
          `${vm.strategy} snap-${n} (${row.kind}): ${(row.sizeBytes / MiB).toFixed(2)} MiB, ` +
            `QEMU switch ${row.qemuSnapshotMs.map(ms).join('/') || '-'} ms, ` +
            `QEMU paused ${row.qemuPausesMs.map(ms).join('+') || '0'} ms, switchMs ${row.switchMs ?? '-'}, ` +
            `vmPauseMs ${row.vmPauseMs}, ${row.qmpCommandCount} QMP commands holding QEMU's main loop ` +
            `${ms(row.qemuAllCommandsMs)} ms in all, longest ${row.qemuLongestCommand.execute} ` +
            `${ms(row.qemuLongestCommand.ms)} ms, total ${ms(row.totalMs)} ms, load ${load()}`,
        );
      }
    }
    // Oracle: both VMs took the same writes, so their live disks and last snapshots must read the same.
    const [lr, cow] = vms as [Vm, Vm];
    const sameActive = await imagesIdentical(join(h.pool, lr.file), join(h.pool, cow.file));
    const last = `snap-${count}`;
    const sameLast = await imagesIdentical(
      join(h.storeRoot, lr.storeDir, last),
      join(h.storeRoot, cow.storeDir, last),
    );
    log(`qemu-img compare live-rotate vs lvm-cow: active ${sameActive}, ${last} ${sameLast}`);
    if (!sameActive || !sameLast) throw new Error('live-rotate and lvm-cow chains differ');
    return { lr: lr.rows, cow: cow.rows };
  } finally {
    await cleanup.run();
  }
}

// ---------------------------------------------------------------------------------------------
// 2b: bare QEMU, direct QMP unix socket.

class Qmp {
  private buffer = '';
  private nextId = 0;
  private readonly pending = new Map<string, (reply: Record<string, unknown>) => void>();
  readonly events: Array<{ event: string; atMs: number }> = [];
  private greeting: Promise<void>;

  private constructor(private readonly socket: Socket) {
    let greeted: () => void = () => {};
    this.greeting = new Promise((r) => {
      greeted = r;
    });
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      for (let i = this.buffer.indexOf('\n'); i >= 0; i = this.buffer.indexOf('\n')) {
        const line = this.buffer.slice(0, i).trim();
        this.buffer = this.buffer.slice(i + 1);
        if (line === '') continue;
        const msg = JSON.parse(line) as Record<string, unknown>;
        if ('QMP' in msg) greeted();
        else if (typeof msg.event === 'string') {
          const ts = msg.timestamp as { seconds: number; microseconds: number };
          this.events.push({ event: msg.event, atMs: ts.seconds * 1000 + ts.microseconds / 1000 });
        } else if (typeof msg.id === 'string') {
          this.pending.get(msg.id)?.(msg);
          this.pending.delete(msg.id);
        }
      }
    });
  }

  static async connect(path: string): Promise<Qmp> {
    for (let i = 0; i < 100; i++) {
      try {
        const socket = await new Promise<Socket>((resolve, reject) => {
          const s = createConnection(path, () => resolve(s));
          s.once('error', reject);
        });
        const qmp = new Qmp(socket);
        await qmp.greeting;
        await qmp.cmd('qmp_capabilities');
        return qmp;
      } catch {
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    throw new Error(`no QMP socket at ${path}`);
  }

  /** One command; resolves with its `return` and the round trip in ms (Node's clock). */
  async cmd(execute: string, args?: object): Promise<{ ret: unknown; rttMs: number; id: string }> {
    const id = `b${this.nextId++}`;
    const started = performance.now();
    const reply = await new Promise<Record<string, unknown>>((resolve) => {
      this.pending.set(id, resolve);
      this.socket.write(`${JSON.stringify({ execute, ...(args ? { arguments: args } : {}), id })}\n`);
    });
    const rttMs = performance.now() - started;
    if ('error' in reply) throw new Error(`QMP ${execute}: ${JSON.stringify(reply.error)}`);
    return { ret: reply.return, rttMs, id };
  }

  close(): void {
    this.socket.destroy();
  }
}

interface BareResult {
  addMs: number[];
  snapshotMs: number[];
  snapshotQemuMs: number[];
  addPlusSnapshotMs: number[];
  /** QEMU main-loop time (trace) of blockdev-snapshot after the round's writes / with a write in flight. */
  afterWritesSnapshotMs: number[];
  inflightSnapshotMs: number[];
  stopContRttMs: number[];
  stopContQemuMs: number[];
  inflightStopContQemuMs: number[];
}

async function bareQemu(dir: string): Promise<BareResult> {
  const sock = join(dir, 'qmp.sock');
  const traceFile = join(dir, 'trace.log');
  const base = join(dir, 'base.qcow2');
  await createQcow2(base, 2048); // rotations write below 1 GiB, the stop/cont series above
  const qemu: ResultPromise = execa(
    'qemu-system-x86_64',
    [
      ...['-machine', 'pc,accel=tcg', '-m', '64', '-nodefaults', '-no-user-config', '-display', 'none'],
      ...['-msg', 'timestamp=on', '-D', traceFile],
      ...['-trace', 'monitor_qmp_cmd_in_band', '-trace', 'monitor_qmp_respond'],
      ...['-blockdev', JSON.stringify({ driver: 'file', filename: base, 'node-name': 'base-file' })],
      ...['-blockdev', JSON.stringify({ driver: 'qcow2', 'node-name': 'ov0', file: 'base-file' })],
      ...['-device', 'virtio-blk-pci,drive=ov0,id=disk0'],
      ...['-qmp', `unix:${sock},server=on,wait=off`],
    ],
    { reject: false },
  );
  let qmp: Qmp | null = null;
  try {
    qmp = await Qmp.connect(sock);
    const hmpCmd = (line: string) => qmp!.cmd('human-monitor-command', { 'command-line': line });
    await hmpCmd('qemu-io -d disk0/virtio-backend "write -q -P 0x11 0 16M"');
    await hmpCmd('qemu-io -d disk0/virtio-backend "flush"');
    const result: BareResult = {
      addMs: [],
      snapshotMs: [],
      snapshotQemuMs: [],
      addPlusSnapshotMs: [],
      afterWritesSnapshotMs: [],
      inflightSnapshotMs: [],
      stopContRttMs: [],
      stopContQemuMs: [],
      inflightStopContQemuMs: [],
    };
    const snapshotIds = { idle: [] as string[], written: [] as string[], inflight: [] as string[] };
    let top = 'ov0';
    let topFile = base;
    const rotate = async (i: number, load: 'idle' | 'written' | 'inflight'): Promise<void> => {
      const file = join(dir, `ov${i}.qcow2`);
      // As the engine does: the overlay exists before the switch (qemu-img, not timed).
      await createQcow2(file, 2048, { backing: topFile, unsafe: true });
      // As libvirt does for snapshot-create-as --reuse-external: the overlay's file node, its
      // qcow2 node with no backing, then the switch as a one-action transaction.
      const addFile = await qmp!.cmd('blockdev-add', {
        driver: 'file',
        'node-name': `ov${i}-file`,
        filename: file,
      });
      const addFormat = await qmp!.cmd('blockdev-add', {
        driver: 'qcow2',
        'node-name': `ov${i}`,
        file: `ov${i}-file`,
        backing: null,
      });
      const add = { rttMs: addFile.rttMs + addFormat.rttMs };
      const at = (i % 16) * 32 * MiB;
      if (load === 'written') {
        // As in the engine workload: the round's writes are done (not flushed) before the switch.
        for (let m = 0; m < writeMiB; m++)
          await hmpCmd(`qemu-io -d disk0/virtio-backend "write -q -P 0x21 ${at + m * MiB} 1M"`);
      } else if (load === 'inflight') {
        // aio_write returns once submitted: 8 MiB of guest writes are in flight when the switch drains.
        await hmpCmd(`qemu-io -d disk0/virtio-backend "aio_write -q -P 0x22 ${at} 8M"`);
        lastInflight = { file, at };
      }
      const snap = await qmp!.cmd('transaction', {
        actions: [{ type: 'blockdev-snapshot', data: { node: top, overlay: `ov${i}` } }],
      });
      snapshotIds[load].push(snap.id);
      if (load === 'idle') {
        result.addMs.push(add.rttMs);
        result.snapshotMs.push(snap.rttMs);
        result.addPlusSnapshotMs.push(add.rttMs + snap.rttMs);
      }
      top = `ov${i}`;
      topFile = file;
    };
    let lastInflight: { file: string; at: number } | null = null;
    for (let i = 1; i <= stallSamples; i++) await rotate(i, 'idle');
    for (let i = stallSamples + 1; i <= 2 * stallSamples; i++) await rotate(i, 'written');
    for (let i = 2 * stallSamples + 1; i <= 3 * stallSamples; i++) await rotate(i, 'inflight');
    await hmpCmd('qemu-io -d disk0/virtio-backend "flush"');
    // stop + cont back to back: the least an lvm-cow pause can cost (it also clones, and libvirt saves its status).
    for (let i = 0; i < 2 * stallSamples; i++) {
      const inflight = i >= stallSamples;
      if (inflight)
        await hmpCmd(
          `qemu-io -d disk0/virtio-backend "aio_write -q -P 0x23 ${1024 * MiB + (i % 16) * 32 * MiB} 8M"`,
        );
      const before = qmp.events.length;
      const stop = await qmp.cmd('stop');
      const cont = await qmp.cmd('cont');
      const ev = qmp.events.slice(before);
      const s = ev.find((e) => e.event === 'STOP');
      const r = ev.find((e) => e.event === 'RESUME');
      if (s === undefined || r === undefined) throw new Error('no STOP/RESUME event');
      if (inflight) result.inflightStopContQemuMs.push(r.atMs - s.atMs);
      else {
        result.stopContRttMs.push(stop.rttMs + cont.rttMs);
        result.stopContQemuMs.push(r.atMs - s.atMs);
      }
    }
    await qmp.cmd('quit');
    await qemu;
    // The in-flight write landed below the overlay it was drained for (oracle: qemu-io outside QEMU).
    if (lastInflight !== null) {
      const { file, at } = lastInflight as { file: string; at: number };
      await execa('qemu-io', [
        '-f',
        'qcow2',
        '-r',
        '-U',
        '-c',
        `read -P 0x22 ${at} 8M`,
        join(dir, `ov${3 * stallSamples}.qcow2`),
      ]).then((r) => {
        if (/failed|Pattern verification/i.test(`${r.stdout}${r.stderr}`))
          throw new Error(`in-flight write not found through ${file}: ${r.stdout}`);
      });
    }
    // QEMU-side main-loop time of the switch transactions (ids b<n>, in order).
    const trace = await readFile(traceFile, 'utf8');
    const starts = new Map<string, number>();
    const durations = new Map<string, number>();
    for (const line of trace.split('\n')) {
      const m = /^\d+@(\d+)\.(\d{6}):(\w+) (.*)$/.exec(line);
      if (m === null) continue;
      const at = Number(m[1]) * 1000 + Number(m[2]) / 1000;
      if (m[3] === 'monitor_qmp_cmd_in_band') starts.set(JSON.parse(m[4]!) as string, at);
      else if (m[3] === 'monitor_qmp_respond') {
        const id = /"id": "(b\d+)"/.exec(m[4]!)?.[1];
        if (id !== undefined && starts.has(id)) durations.set(id, at - starts.get(id)!);
      }
    }
    const qemuSide = (ids: string[], into: number[]) => {
      for (const id of ids) {
        const d = durations.get(id);
        if (d === undefined) throw new Error(`no trace of QMP command ${id}`);
        into.push(d);
      }
    };
    qemuSide(snapshotIds.idle, result.snapshotQemuMs);
    qemuSide(snapshotIds.written, result.afterWritesSnapshotMs);
    qemuSide(snapshotIds.inflight, result.inflightSnapshotMs);
    return result;
  } finally {
    qmp?.close();
    if (qemu.exitCode === null) qemu.kill('SIGKILL');
    await qemu.catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// 3: export throughput vs cp.

async function dropCaches(): Promise<void> {
  await execa('sync');
  await writeFile('/proc/sys/vm/drop_caches', '3');
}

interface ExportRow {
  mib: number;
  engineMs: number[];
  engineSyncMs: number[];
  plainMs: number[];
  tunedMs: number[];
  tunedSyncMs: number[];
  cpMs: number[];
  cpSyncMs: number[];
  targetBytes: number;
}

async function exportThroughput(): Promise<ExportRow[]> {
  const cleanup = new Cleanup();
  const totalMiB = Math.max(...exportSizes);
  const h = await makeHarness('benchlrexp', { reflink: true, xfsBytes: (4 * totalMiB + 1024) * MiB });
  cleanup.add('harness', () => h.cleanup());
  const rows: ExportRow[] = [];
  try {
    const storeDir = join(h.storeRoot, 'exp');
    await execa('mkdir', ['-p', storeDir]);
    const parent = join(storeDir, 'snap-0');
    const virt = Math.max(sizeMiB, totalMiB * 2);
    await createQcow2(parent, virt);
    await execa('qemu-io', ['-f', 'qcow2', '-c', 'write -q -P 0x33 0 16M', parent]);
    for (const mib of exportSizes) {
      // The frozen layer: a QCOW2 over the parent (absolute, as the active image names it) holding
      // `mib` of guest data at fresh offsets, written 1 MiB at a time; and a raw file of the same bytes.
      const frozen = join(h.pool, `frozen-${mib}.qcow2`);
      await createQcow2(frozen, virt, { backing: parent });
      const writes: string[] = [];
      for (let m = 0; m < mib; m++) writes.push('-c', `write -q -P ${(m % 200) + 1} ${(32 + m) * MiB} 1M`);
      for (let i = 0; i < writes.length; i += 512)
        await execa('qemu-io', ['-f', 'qcow2', ...writes.slice(i, i + 512), frozen]);
      const raw = join(h.pool, `raw-${mib}.bin`);
      await execa('dd', ['if=/dev/urandom', `of=${raw}`, 'bs=1M', `count=${mib}`, 'status=none']);
      const part = join(storeDir, '.snap-1.part');
      const copy = join(storeDir, 'raw.copy');
      const row: ExportRow = {
        mib,
        engineMs: [],
        engineSyncMs: [],
        plainMs: [],
        tunedMs: [],
        tunedSyncMs: [],
        cpMs: [],
        cpSyncMs: [],
        targetBytes: 0,
      };
      const engineExport = exportStep(h.deps, {
        source: frozen,
        partPath: part,
        parentBacking: 'snap-0',
        compress: false,
        forceShare: true,
        bytesTotal: mib * MiB, // the engine passes the planner's measure (no qemu-img map)
      });
      const io = { signal: new AbortController().signal, progress: () => {} };
      const timed = async (run: () => Promise<unknown>, target: string, into: number[], sync: number[]) => {
        await rm(target, { force: true });
        await dropCaches();
        const t0 = performance.now();
        await run();
        const t1 = performance.now();
        await fsyncPath(target);
        into.push(t1 - t0);
        sync.push(performance.now() - t0);
      };
      const runs: Array<() => Promise<void>> = [
        () => timed(() => engineExport.run(io), part, row.engineMs, row.engineSyncMs),
        () =>
          timed(
            () =>
              h.deps.qemuImg.convert({
                source: frozen,
                target: part,
                forceShare: true,
                backing: { file: 'snap-0', format: 'qcow2' },
                tuning: EXPORT_TUNING,
              }),
            part,
            row.tunedMs,
            row.tunedSyncMs,
          ),
        () =>
          timed(
            () =>
              h.deps.qemuImg.convert({
                source: frozen,
                target: part,
                forceShare: true,
                backing: { file: 'snap-0', format: 'qcow2' },
              }),
            part,
            row.plainMs,
            [],
          ),
        () => timed(() => execa('cp', [raw, copy]), copy, row.cpMs, row.cpSyncMs),
      ];
      for (let r = 0; r < exportRuns; r++) {
        // Rotate the order so no tool always runs right after another's writeback.
        for (let k = 0; k < runs.length; k++) await runs[(k + r) % runs.length]!();
      }
      row.targetBytes = (await stat(part)).blocks * 512;
      await rm(part, { force: true });
      await rm(copy, { force: true });
      log(
        `export ${mib} MiB: engine ${row.engineMs.map(ms).join(' ')} ms; plain ${row.plainMs.map(ms).join(' ')} ms; -W ${row.tunedMs.map(ms).join(' ')} ms; ` +
          `cp ${row.cpMs.map(ms).join(' ')} ms; load ${load()}`,
      );
      rows.push(row);
    }
    return rows;
  } finally {
    await cleanup.run();
  }
}

// ---------------------------------------------------------------------------------------------

const loadStart = load();
const { stdout: qemuVersion } = await execa('qemu-system-x86_64', ['--version']);
log(`load average at start: ${loadStart}`);
// Each part prints its results as soon as it is done.
console.log(
  `${new Date().toISOString()}, ${qemuVersion.split('\n')[0]}; load average (1/5/15 min) at start ${loadStart}`,
);
console.log(
  `Disk ${sizeMiB} MiB virtual, ${writeMiB} MiB of fresh guest data per round, ${count} snapshots per strategy.\n`,
);
const growth = skip.has('growth') ? null : await growthAndStall();
if (growth !== null) {
  const pick = [1, 5, 10, 20].filter((n) => n <= count);
  console.log(
    '| snapshot | live-rotate MiB | ÷ written | lvm-cow MiB | ÷ written | live-rotate QMP main-loop ms (longest) | lvm-cow QEMU paused ms |',
  );
  console.log(
    '| -------: | --------------: | --------: | ----------: | --------: | -------------------------------------: | ---------------------: |',
  );
  for (const n of pick) {
    const lr = growth.lr[n - 1]!;
    const cow = growth.cow[n - 1]!;
    const w = writeMiB * MiB;
    console.log(
      `| ${n} | ${(lr.sizeBytes / MiB).toFixed(2)} | ${(lr.sizeBytes / w).toFixed(3)} | ${(cow.sizeBytes / MiB).toFixed(2)} | ${(cow.sizeBytes / w).toFixed(3)} | ` +
        `${ms(lr.qemuAllCommandsMs)} (${ms(lr.qemuLongestCommand.ms)}) | ${cow.qemuPausesMs.map(ms).join(' + ')} |`,
    );
  }
  const worst = Math.max(...growth.lr.map((r) => r.sizeBytes / (writeMiB * MiB)));
  console.log(`\nlive-rotate worst ratio over all ${count} snapshots: ${worst.toFixed(3)}`);

  const lrSnap = growth.lr.flatMap((r) => r.qemuSnapshotMs);
  const lrSwitch = growth.lr.map((r) => r.switchMs ?? Number.NaN);
  const lrPaused = growth.lr.flatMap((r) => r.qemuPausesMs);
  const cowPauses = growth.cow.flatMap((r) => r.qemuPausesMs);
  const cowPerSnap = growth.cow.map((r) => r.qemuPausesMs.reduce((a, b) => a + b, 0));
  console.log('\nGuest I/O stall per snapshot, libvirt domains (engine runs):');
  console.log(`- live-rotate, QEMU main-loop time of libvirt's switch (transaction): ${stats(lrSnap)}`);
  console.log(`- live-rotate, engine switchMs (virsh snapshot-create-as in the session): ${stats(lrSwitch)}`);
  console.log(`- live-rotate, QEMU STOP→RESUME intervals seen: ${lrPaused.length}`);
  console.log(
    `- live-rotate, QEMU main-loop time of all engine QMP commands per snapshot: ${stats(growth.lr.map((r) => r.qemuAllCommandsMs))}`,
  );
  const longest = (rows: SnapRow[]) =>
    `${stats(rows.map((r) => r.qemuLongestCommand.ms))} (${[...new Set(rows.map((r) => r.qemuLongestCommand.execute))].join(', ')})`;
  console.log(`- live-rotate, QEMU longest single engine QMP command per snapshot: ${longest(growth.lr)}`);
  console.log(`- lvm-cow, QEMU STOP→RESUME per pause (clone, repoint): ${stats(cowPauses)}`);
  console.log(`- lvm-cow, QEMU paused per snapshot (sum): ${stats(cowPerSnap)}`);
  console.log(`- lvm-cow, engine vmPauseMs per snapshot: ${stats(growth.cow.map((r) => r.vmPauseMs))}`);
  console.log(
    `- lvm-cow, QEMU main-loop time of all engine QMP commands per snapshot: ${stats(growth.cow.map((r) => r.qemuAllCommandsMs))}`,
  );
  console.log(`- lvm-cow, QEMU longest single engine QMP command per snapshot: ${longest(growth.cow)}`);
  const sum = (rows: SnapRow[], f: (r: SnapRow) => number) => rows.reduce((a, r) => a + f(r), 0);
  console.log(
    `- total export time: live-rotate ${ms(sum(growth.lr, (r) => r.exportMs))} ms, lvm-cow ${ms(sum(growth.cow, (r) => r.exportMs))} ms; ` +
      `QMP commands per snapshot p50: live-rotate ${median(growth.lr.map((r) => r.qmpCommandCount))}, lvm-cow ${median(growth.cow.map((r) => r.qmpCommandCount))}; ` +
      `snapshot wall time p50: live-rotate ${ms(median(growth.lr.map((r) => r.totalMs)))} ms, lvm-cow ${ms(median(growth.cow.map((r) => r.totalMs)))} ms`,
  );
}
let bare: BareResult | null = null;
if (!skip.has('stall')) {
  const cleanup = new Cleanup();
  const h = await makeHarness('benchlrbare');
  cleanup.add('harness', () => h.cleanup());
  try {
    bare = await bareQemu(h.pool);
  } finally {
    await cleanup.run();
  }
}
if (bare !== null) {
  console.log('\nBare QEMU (pc, TCG, virtio-blk), direct QMP unix socket:');
  console.log(`- blockdev-add ×2 (overlay file + qcow2 node) round trips: ${stats(bare.addMs)}`);
  console.log(`- transaction [blockdev-snapshot] round trip: ${stats(bare.snapshotMs)}`);
  console.log(
    `- transaction [blockdev-snapshot] QEMU main-loop time (trace), nothing written since the last: ${stats(bare.snapshotQemuMs)}`,
  );
  console.log(`- blockdev-add ×2 + transaction round trips: ${stats(bare.addPlusSnapshotMs)}`);
  console.log(
    `- transaction [blockdev-snapshot] QEMU main-loop time right after ${writeMiB} MiB of completed, unflushed guest writes: ${stats(bare.afterWritesSnapshotMs)}`,
  );
  console.log(
    `- transaction [blockdev-snapshot] QEMU main-loop time with an 8 MiB guest write in flight: ${stats(bare.inflightSnapshotMs)}`,
  );
  console.log(`- stop + cont round trips: ${stats(bare.stopContRttMs)}`);
  console.log(`- stop + cont, QEMU STOP→RESUME event timestamps: ${stats(bare.stopContQemuMs)}`);
  console.log(
    `- stop + cont with an 8 MiB guest write in flight, QEMU STOP→RESUME: ${stats(bare.inflightStopContQemuMs)}`,
  );
}
const exports = skip.has('export') ? null : await exportThroughput();
if (exports !== null) {
  console.log(
    '\nExport throughput (pool XFS → store ext4, same virtio disk, page cache dropped before each):',
  );
  console.log(
    '| data MiB | engine export s (MiB/s) | ÷ cp | with fsync: ÷ cp | convert alone s | ÷ cp | convert -W s | ÷ cp | cp s (MiB/s) | cp + fsync s |',
  );
  console.log(
    '| -------: | ----------------------: | ---: | ---------------: | --------------: | ---: | -----------: | ---: | -----------: | -----------: |',
  );
  for (const r of exports) {
    const [e, es, pl, t, c, cs] = [r.engineMs, r.engineSyncMs, r.plainMs, r.tunedMs, r.cpMs, r.cpSyncMs].map(
      median,
    ) as [number, number, number, number, number, number];
    const rate = (v: number) => (r.mib / (v / 1000)).toFixed(0);
    console.log(
      `| ${r.mib} | ${(e / 1000).toFixed(3)} (${rate(e)}) | ${(c / e).toFixed(2)} | ${(cs / es).toFixed(2)} | ${(pl / 1000).toFixed(3)} | ${(c / pl).toFixed(2)} | ${(t / 1000).toFixed(3)} | ${(c / t).toFixed(2)} | ${(c / 1000).toFixed(3)} (${rate(c)}) | ${(cs / 1000).toFixed(3)} |`,
    );
  }
  console.log(
    `(median of ${exportRuns} runs each; target file ${exports.map((r) => `${r.mib}: ${(r.targetBytes / MiB).toFixed(1)} MiB`).join(', ')})`,
  );
}
console.log(`\n${new Date().toISOString()}: load average (1/5/15 min) at end ${load()}`);
