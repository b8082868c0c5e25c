// QEMU's own view of a libvirt domain's monitor, for benchmarks: QMP trace events (log backend,
// µs wall-clock timestamps in the domain log, turned on with HMP trace-event around a window)
// give the main-loop time of each QMP command (request dequeued → reply queued) and the STOP /
// RESUME event timestamps. Used by bench/live-rotate.ts and bench/snapshot-cost.ts.
import { open, stat } from 'node:fs/promises';
import { hmp, type TestDomain } from '../test/support/libvirt-fixtures.js';

// QEMU trace lines in a libvirt domain log: `<pid>@<sec>.<usec>:<event> <args>` (-msg timestamp=on).

const TRACE_EVENTS = ['handle_qmp_command', 'monitor_qmp_cmd_in_band', 'monitor_qmp_respond'];

export interface QmpCommandTrace {
  execute: string;
  /** Main loop dequeued the request (monitor_qmp_cmd_in_band), epoch ms. */
  startMs: number;
  /** The reply was queued (monitor_qmp_respond), epoch ms. */
  endMs: number;
}

export interface TraceWindow {
  commands: QmpCommandTrace[];
  /** QMP STOP/RESUME events with QEMU's own timestamps, epoch ms. */
  runstate: Array<{ event: 'STOP' | 'RESUME'; atMs: number }>;
}

export function parseTrace(text: string): TraceWindow {
  const requests = new Map<string, string>();
  const starts = new Map<string, number>();
  const commands: QmpCommandTrace[] = [];
  const runstate: TraceWindow['runstate'] = [];
  for (const line of text.split('\n')) {
    const m = /^\d+@(\d+)\.(\d{6}):(\w+) (.*)$/.exec(line);
    if (m === null) continue;
    const atMs = Number(m[1]) * 1000 + Number(m[2]) / 1000;
    const [event, rest] = [m[3]!, m[4]!];
    if (event === 'handle_qmp_command') {
      const req = JSON.parse(rest.replace(/^mon \S+ req: /, '')) as {
        execute: string;
        id?: string;
        arguments?: { 'command-line'?: string };
      };
      const line = req.arguments?.['command-line'];
      if (req.id !== undefined) requests.set(req.id, line === undefined ? req.execute : `hmp ${line}`);
    } else if (event === 'monitor_qmp_cmd_in_band') {
      starts.set(JSON.parse(rest) as string, atMs);
    } else if (event === 'monitor_qmp_respond') {
      const resp = JSON.parse(rest.replace(/^mon \S+ resp: /, '')) as {
        id?: string;
        event?: string;
        timestamp?: { seconds: number; microseconds: number };
      };
      if ((resp.event === 'STOP' || resp.event === 'RESUME') && resp.timestamp) {
        runstate.push({
          event: resp.event,
          atMs: resp.timestamp.seconds * 1000 + resp.timestamp.microseconds / 1000,
        });
      } else if (resp.id !== undefined && starts.has(resp.id)) {
        commands.push({
          execute: requests.get(resp.id) ?? '?',
          startMs: starts.get(resp.id)!,
          endMs: atMs,
        });
      }
    }
  }
  return { commands, runstate };
}

/** Bytes of `path` from `offset` to its end ('' when it is shorter). */
async function readFrom(path: string, offset: number): Promise<string> {
  const handle = await open(path, 'r');
  try {
    const size = (await handle.stat()).size;
    if (size <= offset) return '';
    const buf = Buffer.alloc(size - offset);
    await handle.read(buf, 0, buf.length, offset);
    return buf.toString('utf8');
  } finally {
    await handle.close();
  }
}

/** Turns QEMU's QMP trace events on, runs fn, turns them off and returns the trace lines in between. */
export async function traced<T>(
  dom: TestDomain,
  fn: () => Promise<T>,
): Promise<{ value: T; trace: TraceWindow }> {
  const logPath = `/var/log/libvirt/qemu/${dom.name}.log`;
  const before = await stat(logPath);
  for (const e of TRACE_EVENTS) await hmp(dom.name, `trace-event ${e} on`);
  const value = await fn();
  for (const e of [...TRACE_EVENTS].reverse()) await hmp(dom.name, `trace-event ${e} off`);
  // The last "off" request is traced before it runs; virtlogd may write it a moment later.
  const marker = 'trace-event handle_qmp_command off';
  for (let i = 0; ; i++) {
    // virtlogd rolls the log over at 2 MiB (renamed to .log.0): then the window spans both files.
    const now = await stat(logPath);
    let text: string;
    if (now.ino === before.ino) text = await readFrom(logPath, before.size);
    else {
      const rolled = await stat(`${logPath}.0`);
      if (rolled.ino !== before.ino) throw new Error(`${logPath} rolled over twice in one snapshot`);
      text = (await readFrom(`${logPath}.0`, before.size)) + (await readFrom(logPath, 0));
    }
    if (text.includes(marker) || i >= 50) return { value, trace: parseTrace(text) };
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Paused intervals (STOP → RESUME) in a trace window, ms. */
export function pauses(trace: TraceWindow): number[] {
  const out: number[] = [];
  let stoppedAt: number | null = null;
  for (const e of trace.runstate) {
    if (e.event === 'STOP') stoppedAt = e.atMs;
    else if (stoppedAt !== null) {
      out.push(e.atMs - stoppedAt);
      stoppedAt = null;
    }
  }
  if (stoppedAt !== null) throw new Error('a STOP without RESUME in the trace');
  return out;
}
