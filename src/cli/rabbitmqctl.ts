import { HostCommandError } from '../errors/index.js';
import { runTool } from '../host/exec.js';

/** RabbitMQ permissions of one user in one vhost: regular expressions over resource names. */
export interface VhostPermissions {
  configure: string;
  write: string;
  read: string;
}

/** Topic permissions on one topic exchange: regular expressions over routing keys. */
export interface TopicPermissions {
  exchange: string;
  write: string;
  read: string;
}

export interface RabbitmqctlOptions {
  /** Timeout of one call (rabbitmqctl starts an Erlang VM: seconds, not milliseconds). */
  timeoutMs: number;
  /** `-n <node>`; default: rabbitmqctl's own (the local node). */
  node?: string;
  binary?: string;
}

/**
 * The rabbitmqctl adapter (the only place that runs it): users, permissions and topic
 * permissions. snapctl's, not the agent's (hence not in src/host: the agent image has no
 * rabbitmqctl, and no agent needs it). Passwords go through stdin, never the argument list (which `ps` shows).
 * Needs to run where rabbitmqctl can reach the node (its Erlang cookie).
 */
export class Rabbitmqctl {
  constructor(private readonly opts: RabbitmqctlOptions) {}

  private run(args: readonly string[], input?: string) {
    const node = this.opts.node ? ['-n', this.opts.node] : [];
    return runTool(this.opts.binary ?? 'rabbitmqctl', [...node, ...args], {
      timeoutMs: this.opts.timeoutMs,
      ...(input === undefined ? {} : { input }),
    });
  }

  async listUsers(): Promise<string[]> {
    const { stdout } = await this.run(['list_users', '--quiet', '--formatter', 'json']);
    return (JSON.parse(stdout) as Array<{ user: string }>).map((u) => u.user);
  }

  /** Creates the user, or sets a new password when it exists. Returns which. */
  async putUser(user: string, password: string): Promise<'created' | 'updated'> {
    try {
      await this.run(['add_user', '--', user], password);
      return 'created';
    } catch (error) {
      // rabbitmqctl exits 70 with `User "<name>" already exists`; anything else is a real failure.
      if (!(error instanceof HostCommandError && /already exists/.test(error.stderr))) throw error;
    }
    await this.run(['change_password', '--', user], password);
    return 'updated';
  }

  async deleteUser(user: string): Promise<void> {
    await this.run(['delete_user', '--', user]);
  }

  async setPermissions(vhost: string, user: string, p: VhostPermissions): Promise<void> {
    await this.run(['set_permissions', '-p', vhost, '--', user, p.configure, p.write, p.read]);
  }

  async setTopicPermissions(vhost: string, user: string, p: TopicPermissions): Promise<void> {
    await this.run(['set_topic_permissions', '-p', vhost, '--', user, p.exchange, p.write, p.read]);
  }
}
