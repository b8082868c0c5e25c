import cliProgress from 'cli-progress';
import { etaMs, percentOf } from '../client/event-facts.js';
import type { AgentEvent, AgentEventOf } from '../protocol/index.js';
import { eventKindOf } from '../protocol/index.js';
import { eventLine } from './event-lines.js';
import { formatDuration, formatRate } from './format.js';
import { type CliIo, writeLine } from './io.js';

/** Shows the events of the one job snapctl waits for. */
export interface JobProgressView {
  onEvent(event: AgentEvent): void;
  stop(): void;
}

/**
 * `json`: shows nothing (stdout carries only the final document). A TTY on stderr gets a live
 * bar with step, rate and ETA; anything else gets one plain line per event on stderr.
 */
export function createJobProgressView(io: CliIo, mode: { json: boolean }): JobProgressView {
  if (mode.json) return { onEvent: () => {}, stop: () => {} };
  if (!io.stderr.isTTY) {
    return {
      onEvent: (event) => {
        if (!isTerminal(event)) writeLine(io.stderr, eventLine(event));
      },
      stop: () => {},
    };
  }
  let bar: cliProgress.SingleBar | undefined;
  return {
    onEvent: (event) => {
      if (eventKindOf(event.type) === 'accepted') {
        writeLine(io.stderr, eventLine(event));
        return;
      }
      if (eventKindOf(event.type) !== 'progress') return;
      const payload = barPayload(event as AgentEventOf<'progress'>);
      if (!bar) {
        bar = new cliProgress.SingleBar(
          {
            stream: io.stderr,
            format: '{step} [{bar}] {percentage}% | {rate} | ETA {etaText}',
            hideCursor: true,
            clearOnComplete: false,
          },
          cliProgress.Presets.shades_classic,
        );
        bar.start(100, payload.percent, payload);
      } else {
        bar.update(payload.percent, payload);
      }
    },
    stop: () => bar?.stop(),
  };
}

/** Values a progress bar shows for one progress event (also used by `watch`). */
export function barPayload(event: AgentEventOf<'progress'>): {
  percent: number;
  step: string;
  rate: string;
  etaText: string;
} {
  const d = event.data;
  return {
    percent: percentOf(d),
    step: `${d.stepIndex + 1}/${d.stepCount} ${d.step}`,
    rate: d.bytesPerSecond === undefined ? '-' : formatRate(d.bytesPerSecond),
    etaText: formatDuration(etaMs(d)),
  };
}

function isTerminal(event: AgentEvent): boolean {
  const kind = eventKindOf(event.type);
  return kind === 'succeeded' || kind === 'failed' || kind === 'rejected';
}
