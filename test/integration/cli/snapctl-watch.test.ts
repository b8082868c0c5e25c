import { readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect } from 'amqplib';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { brokerUrl } from '../../support/broker.js';
import { makeEvent, publishEvent } from '../../support/fake-agent.js';
import { fakeAgentPerFile, snapctl, startSnapctlCollecting, topologyFlags } from '../../support/snapctl.js';
import { waitUntil } from '../../support/wait.js';

// `snapctl watch` on jobs with progress: plain lines when stdout is not a TTY, live bars in a TTY
// (a pseudo-terminal from util-linux `script`), filters done by the broker binding.

const { topology, hostId } = fakeAgentPerFile('watch', 'hvw', {
  progressSteps: 5,
  progressGapMs: 200,
  behaviour: (c) => (c.id.startsWith('fail-') ? 'fail' : 'succeed'),
});

const createArgs = (name: string) => [
  'snapshot',
  'create',
  '--volume',
  'file:/var/lib/libvirt/images/vm-1.qcow2',
  '--store-root',
  '/mnt/snapstore',
  '--store-dir',
  'vm-1',
  '--snapshot',
  name,
];

describe('snapctl watch (not a TTY)', () => {
  it('prints a line per progress event (step, percent, rate, ETA) and one per finished job; Ctrl-C exits 0', async () => {
    const flags = [...topologyFlags(brokerUrl(), topology), '--host', hostId];
    const watch = startSnapctlCollecting(['watch', ...flags]);
    try {
      await waitUntil(() => watch.err.includes('watching'), 30_000, 'watch to subscribe');
      expect(watch.err).toContain(`with binding ${hostId}.*.*`);

      // An event of another host must not show: the binding filters by host.
      const connection = await connect(brokerUrl());
      const channel = await connection.createChannel();
      publishEvent(
        channel,
        topology.eventsExchange,
        makeEvent('started', {
          hostId: 'other-host',
          correlationid: 'x',
          sequence: 1,
          data: { hostId: 'other-host', agentVersion: '1' },
        }),
        null,
      );
      await connection.close();

      const ok = await snapctl([...createArgs('snap-w1'), ...flags, '--id', `watch-ok-${hostId}`]);
      expect(ok.exitCode).toBe(0);
      const failed = await snapctl([...createArgs('snap-w2'), ...flags, '--id', `fail-watch-${hostId}`]);
      expect(failed.exitCode).toBe(1);
      await waitUntil(() => watch.out.includes(`fail-watch-${hostId} failed`), 30_000, 'the failed line');
    } finally {
      watch.child.kill('SIGINT');
    }
    const result = await watch.child;
    expect(result.exitCode).toBe(0);
    const lines = watch.out.trim().split('\n');
    const progress = lines.filter((l) => l.includes(`watch-ok-${hostId} progress`));
    expect(progress.length).toBe(5);
    for (const line of progress) {
      expect(line).toMatch(/step 2\/3 export {2}\d+\.\d% {2}[\d.]+ MiB of 8\.0 MiB {2}2\.0 MiB\/s {2}ETA \d/);
    }
    expect(lines).toContainEqual(
      expect.stringMatching(
        new RegExp(`^${hostId} watch-ok-${hostId} succeeded snapshot.create in 42ms: snap-w1 full`),
      ),
    );
    expect(lines).toContainEqual(
      expect.stringMatching(
        new RegExp(`^${hostId} fail-watch-${hostId} failed snapshot.create .* NOT_IMPLEMENTED`),
      ),
    );
    expect(watch.out).not.toContain('other-host');
  });

  it('--kind failed --json: only failed events, one JSON event per line', async () => {
    const flags = [...topologyFlags(brokerUrl(), topology), '--host', hostId];
    const watch = startSnapctlCollecting(['watch', '--kind', 'failed', '--json', ...flags]);
    try {
      await waitUntil(
        () => watch.err.includes(`with binding ${hostId}.*.failed`),
        30_000,
        'watch to subscribe',
      );
      await snapctl([...createArgs('snap-k1'), ...flags, '--id', `kind-ok-${hostId}`]);
      await snapctl([...createArgs('snap-k2'), ...flags, '--id', `fail-kind-${hostId}`]);
      await waitUntil(() => watch.out.includes(`fail-kind-${hostId}`), 30_000, 'a failed event');
    } finally {
      watch.child.kill('SIGINT');
    }
    await watch.child;
    const events = watch.out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; correlationid: string });
    expect(events.map((e) => [e.type, e.correlationid])).toEqual([
      ['io.clvm.snapshot-agent.failed', `fail-kind-${hostId}`],
    ]);
  });
});

describe('snapctl watch (in a TTY)', () => {
  it('draws a live bar per running job and a line when it finishes', async () => {
    const entry = fileURLToPath(new URL('../../../src/snapctl.ts', import.meta.url));
    const flags = [...topologyFlags(brokerUrl(), topology), '--host', hostId];
    const quoted = ['node', '--import', 'tsx', entry, 'watch', ...flags].map((a) => `'${a}'`).join(' ');
    // `script` gives the child a pseudo-terminal; SIGINT once the job's line is drawn plays the
    // operator's Ctrl-C (the pid file says whom to send it to).
    const pidFile = join(tmpdir(), `snapctl-tty-${hostId}.pid`);
    const tty = execa('script', ['-qefc', `${quoted} & echo $! > '${pidFile}'; wait $!`, '/dev/null'], {
      reject: false,
      timeout: 60_000,
      env: { ...process.env, COLUMNS: '160', LINES: '40' },
      stdin: 'ignore',
    });
    let out = '';
    tty.stdout?.on('data', (c: Buffer) => {
      out += c.toString();
    });
    await waitUntil(() => out.includes('watching'), 30_000, 'watch in the TTY');
    const ok = await snapctl([...createArgs('snap-t1'), ...flags, '--id', `tty-${hostId}`]);
    expect(ok.exitCode).toBe(0);
    await waitUntil(() => out.includes(`tty-${hostId} succeeded`), 30_000, 'the finished line');
    process.kill(Number(await readFile(pidFile, 'utf8')), 'SIGINT');
    const result = await tty;
    await rm(pidFile, { force: true });
    expect(result.exitCode).toBe(0);
    // A bar: host, shortened job id, step, filled and empty cells, percent, rate, ETA.
    expect(out).toMatch(
      new RegExp(`${hostId} tty-hvw-\\w+ 2/3 export \\[█+░*\\] \\d+% \\| 2\\.0 MiB/s \\| ETA \\d`),
    );
    expect(out).toMatch(new RegExp(`${hostId} tty-${hostId} succeeded snapshot.create in 42ms: snap-t1`));
    // The cursor is shown again when watch stops.
    expect(out).toContain('\u001b[?25h');
  });
});
