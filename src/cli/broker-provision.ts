import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { closeChannel } from '../client/messages.js';
import type { AgentConfig } from '../config/index.js';
import type { BrokerConnection } from '../messaging/connection.js';
import { declareSharedTopology, declareTopology, topologyNames } from '../messaging/topology.js';
import { usageError } from './exit-codes.js';
import type { Rabbitmqctl, TopicPermissions, VhostPermissions } from './rabbitmqctl.js';

/** Default broker user of a host's agent: this prefix + the host id. */
export const HOST_USER_PREFIX = 'clvm-agent-';
export const MANAGEMENT_USER = 'clvm-management';

export interface BrokerRights {
  user: string;
  vhost: string;
  permissions: VhostPermissions;
  /** Unset: RabbitMQ's default (every routing key). */
  topic?: TopicPermissions;
}

const literal = (name: string) => name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const exactly = (...names: string[]) => (names.length === 1 ? `^${names[0]}$` : `^(${names.join('|')})$`);

/**
 * The rights of one host's agent, and nothing more (its queue and the shared objects are declared
 * by the provisioning, the agent only checks them: `topology.declare: false`):
 * - configure: nothing (the right to declare is also the right to delete);
 * - write: publish on the events exchange, and on the default exchange (terminal events to a
 *   command's replyTo);
 * - read: consume its own command queue (RabbitMQ's read right also allows purging it);
 * - topic permission on the events exchange: routing keys `<hostId>.…` only.
 * No read on the commands exchange: a binding there cannot be limited to one routing key, so it
 * would let a host bind its queue under another host's id and read that host's commands.
 * Dead-lettering into the dead-letter exchange happens inside the broker, without a user.
 */
export function hostRights(
  t: AgentConfig['topology'],
  vhost: string,
  hostId: string,
  user: string,
): BrokerRights {
  return {
    user,
    vhost,
    permissions: {
      configure: '^$',
      write: exactly(literal(t.eventsExchange), 'amq\\.default'),
      read: exactly(literal(`${t.queuePrefix}${hostId}`)),
    },
    topic: { exchange: t.eventsExchange, write: `^${literal(hostId)}\\.`, read: '^$' },
  };
}

/**
 * The management plane (and snapctl): declare the shared topology, publish commands, read and
 * replay dead letters, follow events through its own server-named queues (amq.gen-…).
 */
export function managementRights(t: AgentConfig['topology'], vhost: string, user: string): BrokerRights {
  const shared = [t.commandsExchange, t.eventsExchange, t.deadLetterExchange, t.deadLetterQueue].map(literal);
  const hostQueues = `${literal(t.queuePrefix)}.*`;
  return {
    user,
    vhost,
    permissions: {
      configure: exactly('amq\\.gen-.*', ...shared, hostQueues),
      write: exactly('amq\\.gen-.*', literal(t.commandsExchange), literal(t.deadLetterQueue), hostQueues),
      read: exactly(
        'amq\\.gen-.*',
        literal(t.eventsExchange),
        literal(t.commandsExchange),
        literal(t.deadLetterExchange),
        literal(t.deadLetterQueue),
      ),
    },
  };
}

/** The vhost of a broker URL (`amqp://h/` and `amqp://h` are "/"). */
export function vhostOf(url: string): string {
  const path = new URL(url).pathname;
  return path.length <= 1 ? '/' : decodeURIComponent(path.slice(1));
}

/** A password from a file (first line), or a new random one. */
export async function passwordFrom(
  file: string | undefined,
): Promise<{ password: string; generated: boolean }> {
  if (!file) return { password: randomBytes(24).toString('base64url'), generated: true };
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw usageError(`--password-file ${file}: ${(error as Error).message}`);
  }
  const password = text.split('\n')[0] ?? '';
  if (password.length < 12)
    throw usageError(`--password-file ${file}: the password must be 12 characters or more`);
  return { password, generated: false };
}

/** Creates (or re-sets) the user and applies exactly `rights`. */
export async function applyRights(
  ctl: Rabbitmqctl,
  rights: BrokerRights,
  password: string,
): Promise<'created' | 'updated'> {
  const outcome = await ctl.putUser(rights.user, password);
  await ctl.setPermissions(rights.vhost, rights.user, rights.permissions);
  if (rights.topic) await ctl.setTopicPermissions(rights.vhost, rights.user, rights.topic);
  return outcome;
}

/** Declares the shared exchanges, the dead-letter queue and `hostId`'s queue and binding (idempotent). */
export async function declareFor(
  connection: BrokerConnection,
  t: AgentConfig['topology'],
  hostId?: string,
): Promise<void> {
  const channel = await connection.openChannel();
  try {
    const declaring =
      hostId === undefined
        ? declareSharedTopology(channel, t)
        : declareTopology(channel, topologyNames({ hostId, topology: { ...t, declare: true } }), hostId);
    await connection.bounded(declaring, 'declare the topology');
  } finally {
    await closeChannel(connection, channel);
  }
}

/** Lines that show the rights (for the operator, and the docs' table). */
export function rightsLines(rights: BrokerRights): string[] {
  const lines = [
    `user ${rights.user} in vhost ${rights.vhost}`,
    `  configure  ${rights.permissions.configure}`,
    `  write      ${rights.permissions.write}`,
    `  read       ${rights.permissions.read}`,
  ];
  if (rights.topic) {
    lines.push(
      `  topic      ${rights.topic.exchange}: write ${rights.topic.write}  read ${rights.topic.read}`,
    );
  }
  return lines;
}
