import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Channel, type ChannelModel, connect } from 'amqplib';
import { type BrowserContext, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningDashboard, startDashboard } from '../../../src/dashboard/server.js';
import type { AgentEvent, VolumeRef } from '../../../src/protocol/index.js';
import { brokerUrl } from '../../support/broker.js';
import {
  declareTopology,
  deleteTestTopology,
  makeEvent,
  publishEvent,
  type Topology,
  uniqueHost,
  uniqueTopology,
} from '../../support/fake-agent.js';
import { startSnapctl, topologyFlags } from '../../support/snapctl.js';
import { TcpProxy } from '../../support/tcp-proxy.js';

// The live dashboard end to end: events published to the real broker appear in headless
// Chromium through the dashboard's SSE stream. DASHBOARD_SCREENSHOT=<path> also saves the
// screenshot used in the docs (docs/dashboard.png).

const CHROMIUM = '/usr/bin/chromium';
const MiB = 1024 * 1024;

let topology: Topology;
let connection: ChannelModel;
let channel: Channel;
let dashboard: RunningDashboard;
let browser: BrowserContext;
let page: Page;
let profileDir: string;
const hostA = uniqueHost('hv01');
const hostB = uniqueHost('hv02');
const volume7: VolumeRef = { kind: 'lvm', vg: 'vg0', lv: 'vol-7' };
const volume9: VolumeRef = { kind: 'file', pool: '/var/lib/libvirt/images', file: 'i-2-9-VM.qcow2' };

function send(event: AgentEvent, volume: VolumeRef | null): void {
  publishEvent(channel, topology.eventsExchange, event, volume);
}

beforeAll(async () => {
  topology = uniqueTopology('dash');
  connection = await connect(brokerUrl());
  channel = await connection.createChannel();
  await declareTopology(channel, topology);
  dashboard = await startDashboard({
    brokerUrls: [brokerUrl()],
    eventsExchange: topology.eventsExchange,
    connectTimeoutMs: 5000,
    port: 0,
    host: '127.0.0.1',
  });
  profileDir = await mkdtemp(join(tmpdir(), 'clvmt-dashboard-profile-'));
  try {
    browser = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1400, height: 660 },
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  } catch (error) {
    throw new Error(
      `cannot start headless Chromium at ${CHROMIUM} (apt-get install chromium): ${String(error)}`,
    );
  }
  page = browser.pages()[0] ?? (await browser.newPage());
});

afterAll(async () => {
  await browser?.close();
  await dashboard?.close();
  await connection?.close();
  if (channel) await deleteTestTopology(topology);
  if (profileDir) await rm(profileDir, { recursive: true, force: true });
});

describe('dashboard in headless Chromium', () => {
  it('shows the broker and the live stream as connected', async () => {
    await page.goto(dashboard.url);
    await page.getByTestId('stream').getByText('live').waitFor();
    await expect(page.getByTestId('broker').textContent()).resolves.toBe('broker connected');
    await page.getByText('no job running').waitFor();
  });

  it('events published to the broker appear: hosts, jobs with progress, results, failures', async () => {
    const t0 = Date.now() - 60_000;
    const at = (s: number) => new Date(t0 + s * 1000);
    send(
      makeEvent('started', {
        hostId: hostA,
        correlationid: 'agent',
        sequence: 1,
        time: at(0),
        data: { hostId: hostA, agentVersion: '0.1.0' },
      }),
      null,
    );
    send(
      makeEvent('succeeded', {
        hostId: hostA,
        correlationid: 'ping-1',
        sequence: 2,
        time: at(5),
        data: {
          jobId: 'ping-1',
          commandType: 'agent.ping',
          durationMs: 12,
          result: {
            agentVersion: '0.1.0',
            hostId: hostA,
            tools: { qemuImg: '7.2.0', qemu: '7.2.0', libvirt: '9.0.0', lvm2: '2.03.16' },
            strategies: ['offline'],
          },
        },
      }),
      null,
    );
    // A job in flight at 40 %.
    send(
      makeEvent('accepted', {
        hostId: hostA,
        volume: volume7,
        correlationid: 'job-running',
        sequence: 1,
        time: at(10),
        data: { jobId: 'job-running', commandType: 'snapshot.create', volume: volume7 },
      }),
      volume7,
    );
    send(
      makeEvent('progress', {
        hostId: hostA,
        volume: volume7,
        correlationid: 'job-running',
        sequence: 2,
        time: at(20),
        data: {
          jobId: 'job-running',
          step: 'export',
          stepIndex: 2,
          stepCount: 5,
          percent: 40,
          bytesDone: 400 * MiB,
          bytesTotal: 1000 * MiB,
          bytesPerSecond: 100 * MiB,
        },
      }),
      volume7,
    );
    // A finished snapshot.
    send(
      makeEvent('succeeded', {
        hostId: hostB,
        volume: volume9,
        correlationid: 'job-done',
        sequence: 5,
        time: at(30),
        data: {
          jobId: 'job-done',
          commandType: 'snapshot.create',
          durationMs: 3200,
          result: {
            snapshot: {
              name: 'snap-4',
              path: '/mnt/snapstore/vm-9/snap-4',
              parent: 'snap-3',
              kind: 'delta',
              physicalSize: 3 * MiB,
              virtualSize: 16 * MiB,
              chainDepth: 4,
            },
            strategy: { name: 'live-rotate', reason: 'VM running, QEMU 7.2' },
            vmPauseMs: 0,
            activePath: '/var/lib/libvirt/images/i-2-9-VM.qcow2',
            steps: [],
          },
        },
      }),
      volume9,
    );
    // A failure (with markup in the message: must be shown as text) and a rejection.
    send(
      makeEvent('failed', {
        hostId: hostB,
        volume: volume9,
        correlationid: 'job-failed',
        sequence: 3,
        time: at(40),
        data: {
          jobId: 'job-failed',
          commandType: 'snapshot.delete',
          durationMs: 800,
          error: {
            code: 'STORE_FULL',
            message: 'no space left on <img src=x onerror=alert(1)> store',
            retryable: true,
          },
          rolledBack: true,
          retryable: true,
        },
      }),
      volume9,
    );
    send(
      makeEvent('rejected', {
        hostId: hostB,
        correlationid: 'job-rejected',
        sequence: 1,
        time: at(45),
        data: {
          jobId: 'job-rejected',
          commandType: 'snapshot.create',
          error: { code: 'SIGNATURE_INVALID', message: 'missing or bad x-signature', retryable: false },
        },
      }),
      null,
    );

    const hosts = page.getByTestId('hosts');
    await hosts.locator(`tr[data-host-id="${hostA}"]`).getByText('up').waitFor();
    await expect(hosts.locator(`tr[data-host-id="${hostA}"]`).textContent()).resolves.toMatch(
      /0\.1\.0.*ok 12 ms/,
    );
    await hosts.locator(`tr[data-host-id="${hostB}"]`).waitFor();

    const running = page.getByTestId('jobs').locator('tr[data-job-id="job-running"]');
    await running.waitFor();
    const runningText = await running.textContent();
    expect(runningText).toContain('snapshot.create');
    expect(runningText).toContain('vg0/vol-7');
    expect(runningText).toContain('3/5 export');
    expect(runningText).toContain('100.0 MiB/s');
    expect(runningText).toContain('6.0 s'); // ETA: 600 MiB left at 100 MiB/s
    await expect(running.getByRole('progressbar').getAttribute('aria-valuenow')).resolves.toBe('40');
    const fillWidth = await running
      .locator('.bar > span')
      .evaluate((el) => (el as unknown as { style: { width: string } }).style.width);
    expect(fillWidth).toBe('40%');

    const done = page.getByTestId('results').locator('tr[data-job-id="job-done"]');
    await done.waitFor();
    const doneText = await done.textContent();
    expect(doneText).toContain('snap-4 (delta)');
    expect(doneText).toContain('3.0 MiB');
    expect(doneText).toContain('3.2 s');
    expect(doneText).toContain('live-rotate');
    expect(doneText).toContain('/var/lib/libvirt/images/i-2-9-VM.qcow2');

    const failures = page.getByTestId('failures');
    await failures.locator('tr[data-job-id="job-failed"]').getByText('STORE_FULL').waitFor();
    await expect(failures.locator('tr[data-job-id="job-failed"]').textContent()).resolves.toContain(
      '<img src=x onerror=alert(1)>',
    );
    expect(await failures.locator('img').count()).toBe(0);
    await failures.locator('tr[data-job-id="job-rejected"]').getByText('SIGNATURE_INVALID').waitFor();
  });

  it('progress moves the bar, and a finished job leaves "in flight" for "recent results"', async () => {
    send(
      makeEvent('progress', {
        hostId: hostA,
        volume: volume7,
        correlationid: 'job-running',
        sequence: 3,
        data: {
          jobId: 'job-running',
          step: 'export',
          stepIndex: 2,
          stepCount: 5,
          percent: 75,
          bytesDone: 750 * MiB,
          bytesTotal: 1000 * MiB,
          bytesPerSecond: 120 * MiB,
        },
      }),
      volume7,
    );
    const bar = page.getByTestId('jobs').locator('tr[data-job-id="job-running"]').getByRole('progressbar');
    // The page's CSP forbids eval, so poll from here instead of page.waitForFunction.
    await expect.poll(() => bar.getAttribute('aria-valuenow'), { timeout: 10_000 }).toBe('75');

    const shot = join(profileDir, 'dashboard.png');
    await page.screenshot({ path: shot, fullPage: true });
    const png = await readFile(shot);
    expect(png.subarray(0, 8).toString('hex')).toBe('89504e470d0a1a0a');
    if (process.env.DASHBOARD_SCREENSHOT)
      await page.screenshot({ path: process.env.DASHBOARD_SCREENSHOT, fullPage: true });

    send(
      makeEvent('succeeded', {
        hostId: hostA,
        volume: volume7,
        correlationid: 'job-running',
        sequence: 4,
        data: {
          jobId: 'job-running',
          commandType: 'snapshot.create',
          durationMs: 9100,
          result: {
            snapshot: {
              name: 'snap-8',
              path: '/mnt/snapstore/vol-7/snap-8',
              parent: 'snap-7',
              kind: 'delta',
              physicalSize: 750 * MiB,
              virtualSize: 1000 * MiB,
              chainDepth: 8,
            },
            strategy: { name: 'lvm-cow', reason: 'no free space for live rotation' },
            vmPauseMs: 2,
            activePath: '/dev/vg0/vol-7',
            steps: [],
          },
        },
      }),
      volume7,
    );
    await page.getByTestId('results').locator('tr[data-job-id="job-running"]').getByText('lvm-cow').waitFor();
    await page.getByTestId('jobs').getByText('no job running').waitFor();
  });

  it('serves the state as JSON and nothing outside its file list', async () => {
    const state = (await (await fetch(`${dashboard.url}api/state`)).json()) as {
      hosts: unknown[];
      eventsSeen: number;
    };
    expect(state.hosts.length).toBe(2);
    expect(state.eventsSeen).toBe(9);
    expect((await fetch(`${dashboard.url}..%2F..%2Fpackage.json`)).status).toBe(404);
    expect((await fetch(`${dashboard.url}server.ts`)).status).toBe(404);
    expect((await fetch(`${dashboard.url}app.js`)).headers.get('content-type')).toContain('text/javascript');
    expect((await fetch(dashboard.url, { method: 'POST' })).status).toBe(405);
  });

  it('snapctl dashboard serves it from the command line and stops cleanly on Ctrl-C', async () => {
    const child = startSnapctl([
      'dashboard',
      '--port',
      '0',
      '--json',
      ...topologyFlags(brokerUrl(), topology),
    ]);
    let out = '';
    child.stdout?.on('data', (c: Buffer) => {
      out += c.toString();
    });
    try {
      await expect.poll(() => out.includes('"url"'), { timeout: 30_000 }).toBe(true);
      const { url } = JSON.parse(out.split('\n')[0]!) as { url: string };
      const page = await fetch(url);
      expect(page.status).toBe(200);
      expect(await page.text()).toContain('<title>clvm-snapshot-agent dashboard</title>');
      const state = (await (await fetch(`${url}api/state`)).json()) as { broker: { connected: boolean } };
      expect(state.broker.connected).toBe(true);
    } finally {
      child.kill('SIGINT');
    }
    expect((await child).exitCode).toBe(0);
  });

  it('snapctl dashboard with no broker: exit 5', async () => {
    const result = await startSnapctl([
      'dashboard',
      '--port',
      '0',
      '--broker-url',
      'amqp://guest:guest@127.0.0.1:1',
    ]);
    expect(result.exitCode).toBe(5);
  });

  it('a lost broker connection shows on the page and heals by itself', async () => {
    const proxy = await TcpProxy.forUrl(brokerUrl());
    const viaProxy = await startDashboard({
      brokerUrls: [proxy.urlFor(brokerUrl())],
      eventsExchange: topology.eventsExchange,
      connectTimeoutMs: 5000,
      port: 0,
      host: '127.0.0.1',
    });
    const other = await browser.newPage();
    try {
      await other.goto(viaProxy.url);
      await other.getByTestId('broker').getByText('broker connected').waitFor();
      proxy.cut();
      await other
        .getByTestId('broker')
        .getByText(/^broker disconnected/)
        .waitFor({ timeout: 10_000 });
      await other.getByTestId('broker').getByText('broker connected').waitFor({ timeout: 20_000 });
      // Subscribed again: a new event reaches the page.
      const lateHost = uniqueHost('hv03');
      send(
        makeEvent('started', {
          hostId: lateHost,
          correlationid: 'agent',
          sequence: 1,
          data: { hostId: lateHost, agentVersion: '0.2.0' },
        }),
        null,
      );
      await other.getByTestId('hosts').locator(`tr[data-host-id="${lateHost}"]`).waitFor({ timeout: 10_000 });
    } finally {
      await other.close();
      await viaProxy.close();
      await proxy.close();
    }
  });
});
