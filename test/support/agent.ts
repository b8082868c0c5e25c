// Starts a real agent for tests — in-process (startAgent) or as a child process
// (`node --import tsx src/main.ts`) — with a temp state dir and unique host id, exchange and queue
// names, plus small AMQP helpers to send commands and collect events. stop() removes everything.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Channel, type ChannelModel, type ConsumeMessage, connect, type GetMessage } from 'amqplib';
import { type AgentConfig, loadConfig } from '../../src/config/index.js';
import type { HostProbe } from '../../src/handlers/index.js';
import type { CommandHandlerFn, HandlerRegistry } from '../../src/jobs/types.js';
import { type TopologyNames, topologyNames } from '../../src/messaging/topology.js';
import { createLogger } from '../../src/observability/logger.js';
import {
  type AgentEvent,
  type CommandType,
  eventKindOf,
  SIGNATURE_HEADER,
  signBody,
} from '../../src/protocol/index.js';
import { type RunningAgent, startAgent } from '../../src/service/agent.js';
import { brokerUrl, deleteTopology } from './broker.js';
import { expectOutboxEmpty, QueueFence } from './drain.js';
import { FAILPOINTS_PRELOAD } from './failpoints.js';
import { uniqueSuffix } from './names.js';
import { waitFor } from './wait.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface TestAgentOptions {
  /** 'in-process' (default): startAgent in this process. 'child': a real agent process. */
  mode?: 'in-process' | 'child';
  /** Config values over the test defaults (nested like the config file). */
  overrides?: Record<string, unknown>;
  /** In-process only: handlers registered through the HandlerRegistry. */
  handlers?: HandlerRegistry;
  /** In-process only: what ping reports (default: the real host probe, cached). */
  probe?: HostProbe;
  /** Child only: the entry module (default src/main.ts) and extra environment. */
  entry?: string;
  env?: Record<string, string>;
  /** Reuse a state dir (a restart of the "same" agent); it is then not deleted by stop(). */
  stateDir?: string;
  /** A restart of an earlier agent: its hostId, topology, store roots and pool roots. */
  reuse?: Pick<TestAgent, 'config'>;
  /** Wait until the consumer is registered (default true). */
  waitReady?: boolean;
}

export interface TestAgent {
  config: AgentConfig;
  names: TopologyNames;
  hostId: string;
  stateDir: string;
  /** Temp dir holding stateDir, store and pool roots. */
  workDir: string;
  /** In-process mode. */
  agent?: RunningAgent;
  /** Child mode. */
  child?: ChildProcess;
  /** Child mode: stdout + stderr so far. */
  output(): string;
  /** Child mode: resolves with the exit code/signal. */
  exited?: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Health server base URL (http://127.0.0.1:<port>). */
  httpUrl(): Promise<string>;
  /** Stops the agent (graceful), then deletes its queues, exchanges and temp dirs. */
  stop(): Promise<void>;
  /** Stops the agent only (keeps state and broker objects: for restart tests). */
  stopAgent(): Promise<void>;
}

/** Deep-merges plain objects; arrays and scalars of `b` win. */
function merge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const av = out[k];
    out[k] =
      v && typeof v === 'object' && !Array.isArray(v) && av && typeof av === 'object' && !Array.isArray(av)
        ? merge(av as Record<string, unknown>, v as Record<string, unknown>)
        : v;
  }
  return out;
}

/** Config values every test agent gets: unique names, temp dirs, local broker, fast reconnects. */
export function testConfigValues(workDir: string, suffix: string, stateDir: string): Record<string, unknown> {
  return {
    hostId: `test-${suffix}`,
    broker: { urls: [brokerUrl()], reconnectMinMs: 100, reconnectMaxMs: 1000, confirmTimeoutMs: 5000 },
    topology: {
      commandsExchange: `test.${suffix}.commands`,
      eventsExchange: `test.${suffix}.events`,
      queuePrefix: `test.${suffix}.agent.`,
      deadLetterExchange: `test.${suffix}.dlx`,
      deadLetterQueue: `test.${suffix}.dead`,
      deliveryLimit: 5,
    },
    stateDir,
    store: { roots: [join(workDir, 'store')] },
    pools: { fileRoots: [join(workDir, 'pools')], volumeGroups: [] },
    limits: { shutdownGraceMs: 10_000, progressIntervalMs: 100 },
    http: { host: '127.0.0.1', port: 0 },
    log: { level: 'silent' },
  };
}

/** A probe that answers at once (tests that do not check tool versions). */
export const fakeProbe: HostProbe = async () => ({
  tools: { qemuImg: 'test', qemu: 'test', libvirt: 'test', lvm2: 'test' },
  strategies: ['auto', 'offline'],
});

/**
 * A handler that takes `ms`, reporting progress every 50 ms, and stops (throwing the abort reason,
 * nothing to roll back) when its signal aborts. Test scaffolding for "mid-job" tests.
 */
export function slowHandler<T extends CommandType = 'snapshot.create'>(ms: number): CommandHandlerFn<T> {
  return async (ctx) => {
    const started = Date.now();
    let i = 0;
    while (Date.now() - started < ms) {
      ctx.signal.throwIfAborted();
      ctx.progress({
        step: 'sleep',
        stepIndex: 0,
        stepCount: 1,
        percent: Math.min(100, ((Date.now() - started) / ms) * 100),
      });
      await new Promise((r) => setTimeout(r, 50));
      i++;
    }
    return { sleptMs: Date.now() - started, ticks: i };
  };
}

/** Starts an agent for a test. Always call stop() (afterEach / finally). */
export async function startTestAgent(opts: TestAgentOptions = {}): Promise<TestAgent> {
  const workDir = await mkdtemp(join(tmpdir(), 'agent-test-'));
  const suffix = uniqueSuffix();
  const stateDir = opts.stateDir ?? join(workDir, 'state');
  await mkdir(join(workDir, 'store'), { recursive: true });
  await mkdir(join(workDir, 'pools'), { recursive: true });
  let values = testConfigValues(workDir, suffix, stateDir);
  if (opts.reuse) {
    // The same host: commands still queued for it name the earlier agent's roots.
    const { hostId, topology, store, pools } = opts.reuse.config;
    values = merge(values, {
      hostId,
      topology,
      store: { roots: store.roots },
      pools: { fileRoots: pools.fileRoots },
    });
  }
  values = merge(values, opts.overrides ?? {});
  const { config } = loadConfig({ env: {}, overrides: values });
  const names = topologyNames(config);
  let agent: RunningAgent | undefined;
  let child: ChildProcess | undefined;
  let exited: TestAgent['exited'];
  let out = '';

  if ((opts.mode ?? 'in-process') === 'in-process') {
    const logger =
      process.env.TEST_AGENT_LOG === '1'
        ? createLogger({ level: 'debug' })
        : createLogger({ level: 'silent' });
    agent = await startAgent({ config, logger, handlers: opts.handlers, probe: opts.probe ?? fakeProbe });
  } else {
    const configFile = join(workDir, 'config.json');
    await writeFile(configFile, JSON.stringify(merge(values, { log: { level: 'info' } })));
    const env: NodeJS.ProcessEnv = Object.fromEntries(
      Object.entries(process.env).filter(([k]) => !k.startsWith('AGENT_')),
    );
    // AGENT_FAILPOINTS: the test-only preload arms them in the agent's process.
    const preload = opts.env?.AGENT_FAILPOINTS ? ['--import', FAILPOINTS_PRELOAD] : [];
    child = spawn(process.execPath, ['--import', 'tsx', ...preload, opts.entry ?? 'src/main.ts'], {
      cwd: ROOT,
      env: { ...env, AGENT_CONFIG: configFile, ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
    });
    child.stderr!.on('data', (c: Buffer) => {
      out += c.toString();
    });
    const proc = child;
    exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  }

  const httpUrl = async (): Promise<string> => {
    if (agent) return `http://127.0.0.1:${agent.http.port}`;
    const port = await waitFor(
      () => {
        for (const line of out.split('\n')) {
          if (!line.includes('health server listening')) continue;
          return (JSON.parse(line) as { http: { port: number } }).http.port;
        }
        return undefined;
      },
      30_000,
      () => `child agent never logged its HTTP port; output:\n${out}`,
    );
    return `http://127.0.0.1:${port}`;
  };

  let agentStopped = false;
  const stopAgent = async () => {
    if (agentStopped) return;
    agentStopped = true;
    if (agent) await agent.stop('test over');
    if (child && exited) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child?.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(timer);
    }
  };
  const testAgent: TestAgent = {
    config,
    names,
    hostId: config.hostId,
    stateDir,
    workDir,
    agent,
    child,
    exited,
    output: () => out,
    httpUrl,
    stopAgent,
    async stop() {
      try {
        await stopAgent();
      } finally {
        await deleteTopology(names);
        await rm(workDir, { recursive: true, force: true });
      }
    },
  };

  if (opts.waitReady ?? true) {
    try {
      if (agent) {
        const running = agent;
        await waitFor(
          () => running.consumer.active || undefined,
          30_000,
          () => 'agent consumer never active',
        );
      } else {
        const url = await httpUrl();
        await waitFor(
          async () =>
            (await fetch(`${url}/readyz`).catch(() => undefined))?.status === 200 ? true : undefined,
          30_000,
          () => `child agent never ready; output:\n${out}`,
        );
      }
    } catch (error) {
      await testAgent.stop();
      throw error;
    }
  }
  return testAgent;
}

export interface ReceivedEvent {
  routingKey: string;
  event: AgentEvent;
  kind: string | undefined;
}

/**
 * A client on the test agent's broker: sends commands to its host queue and collects every event
 * of its events exchange (bound with `#` unless a pattern is given).
 */
export class TestClient {
  readonly events: ReceivedEvent[] = [];
  readonly replies: Array<{ correlationId: string | undefined; event: AgentEvent }> = [];
  private readonly fence = new QueueFence();
  private eventQueue = '';
  private constructor(
    private readonly conn: ChannelModel,
    private readonly ch: Channel,
    private readonly names: TopologyNames,
    private readonly hostId: string,
    readonly replyQueue: string,
  ) {}

  static async open(agent: Pick<TestAgent, 'names' | 'hostId'>, pattern = '#'): Promise<TestClient> {
    const conn = await connect(brokerUrl());
    const ch = await conn.createChannel();
    await ch.assertExchange(agent.names.eventsExchange, 'topic', { durable: true });
    const { queue } = await ch.assertQueue('', { exclusive: true, autoDelete: true });
    await ch.bindQueue(queue, agent.names.eventsExchange, pattern);
    const reply = await ch.assertQueue('', { exclusive: true, autoDelete: true });
    const client = new TestClient(conn, ch, agent.names, agent.hostId, reply.queue);
    client.eventQueue = queue;
    await ch.consume(
      queue,
      (m) => {
        if (!m || client.fence.take(m)) return;
        const event = JSON.parse(m.content.toString()) as AgentEvent;
        client.events.push({ routingKey: m.fields.routingKey, event, kind: eventKindOf(event.type) });
      },
      { noAck: true },
    );
    await ch.consume(
      reply.queue,
      (m: ConsumeMessage | null) => {
        if (!m) return;
        client.replies.push({
          correlationId: m.properties.correlationId as string | undefined,
          event: JSON.parse(m.content.toString()) as AgentEvent,
        });
      },
      { noAck: true },
    );
    return client;
  }

  /** Publishes a command (object → JSON, or raw bytes) to the agent's host queue. */
  async send(
    body: unknown,
    opts: {
      messageId?: string;
      replyTo?: string;
      correlationId?: string;
      headers?: Record<string, unknown>;
      signingKey?: string;
      /** AMQP content-type: default application/json; null sends none. */
      contentType?: string | null;
      contentEncoding?: string;
    } = {},
  ): Promise<void> {
    const raw = Buffer.isBuffer(body)
      ? body
      : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
    const headers = { ...opts.headers };
    if (opts.signingKey) headers[SIGNATURE_HEADER] = signBody(raw, opts.signingKey);
    const id =
      opts.messageId ?? (body && typeof body === 'object' ? (body as { id?: string }).id : undefined);
    this.ch.publish(this.names.commandsExchange, this.hostId, raw, {
      persistent: true,
      ...(opts.contentType === null ? {} : { contentType: opts.contentType ?? 'application/json' }),
      ...(opts.contentEncoding ? { contentEncoding: opts.contentEncoding } : {}),
      ...(id ? { messageId: id } : {}),
      ...(opts.replyTo ? { replyTo: opts.replyTo } : {}),
      ...(opts.correlationId ? { correlationId: opts.correlationId } : {}),
      headers,
    });
  }

  of(jobId: string): ReceivedEvent[] {
    return this.events.filter((e) => e.event.correlationid === jobId);
  }

  terminal(jobId: string): ReceivedEvent[] {
    return this.of(jobId).filter((e) => ['succeeded', 'failed', 'rejected'].includes(e.kind ?? ''));
  }

  /** Waits for the first terminal event of a job. */
  async waitTerminal(jobId: string, timeoutMs = 30_000): Promise<ReceivedEvent> {
    return waitFor(
      () => this.terminal(jobId)[0],
      timeoutMs,
      () => `no terminal event for ${jobId}`,
    );
  }

  /**
   * After `agent` stopped: every event it sent is in `events`, so a count taken now is final
   * (test/support/drain.ts).
   */
  async drain(agent: Pick<TestAgent, 'stateDir'>): Promise<void> {
    await expectOutboxEmpty(agent.stateDir);
    await this.fence.pass(this.ch, this.eventQueue);
  }

  /** Messages in the agent's dead-letter queue (read and put back: nack with requeue). */
  async deadLetters(): Promise<GetMessage[]> {
    const ch = await this.conn.createChannel();
    const found: GetMessage[] = [];
    try {
      for (;;) {
        const m = await ch.get(this.names.deadLetterQueue, { noAck: false });
        if (!m) break;
        found.push(m);
      }
    } finally {
      await ch.close(); // unacked messages return to the queue
    }
    return found;
  }

  async close(): Promise<void> {
    await this.conn.close().catch(() => undefined);
  }
}

/** A snapshot.create of LV vg0/`lv` into the agent's first store, directory `lv`, snapshot snap-1. */
export function lvmCreateCommand(agent: Pick<TestAgent, 'config'>, id: string, lv: string) {
  return {
    id,
    type: 'snapshot.create',
    params: {
      volume: { kind: 'lvm', vg: 'vg0', lv },
      store: { root: agent.config.store.roots[0], dir: lv },
      snapshot: 'snap-1',
    },
  };
}

/** Instant ping and snapshot.create handlers that record the job id of every run (`runs`). */
export function recordingHandlers(): { runs: string[]; handlers: HandlerRegistry } {
  const runs: string[] = [];
  const handlers: HandlerRegistry = {
    'agent.ping': async (ctx) => {
      runs.push(ctx.jobId);
      return {};
    },
    'snapshot.create': async (ctx) => {
      runs.push(ctx.jobId);
      return {};
    },
  };
  return { runs, handlers };
}
