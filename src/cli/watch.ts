import cliProgress from 'cli-progress';
import { hostOf } from '../client/event-facts.js';
import { subscribeEvents } from '../client/messages.js';
import type { BrokerConnection } from '../messaging/connection.js';
import {
  type AgentEvent,
  type AgentEventOf,
  type EventKind,
  eventBindingPattern,
  eventKindOf,
  TERMINAL_KINDS,
  type VolumeRef,
} from '../protocol/index.js';
import { eventLine } from './event-lines.js';
import { type CliIo, writeJson, writeLine } from './io.js';
import { barPayload } from './progress-view.js';

export interface WatchOptions {
  eventsExchange: string;
  hostId?: string;
  volume?: VolumeRef;
  kind?: EventKind;
  json: boolean;
}

/** Receives the events `watch` shows; one implementation per output mode. */
interface WatchView {
  onEvent(event: AgentEvent): void;
  onInvalid(problem: string, routingKey: string): void;
  stop(): void;
}

/**
 * Follows the events exchange until `signal` aborts. The binding uses the filters, so the
 * broker only sends what was asked for. Prints the binding first so the operator sees the filter.
 */
export async function watchEvents(
  connection: BrokerConnection,
  io: CliIo,
  options: WatchOptions,
  signal: AbortSignal,
): Promise<void> {
  const pattern = eventBindingPattern({
    ...(options.hostId ? { hostId: options.hostId } : {}),
    ...(options.volume ? { volume: options.volume } : {}),
    ...(options.kind ? { kind: options.kind } : {}),
  });
  const view = options.json ? jsonView(io) : io.stdout.isTTY ? barsView(io) : lineView(io);
  const subscription = await subscribeEvents(connection, {
    exchange: options.eventsExchange,
    patterns: [pattern],
    onEvent: (event) => view.onEvent(event),
    onInvalid: (problem, meta) => view.onInvalid(problem, meta.routingKey),
  });
  // On stderr even with --json: scripts read stdout, and the line tells them the binding is live.
  writeLine(io.stderr, `watching ${options.eventsExchange} with binding ${pattern} (Ctrl-C to stop)`);
  try {
    await new Promise<void>((resolve) => {
      if (signal.aborted) resolve();
      else signal.addEventListener('abort', () => resolve(), { once: true });
    });
  } finally {
    view.stop();
    await subscription.close();
  }
}

function jsonView(io: CliIo): WatchView {
  return {
    onEvent: (event) => writeJson(io, event),
    onInvalid: (problem, routingKey) => writeJson(io, { invalid: problem, routingKey }),
    stop: () => {},
  };
}

/** Non-TTY: one plain line per event (progress included), easy to grep or log. */
function lineView(io: CliIo): WatchView {
  return {
    onEvent: (event) => writeLine(io.stdout, eventLine(event)),
    onInvalid: (problem, routingKey) => writeLine(io.stderr, `invalid message on ${routingKey}: ${problem}`),
    stop: () => {},
  };
}

/** TTY: one live bar per running job; a finished job's bar becomes one line above the bars. */
function barsView(io: CliIo): WatchView {
  const multibar = new cliProgress.MultiBar(
    {
      stream: io.stdout,
      format: '{host} {job} {step} [{bar}] {percentage}% | {rate} | ETA {etaText}',
      hideCursor: true,
      clearOnComplete: false,
      stopOnComplete: false,
      forceRedraw: true,
    },
    cliProgress.Presets.shades_classic,
  );
  const bars = new Map<string, cliProgress.SingleBar>();
  const log = (line: string) => multibar.log(`${line}\n`);
  return {
    onEvent: (event) => {
      const kind = eventKindOf(event.type);
      const job = event.correlationid;
      const labels = { host: hostOf(event), job: shortId(job) };
      if (kind === 'accepted' || kind === 'progress') {
        const payload =
          kind === 'progress'
            ? barPayload(event as AgentEventOf<'progress'>)
            : { percent: 0, step: 'accepted', rate: '-', etaText: '-' };
        const bar = bars.get(job);
        if (bar) bar.update(payload.percent, { ...labels, ...payload });
        else bars.set(job, multibar.create(100, payload.percent, { ...labels, ...payload }));
        return;
      }
      if (kind && TERMINAL_KINDS.has(kind)) {
        const bar = bars.get(job);
        if (bar) {
          multibar.remove(bar);
          bars.delete(job);
        }
      }
      log(eventLine(event));
    },
    onInvalid: (problem, routingKey) => log(`invalid message on ${routingKey}: ${problem}`),
    stop: () => multibar.stop(),
  };
}

/** Long generated ids shortened for a bar label: first 8 + "…" + last 6. */
export function shortId(id: string): string {
  return id.length <= 20 ? id : `${id.slice(0, 8)}…${id.slice(-6)}`;
}
