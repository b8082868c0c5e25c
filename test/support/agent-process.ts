// A real agent process (src/main.ts via tsx) for end-to-end and crash tests, and a small AMQP
// client that sends commands and collects every event of one host. Written against the job
// layer's topology (declareTopology) so events published before a test looks are not lost.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { type Channel, type ChannelModel, connect } from 'amqplib';
import { declareTopology, topologyNames } from '../../src/messaging/topology.js';
import { type AgentEvent, eventKindOf } from '../../src/protocol/index.js';
import { brokerUrl, defaultTopology } from './broker.js';
import { expectOutboxEmpty, QueueFence } from './drain.js';
import { FAILPOINTS_PRELOAD } from './failpoints.js';

const ROOT = join(import.meta.dirname, '..', '..');

export interface AgentEnv {
  hostId: string;
  stateDir: string;
  storeRoot: string;
  poolRoot: string;
  logFile: string;
  failpoints?: string;
  liveRotate?: 'enabled' | 'disabled';
}

/** One agent process. `exited` resolves with how it ended. */
export class AgentProcess {
  private constructor(
    readonly child: ChildProcess,
    readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>,
  ) {}

  static start(env: AgentEnv): AgentProcess {
    const log = createWriteStream(env.logFile, { flags: 'a' });
    // The failpoints are armed by a test-only preload module in the agent's process.
    const args = ['--import', 'tsx', '--import', FAILPOINTS_PRELOAD, join(ROOT, 'src/main.ts')];
    const child = spawn(process.execPath, args, {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        AGENT_HOST_ID: env.hostId,
        AGENT_STATE_DIR: env.stateDir,
        AGENT_STORE_ROOTS: env.storeRoot,
        AGENT_POOL_ROOTS: env.poolRoot,
        AGENT_BROKER_URLS: brokerUrl(),
        AGENT_HTTP_PORT: '0',
        AGENT_HTTP_HOST: '127.0.0.1',
        AGENT_LOG_LEVEL: 'info',
        AGENT_FAILPOINTS: env.failpoints ?? '',
        AGENT_LIVE_ROTATE: env.liveRotate ?? 'disabled',
        AGENT_SHUTDOWN_GRACE_MS: '20000',
      },
    });
    child.stdout?.pipe(log, { end: false });
    child.stderr?.pipe(log, { end: false });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.on('exit', (code, signal) => resolve({ code, signal }));
    });
    return new AgentProcess(child, exited);
  }

  /** Graceful stop (SIGTERM), then SIGKILL if it takes longer than `ms`. */
  async stop(ms = 30_000): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), ms);
    await this.exited;
    clearTimeout(timer);
  }
}

/** Test side of the broker: declares the host's topology, sends commands, records events. */
export class HostBus {
  readonly events: AgentEvent[] = [];
  private waiters: Array<() => void> = [];
  private readonly fence = new QueueFence();

  private constructor(
    readonly hostId: string,
    private readonly model: ChannelModel,
    private readonly channel: Channel,
    private readonly queue: string,
    private readonly eventQueue: string,
  ) {}

  static async open(hostId: string): Promise<HostBus> {
    const model = await connect(brokerUrl());
    const channel = await model.createChannel();
    const names = topologyNames({ hostId, topology: defaultTopology() });
    await declareTopology(channel, names, hostId);
    const { queue } = await channel.assertQueue('', { exclusive: true, autoDelete: true });
    await channel.bindQueue(queue, names.eventsExchange, `${hostId}.#`);
    const bus = new HostBus(hostId, model, channel, names.commandQueue, queue);
    await channel.consume(
      queue,
      (msg) => {
        if (msg === null || bus.fence.take(msg)) return;
        bus.events.push(JSON.parse(msg.content.toString('utf8')) as AgentEvent);
        for (const wake of bus.waiters.splice(0)) wake();
      },
      { noAck: true },
    );
    return bus;
  }

  /** Publishes a command to this host's queue; returns its id. */
  send(type: string, params: unknown, id = `job-${randomBytes(6).toString('hex')}`): string {
    const body = Buffer.from(JSON.stringify({ id, type, params }));
    this.channel.publish('clvm.commands', this.hostId, body, {
      messageId: id,
      persistent: true,
      contentType: 'application/json',
    });
    return id;
  }

  /** Events of one job (correlationid), optionally of one kind. */
  eventsOf(jobId: string, kind?: string): AgentEvent[] {
    return this.events.filter(
      (e) => e.correlationid === jobId && (kind === undefined || eventKindOf(e.type) === kind),
    );
  }

  terminalsOf(jobId: string): AgentEvent[] {
    return this.eventsOf(jobId).filter((e) =>
      ['succeeded', 'failed', 'rejected'].includes(eventKindOf(e.type) ?? ''),
    );
  }

  /** Waits until `predicate` holds over the events seen so far. */
  async waitFor(what: string, predicate: () => boolean, timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 500));
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  async waitForTerminal(jobId: string, timeoutMs = 60_000): Promise<AgentEvent> {
    await this.waitFor(`a terminal event of ${jobId}`, () => this.terminalsOf(jobId).length > 0, timeoutMs);
    return this.terminalsOf(jobId)[0]!;
  }

  async waitForStarted(count: number, timeoutMs = 30_000): Promise<void> {
    await this.waitFor(
      `${count} started event(s)`,
      () => this.events.filter((e) => eventKindOf(e.type) === 'started').length >= count,
      timeoutMs,
    );
  }

  /**
   * After the agent stopped (`stateDir` is its state): every event it sent is in `events`, so a
   * count taken now is final. See test/support/drain.ts.
   */
  async drain(stateDir: string): Promise<void> {
    await expectOutboxEmpty(stateDir);
    await this.fence.pass(this.channel, this.eventQueue);
  }

  /** Deletes the host's command queue and closes the connection. */
  async close(): Promise<void> {
    await this.channel.deleteQueue(this.queue);
    await this.model.close();
  }
}
