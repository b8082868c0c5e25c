// A tiny stand-in for the agent's messaging side, for snapctl and dashboard tests: declares a
// host queue, answers commands with real CloudEvents built from the protocol schemas, and can
// fail, hang, reject (bad signature) or dead-letter on demand. The real agent is tested with
// test/support/agent.ts where it matters; this one makes each outcome reachable on purpose.
import { randomBytes } from 'node:crypto';
import { type Channel, type ChannelModel, type ConsumeMessage, connect } from 'amqplib';
import {
  type AgentEvent,
  type Command,
  commandSchema,
  type EventData,
  type EventKind,
  eventRoutingKey,
  eventSchema,
  eventTypePrefix,
  SIGNATURE_HEADER,
  type VolumeRef,
  verifySignature,
} from '../../src/protocol/index.js';
import { deleteBrokerObjects } from './broker.js';
import { uniqueSuffix } from './names.js';

export type Behaviour = 'succeed' | 'fail' | 'hang' | 'dead-letter';

export interface Topology {
  commandsExchange: string;
  eventsExchange: string;
  deadLetterExchange: string;
  deadLetterQueue: string;
}

/** Exchange and queue names unique to one test (so files can run in parallel). */
export function uniqueTopology(label: string): Topology {
  const tag = `${label}-${uniqueSuffix()}`;
  return {
    commandsExchange: `test.cmd.${tag}`,
    eventsExchange: `test.evt.${tag}`,
    deadLetterExchange: `test.dlx.${tag}`,
    deadLetterQueue: `test.dead.${tag}`,
  };
}

/** A short host id (job ids built on it stay short enough for snapctl to print whole). */
export function uniqueHost(label: string): string {
  return `${label}-${randomBytes(3).toString('hex')}`;
}

/** A CloudEvent of ours, validated with the protocol schema before it is returned. */
export function makeEvent<K extends EventKind>(
  kind: K,
  fields: {
    hostId: string;
    volume?: VolumeRef | null;
    correlationid: string;
    sequence: number;
    data: EventData<K>;
    time?: Date;
  },
): AgentEvent {
  return eventSchema.parse({
    specversion: '1.0',
    id: `evt-${randomBytes(6).toString('hex')}`,
    source: `clvm-snapshot-agent/${fields.hostId}`,
    type: `${eventTypePrefix}${kind}`,
    subject: fields.volume ? volumeSubject(fields.volume) : 'agent',
    time: (fields.time ?? new Date()).toISOString(),
    datacontenttype: 'application/json',
    correlationid: fields.correlationid,
    sequence: String(fields.sequence).padStart(10, '0'),
    data: fields.data,
  });
}

function volumeSubject(volume: VolumeRef): string {
  return eventRoutingKey('h', volume, 'accepted').split('.')[1] ?? 'agent';
}

/** Publishes one event on the events exchange with its routing key. */
export function publishEvent(
  channel: Channel,
  exchange: string,
  event: AgentEvent,
  volume: VolumeRef | null,
): void {
  const kind = event.type.slice(eventTypePrefix.length) as EventKind;
  const hostId = event.source.split('/')[1] ?? '';
  channel.publish(exchange, eventRoutingKey(hostId, volume, kind), Buffer.from(JSON.stringify(event)), {
    contentType: 'application/cloudevents+json',
    messageId: event.id,
    correlationId: event.correlationid,
  });
}

/** Declares the test topology (exchanges, DLX, DLQ) like the agent would. */
export async function declareTopology(channel: Channel, topology: Topology): Promise<void> {
  await channel.assertExchange(topology.commandsExchange, 'direct', { durable: false, autoDelete: false });
  await channel.assertExchange(topology.eventsExchange, 'topic', { durable: false, autoDelete: false });
  await channel.assertExchange(topology.deadLetterExchange, 'fanout', { durable: false, autoDelete: false });
  await channel.assertQueue(topology.deadLetterQueue, { durable: false, autoDelete: false });
  await channel.bindQueue(topology.deadLetterQueue, topology.deadLetterExchange, '');
}

/** Deletes what {@link declareTopology} made. */
export function deleteTestTopology(topology: Topology): Promise<void> {
  return deleteBrokerObjects({
    queues: [topology.deadLetterQueue],
    exchanges: [topology.commandsExchange, topology.eventsExchange, topology.deadLetterExchange],
  });
}

export interface FakeAgentOptions {
  url: string;
  hostId: string;
  topology: Topology;
  /** When set, commands must carry a valid signature; others are rejected. */
  signingKey?: string;
  /** What to do with each command (default: succeed). */
  behaviour?: (command: Command) => Behaviour;
  /** Send terminal events only to replyTo (not the events exchange): proves snapctl reads replies. */
  terminalOnlyToReplyTo?: boolean;
  /** Progress events per snapshot.create (default 4), spaced by `progressGapMs`. */
  progressSteps?: number;
  progressGapMs?: number;
}

export interface FakeAgent {
  /** Every command received, parsed (valid ones only). */
  received: Command[];
  setBehaviour(fn: (command: Command) => Behaviour): void;
  close(): Promise<void>;
}

/** Starts the fake agent: its queue is bound to the commands exchange with the host id. */
export async function startFakeAgent(options: FakeAgentOptions): Promise<FakeAgent> {
  const connection: ChannelModel = await connect(options.url);
  const channel = await connection.createChannel();
  await declareTopology(channel, options.topology);
  const queue = `test.agent.${options.hostId}`;
  await channel.assertQueue(queue, {
    durable: false,
    autoDelete: false,
    arguments: { 'x-dead-letter-exchange': options.topology.deadLetterExchange },
  });
  await channel.bindQueue(queue, options.topology.commandsExchange, options.hostId);
  const received: Command[] = [];
  let behaviour = options.behaviour ?? (() => 'succeed' as const);

  const handle = async (message: ConsumeMessage): Promise<void> => {
    const replyTo = message.properties.replyTo as string | undefined;
    let sequence = 0;
    const emit = <K extends EventKind>(
      kind: K,
      correlationid: string,
      volume: VolumeRef | null,
      data: EventData<K>,
    ) => {
      const event = makeEvent(kind, {
        hostId: options.hostId,
        volume,
        correlationid,
        sequence: ++sequence,
        data,
      });
      const terminal = kind === 'succeeded' || kind === 'failed' || kind === 'rejected';
      if (!(terminal && options.terminalOnlyToReplyTo)) {
        publishEvent(channel, options.topology.eventsExchange, event, volume);
      }
      if (terminal && replyTo) {
        channel.sendToQueue(replyTo, Buffer.from(JSON.stringify(event)), { correlationId: correlationid });
      }
    };
    const id = (message.properties.messageId as string | undefined) ?? 'unknown';
    if (
      options.signingKey &&
      !verifySignature(message.content, options.signingKey, message.properties.headers?.[SIGNATURE_HEADER])
    ) {
      emit('rejected', id, null, {
        jobId: id,
        commandType: (message.properties.type as string | undefined) ?? null,
        error: { code: 'SIGNATURE_INVALID', message: 'missing or bad x-signature', retryable: false },
      });
      channel.ack(message);
      return;
    }
    const parsed = commandSchema.safeParse(JSON.parse(message.content.toString('utf8')));
    if (!parsed.success) {
      emit('rejected', id, null, {
        jobId: id,
        commandType: null,
        error: { code: 'SCHEMA_INVALID', message: parsed.error.message, retryable: false },
      });
      channel.ack(message);
      return;
    }
    const command = parsed.data;
    received.push(command);
    const what = behaviour(command);
    if (what === 'dead-letter') {
      channel.nack(message, false, false);
      return;
    }
    channel.ack(message);
    const volume =
      'volume' in command.params ? ((command.params.volume as VolumeRef | undefined) ?? null) : null;
    emit('accepted', command.id, volume, { jobId: command.id, commandType: command.type, volume });
    if (what === 'hang') return;
    if (command.type === 'snapshot.create' && what === 'succeed') {
      const steps = options.progressSteps ?? 4;
      const total = 8 * 1024 * 1024;
      for (let i = 0; i < steps; i += 1) {
        await new Promise((r) => setTimeout(r, options.progressGapMs ?? 150));
        const done = Math.round((total * (i + 1)) / (steps + 1));
        emit('progress', command.id, volume, {
          jobId: command.id,
          step: 'export',
          stepIndex: 1,
          stepCount: 3,
          percent: Math.round(((i + 1) / (steps + 1)) * 100),
          bytesDone: done,
          bytesTotal: total,
          bytesPerSecond: 2 * 1024 * 1024,
        });
      }
    }
    if (what === 'fail') {
      emit('failed', command.id, volume, {
        jobId: command.id,
        commandType: command.type,
        durationMs: 5,
        error: { code: 'NOT_IMPLEMENTED', message: `${command.type} is not implemented`, retryable: false },
        rolledBack: true,
        retryable: false,
      });
      return;
    }
    emit('succeeded', command.id, volume, {
      jobId: command.id,
      commandType: command.type,
      durationMs: 42,
      result: resultFor(command, options.hostId),
    });
  };

  const { consumerTag } = await channel.consume(queue, (message) => {
    if (message) void handle(message);
  });
  return {
    received,
    setBehaviour: (fn) => {
      behaviour = fn;
    },
    close: async () => {
      await channel.cancel(consumerTag);
      await channel.deleteQueue(queue);
      await connection.close();
      await deleteTestTopology(options.topology);
    },
  };
}

function resultFor(command: Command, hostId: string): Record<string, unknown> {
  if (command.type === 'agent.ping') {
    return {
      agentVersion: '0.0.0-fake',
      hostId,
      tools: { qemuImg: '7.2.0', qemu: '7.2.0', libvirt: '9.0.0', lvm2: null },
      strategies: ['offline'],
    };
  }
  if (command.type === 'snapshot.create') {
    return {
      snapshot: {
        name: command.params.snapshot,
        path: `${command.params.store.root}/${command.params.store.dir}/${command.params.snapshot}`,
        parent: command.params.parents.at(-1) ?? null,
        kind: command.params.parents.length === 0 ? 'full' : 'delta',
        physicalSize: 3 * 1024 * 1024,
        virtualSize: 16 * 1024 * 1024,
        chainDepth: command.params.parents.length + 1,
      },
      strategy: { name: 'offline', reason: 'no VM' },
      vmPauseMs: 0,
      activePath: '/dev/vg0/vol',
      steps: [],
    };
  }
  return { ok: true };
}
