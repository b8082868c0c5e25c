import type { Channel } from 'amqplib';
import { type AgentConfig, commandQueueName } from '../config/index.js';

/** Every exchange and queue name the agent uses, from config.topology. */
export interface TopologyNames {
  /** Direct exchange; routes a command to the host whose id is the routing key. */
  commandsExchange: string;
  /** Topic exchange for events (`<hostId>.<volumeKey>.<kind>`). */
  eventsExchange: string;
  /** This host's quorum queue: queuePrefix + hostId. */
  commandQueue: string;
  /** Fanout exchange the command queue dead-letters into. */
  deadLetterExchange: string;
  deadLetterQueue: string;
  /** Deliveries of one command before the quorum queue dead-letters it. */
  deliveryLimit: number;
  /**
   * True (default): the agent declares everything it uses. False (a broker user with per-host
   * rights from `snapctl broker provision-host`, which declared them): it only checks that they
   * exist (a passive declare needs no rights). Declaring needs the configure right, which also
   * allows deleting; binding to the direct commands exchange cannot be limited to one routing
   * key — so a least-privilege agent declares nothing.
   */
  declare?: boolean;
}

export function topologyNames(config: Pick<AgentConfig, 'hostId' | 'topology'>): TopologyNames {
  const t = config.topology;
  return {
    commandsExchange: t.commandsExchange,
    eventsExchange: t.eventsExchange,
    commandQueue: commandQueueName(config),
    deadLetterExchange: t.deadLetterExchange,
    deadLetterQueue: t.deadLetterQueue,
    deliveryLimit: t.deliveryLimit,
    declare: t.declare !== false,
  };
}

/**
 * Arguments of the per-host command queue. Anyone declaring the queue must pass exactly these
 * (RabbitMQ refuses a re-declaration with other arguments: 406 PRECONDITION_FAILED).
 * Quorum: replicated and durable. Single active consumer: if two agents run for one host, only
 * one gets commands. Delivery limit: a command that keeps crashing its consumer is dead-lettered.
 */
export function commandQueueArguments(names: TopologyNames): Record<string, unknown> {
  return {
    'x-queue-type': 'quorum',
    'x-single-active-consumer': true,
    'x-delivery-limit': names.deliveryLimit,
    'x-dead-letter-exchange': names.deadLetterExchange,
  };
}

/** Arguments of the shared dead-letter queue (quorum too: dead letters are what operators inspect). */
export function deadLetterQueueArguments(): Record<string, unknown> {
  return { 'x-queue-type': 'quorum' };
}

/**
 * Declares the durable events topic exchange (idempotent), or only checks it exists when the
 * topology is not the agent's to declare; the publisher calls it on every new channel.
 */
export async function declareEventsExchange(
  channel: Channel,
  names: Pick<TopologyNames, 'eventsExchange' | 'declare'>,
) {
  if (names.declare !== false) await channel.assertExchange(names.eventsExchange, 'topic', { durable: true });
  else await channel.checkExchange(names.eventsExchange);
}

/** The objects every host shares: commands, events and dead-letter exchanges, the dead-letter queue. */
export async function declareSharedTopology(
  channel: Channel,
  names: Omit<TopologyNames, 'commandQueue' | 'deliveryLimit'>,
): Promise<void> {
  await channel.assertExchange(names.commandsExchange, 'direct', { durable: true });
  await channel.assertExchange(names.eventsExchange, 'topic', { durable: true });
  await channel.assertExchange(names.deadLetterExchange, 'fanout', { durable: true });
  await channel.assertQueue(names.deadLetterQueue, { durable: true, arguments: deadLetterQueueArguments() });
  await channel.bindQueue(names.deadLetterQueue, names.deadLetterExchange, '');
}

/**
 * Declares (idempotently) everything a host's agent needs: the commands direct exchange, the
 * events topic exchange, the dead-letter fanout exchange and its queue, and the host's quorum
 * command queue bound with routing key = hostId. Runs on every (re)connect and after the queue
 * was deleted from outside, so the agent heals its own topology. With `declare: false` it only
 * checks that the exchanges and the host's queue exist (they were provisioned).
 */
export async function declareTopology(channel: Channel, names: TopologyNames, hostId: string): Promise<void> {
  if (names.declare === false) {
    await channel.checkExchange(names.commandsExchange);
    await channel.checkExchange(names.eventsExchange);
    await channel.checkExchange(names.deadLetterExchange);
    await channel.checkQueue(names.commandQueue);
    return;
  }
  await declareSharedTopology(channel, names);
  await channel.assertQueue(names.commandQueue, { durable: true, arguments: commandQueueArguments(names) });
  await channel.bindQueue(names.commandQueue, names.commandsExchange, hostId);
}
