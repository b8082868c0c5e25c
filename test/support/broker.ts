import { connect } from 'amqplib';
import { type AgentConfig, loadConfig } from '../../src/config/index.js';
import { messageOf } from '../../src/errors/index.js';
import { redactBrokerUrl } from '../../src/messaging/connection.js';
import type { TopologyNames } from '../../src/messaging/topology.js';

/**
 * The broker the integration suites use: TEST_AMQP_URL when set (these machines and CI),
 * otherwise a RabbitMQ started with testcontainers (needs a Docker engine).
 */
let container: { stop(): Promise<unknown> } | undefined;

export async function startBrokerIfNeeded(): Promise<string> {
  if (process.env.TEST_AMQP_URL) {
    await assertReachable(process.env.TEST_AMQP_URL);
    return process.env.TEST_AMQP_URL;
  }
  try {
    const { RabbitMQContainer } = await import('@testcontainers/rabbitmq');
    const started = await new RabbitMQContainer('rabbitmq:3.13-management').start();
    container = started;
    process.env.TEST_AMQP_URL = started.getAmqpUrl();
    return process.env.TEST_AMQP_URL;
  } catch (error) {
    throw new Error(
      'No RabbitMQ for the integration tests: TEST_AMQP_URL is not set and testcontainers could not start one ' +
        `(${messageOf(error)}). ` +
        'Set TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672 or provide a Docker engine.',
    );
  }
}

async function assertReachable(url: string): Promise<void> {
  try {
    const conn = await connect(url, { timeout: 5000 });
    await conn.close();
  } catch (error) {
    throw new Error(`TEST_AMQP_URL=${redactBrokerUrl(url)} is not reachable: ${messageOf(error)}`);
  }
}

export async function stopBroker(): Promise<void> {
  await container?.stop();
  container = undefined;
}

export function brokerUrl(): string {
  const url = process.env.TEST_AMQP_URL;
  if (!url) throw new Error('TEST_AMQP_URL is not set (global setup did not run?)');
  return url;
}

/** Deletes queues and exchanges a test made (whatever of them exists), each on a throwaway channel. */
export async function deleteBrokerObjects(objects: { queues: string[]; exchanges: string[] }): Promise<void> {
  const model = await connect(brokerUrl());
  model.on('error', () => undefined);
  try {
    const each = async (
      remove: (channel: Awaited<ReturnType<typeof model.createChannel>>) => Promise<unknown>,
    ) => {
      const channel = await model.createChannel();
      channel.on('error', () => undefined);
      await remove(channel).catch(() => undefined);
      await channel.close().catch(() => undefined);
    };
    for (const queue of objects.queues) await each((channel) => channel.deleteQueue(queue));
    for (const exchange of objects.exchanges) await each((channel) => channel.deleteExchange(exchange));
  } finally {
    await model.close().catch(() => undefined);
  }
}

/** Deletes an agent's queues and exchanges (after it stopped). */
export function deleteTopology(names: TopologyNames): Promise<void> {
  return deleteBrokerObjects({
    queues: [names.commandQueue, names.deadLetterQueue],
    exchanges: [names.commandsExchange, names.eventsExchange, names.deadLetterExchange],
  });
}

/** The agent's default topology (built-in defaults, no environment): what a host runs with. */
export function defaultTopology(): AgentConfig['topology'] {
  return loadConfig({ env: {} }).config.topology;
}
