import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostBus } from '../../support/agent-process.js';
import { brokerUrl } from '../../support/broker.js';
import { daemonSet, values } from '../../support/chart.js';
import { hasPattern, MiB, makeQcow2, sameContent, tempDir, writePattern } from '../../support/images.js';
import { uniqueSuffix } from '../../support/names.js';
import {
  AGENT_IMAGE,
  buildAgentImage,
  freePort,
  podman,
  removeContainer,
  requirePodman,
} from '../../support/podman.js';

// The image built from the Dockerfile as it ships and run for real (podman, host network, the
// local broker), with a file pool and a store mounted from the host. The local base image stands
// in for the registry's node:24-bookworm-slim (scripts/ensure-base-image.sh).

const GRACE_MS = 10_000;

interface Running {
  name: string;
  hostId: string;
  port: number;
  bus: HostBus;
}

async function waitReady(port: number, timeoutMs = 60_000): Promise<unknown> {
  const until = Date.now() + timeoutMs;
  let last = 'no answer';
  while (Date.now() < until) {
    try {
      const response = await fetch(`http://127.0.0.1:${port}/readyz`, { signal: AbortSignal.timeout(2000) });
      if (response.ok) return response.json();
      last = `${response.status} ${await response.text()}`;
    } catch (error) {
      last = String(error);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`the agent in the container did not become ready: ${last}`);
}

async function ping(bus: HostBus): Promise<Record<string, unknown>> {
  const id = bus.send('agent.ping', {});
  const terminal = await bus.waitForTerminal(id, 60_000);
  expect(terminal.type).toMatch(/succeeded$/);
  return (terminal.data as { result: Record<string, unknown> }).result;
}

/** SIGTERM to the container (tini forwards it to node); resolves with the exit code and time. */
async function stopWithSigterm(name: string): Promise<{ exitCode: number; ms: number }> {
  const started = Date.now();
  await podman(['kill', '--signal', 'TERM', name]);
  const waited = await podman(['wait', name], { timeoutMs: GRACE_MS + 30_000 });
  return { exitCode: Number(waited.stdout.trim()), ms: Date.now() - started };
}

async function healthStatus(name: string): Promise<{ run: number; status: string }> {
  const run = await podman(['healthcheck', 'run', name], { reject: false });
  const status = (await podman(['inspect', name, '--format', '{{.State.Health.Status}}'])).stdout.trim();
  return { run: run.exitCode, status };
}

describe('the container image (podman)', () => {
  let work: Awaited<ReturnType<typeof tempDir>>;
  const containers: string[] = [];
  const buses: HostBus[] = [];

  beforeAll(async () => {
    await requirePodman();
    await buildAgentImage();
    work = await tempDir('clvm-i17-image');
  }, 600_000);

  afterAll(async () => {
    for (const name of containers) await removeContainer(name);
    for (const bus of buses) await bus.close().catch(() => undefined);
    await work?.cleanup();
  });

  async function start(name: string, hostId: string, runArgs: string[]): Promise<HostBus> {
    // The bus first: it declares the host's topology, so no event of the agent is lost.
    const bus = await HostBus.open(hostId);
    buses.push(bus);
    containers.push(name);
    await podman(['run', '-d', '--name', name, '--network', 'host', ...runArgs, AGENT_IMAGE]);
    return bus;
  }

  it('runs the agent: ping reports the tools in the image, an offline snapshot, health, user, caps, SIGTERM', async () => {
    const id = uniqueSuffix();
    const run: Running = {
      name: `clvm-i17-agent-${id}`,
      hostId: `i17-img-${id}`,
      port: await freePort(),
      bus: undefined as never,
    };
    const pool = join(work.dir, 'pool');
    const store = join(work.dir, 'store');
    const state = join(work.dir, 'state');
    for (const dir of [pool, store, state]) await mkdir(dir, { recursive: true });
    const volume = await makeQcow2(join(pool, 'vol.qcow2'), 64 * MiB);
    await writePattern(volume, 0x5a, 0, 4 * MiB);
    await writePattern(volume, 0xa5, 40 * MiB, 1 * MiB);

    run.bus = await start(run.name, run.hostId, [
      '--privileged',
      ...['-e', `AGENT_HOST_ID=${run.hostId}`, '-e', `AGENT_BROKER_URLS=${brokerUrl()}`],
      ...['-e', 'AGENT_HTTP_HOST=127.0.0.1', '-e', `AGENT_HTTP_PORT=${run.port}`],
      ...[
        '-e',
        `AGENT_STATE_DIR=${state}`,
        '-e',
        `AGENT_POOL_ROOTS=${pool}`,
        '-e',
        `AGENT_STORE_ROOTS=${store}`,
      ],
      ...['-e', `AGENT_SHUTDOWN_GRACE_MS=${GRACE_MS}`],
      // Same paths inside and out, so a command's paths mean the same file on both sides.
      ...['-v', `${work.dir}:${work.dir}`, '-v', '/run/libvirt:/run/libvirt'],
    ]);
    await waitReady(run.port);

    // The probe runs inside the image: its versions are the image's tools (asked directly here).
    const result = await ping(run.bus);
    const inImage = async (tool: string, ...args: string[]) =>
      (await podman(['run', '--rm', '--entrypoint', tool, AGENT_IMAGE, ...args])).stdout;
    const qemuImgVersion = /qemu-img version (\d+\.\d+(?:\.\d+)?)/.exec(
      await inImage('qemu-img', '--version'),
    )?.[1];
    const tools = result.tools as Record<string, string | null>;
    expect(result.hostId).toBe(run.hostId);
    expect(tools.qemuImg).toBe(qemuImgVersion);
    expect(await inImage('lvm', 'version')).toContain(String(tools.lvm2));
    expect(tools.libvirt, 'virsh in the image reaches libvirtd through /run/libvirt').toMatch(/^\d+\./);
    expect(result.strategies).toContain('offline');

    // snapshot.create of a file volume (no VM: offline), checked on the host by qemu-img itself.
    const jobId = run.bus.send('snapshot.create', {
      volume: { kind: 'file', pool, file: 'vol.qcow2' },
      vm: null,
      store: { root: store, dir: 'vol' },
      parents: [],
      snapshot: 'snap-1.qcow2',
      options: { strategy: 'offline' },
    });
    const terminal = await run.bus.waitForTerminal(jobId, 120_000);
    expect(terminal.type, JSON.stringify(terminal.data)).toMatch(/succeeded$/);
    const snapshot = join(store, 'vol', 'snap-1.qcow2');
    expect(await sameContent(volume, snapshot)).toBe(true);
    expect(await hasPattern(snapshot, 0xa5, 40 * MiB, 1 * MiB)).toBe(true);

    // The image's HEALTHCHECK (it reads the agent's port from the agent's configuration).
    expect(await healthStatus(run.name)).toEqual({ run: 0, status: 'healthy' });

    // Documented: root (Dockerfile `USER root`), privileged (the chart), tini as PID 1.
    const inspect = JSON.parse((await podman(['inspect', run.name])).stdout) as Array<{
      HostConfig: { Privileged: boolean };
      Config: { User: string };
    }>;
    expect(inspect[0]?.HostConfig.Privileged).toBe(true);
    const top = (await podman(['top', run.name, 'pid', 'user', 'capeff', 'args'])).stdout
      .trim()
      .split('\n')
      .slice(1);
    const processes = top.map((line) => {
      const [pid, user, caps, ...args] = line.trim().split(/\s+/);
      return { pid: Number(pid), user, caps: (caps ?? '').split(','), args: args.join(' ') };
    });
    // tini is PID 1 and runs node with the Dockerfile's memory flags (docs/benchmarks.md, "Agent memory").
    const nodeArgs = /^node (--[a-z-]+(=\S+)? )*dist\/main\.js$/;
    const init = processes.find((p) => p.pid === 1)?.args ?? '';
    expect(init.startsWith('/usr/bin/tini -- '), init).toBe(true);
    expect(init.slice('/usr/bin/tini -- '.length)).toMatch(nodeArgs);
    const node = processes.find((p) => nodeArgs.test(p.args));
    expect(node?.user).toBe('root');
    for (const cap of ['SYS_ADMIN', 'MKNOD', 'SYS_RAWIO', 'DAC_OVERRIDE']) expect(node?.caps).toContain(cap);

    // SIGTERM while a snapshot runs (slowed by a 1 MiB/s bandwidth limit: qemu-img -r in the
    // image): the agent lets it finish within the grace time, then exits 0.
    const slow = await makeQcow2(join(pool, 'slow.qcow2'), 16 * MiB);
    await writePattern(slow, 0x3d, 0, 3 * MiB);
    const slowJob = run.bus.send('snapshot.create', {
      volume: { kind: 'file', pool, file: 'slow.qcow2' },
      vm: null,
      store: { root: store, dir: 'slow' },
      parents: [],
      snapshot: 'slow-1.qcow2',
      options: { strategy: 'offline', bandwidthBytesPerSecond: 1024 * 1024 },
    });
    await run.bus.waitFor(
      'the export of the slow job',
      () =>
        run.bus.eventsOf(slowJob, 'progress').some((e) => (e.data as { step?: string }).step === 'export'),
      60_000,
    );
    const stopped = await stopWithSigterm(run.name);
    expect(stopped.exitCode).toBe(0);
    expect(stopped.ms).toBeLessThan(GRACE_MS);
    // It finished (not aborted): 3 MiB at 1 MiB/s took more than a second of the drain.
    expect((await run.bus.waitForTerminal(slowJob, 10_000)).type).toMatch(/succeeded$/);
    expect(stopped.ms).toBeGreaterThan(1000);
    expect(await sameContent(slow, join(store, 'slow', 'slow-1.qcow2'))).toBe(true);
  });

  it('starts with the agent config and the container environment the chart renders', async () => {
    const id = uniqueSuffix();
    const nodeName = `i17-chart-${id}`;
    const name = `clvm-i17-chart-${id}`;
    const port = await freePort();
    const base = join(work.dir, `chart-${id}`);
    // What an operator's values file changes: where the store, pools and state are, the port.
    const agentConfig = structuredClone(values.agentConfig) as {
      stateDir: string;
      store: { roots: string[] };
      pools: { fileRoots: string[] };
      http: { port: number };
    };
    agentConfig.stateDir = join(base, 'state');
    agentConfig.store.roots = [join(base, 'store')];
    agentConfig.pools.fileRoots = [join(base, 'pool')];
    agentConfig.http.port = port;
    const configDir = join(base, 'config');
    for (const dir of [
      configDir,
      agentConfig.stateDir,
      ...agentConfig.store.roots,
      ...agentConfig.pools.fileRoots,
    ])
      await mkdir(dir, { recursive: true });
    // configmap.yaml: agent.json is `toPrettyJson .Values.agentConfig`.
    await writeFile(join(configDir, 'agent.json'), JSON.stringify(agentConfig, null, 2));

    const ds = daemonSet();
    const pod = ds.spec.template.spec;
    const container = pod.containers[0]!;
    const secret = {
      AGENT_BROKER_URLS: brokerUrl(),
      AGENT_SIGNING_KEY: String((values.secret as { signingKey: string }).signingKey),
    };
    const env: string[] = [];
    for (const e of container.env) {
      let value: string;
      if (e.value !== undefined) value = e.value;
      else if (e.valueFrom?.fieldRef?.fieldPath === 'spec.nodeName') value = nodeName;
      else if (e.valueFrom?.secretKeyRef) value = secret[e.valueFrom.secretKeyRef.key as keyof typeof secret];
      else throw new Error(`env ${e.name}: a source this test does not render`);
      env.push('-e', `${e.name}=${value}`);
    }
    const hostPaths = values.hostPaths as Record<string, string>;
    const hostPathOf: Record<string, string> = {
      config: configDir,
      state: agentConfig.stateDir,
      dev: hostPaths.dev!,
      'lvm-run': hostPaths.lvmRun!,
      'lvm-lock': hostPaths.lvmLock!,
      'lvm-config': hostPaths.lvmConfig!,
      'libvirt-run': hostPaths.libvirtRun!,
    };
    // DirectoryOrCreate in the chart: create them as the kubelet would.
    await mkdir(hostPaths.lvmRun!, { recursive: true });
    await mkdir(hostPaths.lvmLock!, { recursive: true });
    const mounts: string[] = [];
    for (const m of container.volumeMounts) {
      if (m.mountPath === 'STUB') continue; // the ranged store/pool mounts, rendered below
      const source = hostPathOf[m.name];
      if (!source) throw new Error(`volumeMount ${m.name}: no host path known to this test`);
      const readOnly = (m as { readOnly?: boolean }).readOnly ? ':ro' : '';
      mounts.push('-v', `${source}:${m.mountPath}${readOnly}`);
    }
    for (const root of [...agentConfig.store.roots, ...agentConfig.pools.fileRoots])
      mounts.push('-v', `${root}:${root}:rslave`);
    const security = container.securityContext as { privileged: boolean; runAsUser?: number };

    const bus = await start(name, nodeName, [
      ...(security.privileged ? ['--privileged'] : []),
      ...(security.runAsUser !== undefined ? ['--user', String(security.runAsUser)] : []),
      ...env,
      ...mounts,
    ]);
    await waitReady(port);
    const result = await ping(bus);
    expect(result.hostId).toBe(nodeName);
    expect(await healthStatus(name)).toEqual({ run: 0, status: 'healthy' });
    const stopped = await stopWithSigterm(name);
    expect(stopped.exitCode).toBe(0);
  });
});
