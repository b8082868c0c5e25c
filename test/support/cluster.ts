// The 3-node RabbitMQ cluster of scripts/rabbit-cluster.sh, for tests and bench/fleet.ts: start,
// stop, kill -9, freeze/thaw and restart nodes, find a quorum queue's leader, wait until healthy.
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

const SCRIPT = fileURLToPath(new URL('../../scripts/rabbit-cluster.sh', import.meta.url));

export type NodeNo = 1 | 2 | 3;
export const NODES: readonly NodeNo[] = [1, 2, 3];

/** AMQP URL of node n (guest is allowed from 127.0.0.1: loopback_users = none). */
export function clusterUrl(n: NodeNo): string {
  return `amqp://guest:guest@127.0.0.1:${5700 + n}`;
}

export const CLUSTER_URLS: readonly string[] = NODES.map(clusterUrl);

/** Node number of a URL or log string naming port 570N (e.g. `amqp://127.0.0.1:5702/`). */
export function nodeOfUrl(url: string): NodeNo {
  const match = /:570([123])\b/.exec(url);
  if (!match) throw new Error(`not a cluster URL: ${url}`);
  return Number(match[1]) as NodeNo;
}

async function run(args: string[], timeoutMs = 180_000): Promise<string> {
  const { stdout } = await execa('bash', [SCRIPT, ...args], { timeout: timeoutMs });
  return stdout.trim();
}

export const cluster = {
  /** Starts (or completes) the cluster; sweeps nodes a killed run left behind. ~13 s from nothing. */
  start: () => run(['start']),
  /** Kills every node and deletes the cluster's directory. */
  stop: () => run(['stop']),
  kill: (n: NodeNo) => run(['kill', String(n)]),
  freeze: (n: NodeNo) => run(['freeze', String(n)]),
  thaw: (n: NodeNo) => run(['thaw', String(n)]),
  startNode: (n: NodeNo) => run(['start-node', String(n)]),
  stopNode: (n: NodeNo) => run(['stop-node', String(n)]),
  ctl: (n: NodeNo, ...args: string[]) => run(['ctl', String(n), ...args], 30_000),
  /** rabbitmqctl with a longer bound (a memory breakdown of thousands of processes on a busy node). */
  slowCtl: (n: NodeNo, timeoutMs: number, ...args: string[]) => run(['ctl', String(n), ...args], timeoutMs),
  /** OS pid of node n's Erlang VM. */
  pid: (n: NodeNo) => run(['pid', String(n)], 10_000),

  /** The node whose Raft member leads quorum queue `queue`. */
  async leaderOf(queue: string): Promise<NodeNo> {
    const name = await run(['leader', queue], 30_000);
    const match = /^clu([123])@/.exec(name);
    if (!match) throw new Error(`unexpected leader ${JSON.stringify(name)} for ${queue}`);
    return Number(match[1]) as NodeNo;
  },

  /**
   * Waits until all three nodes run and see each other, and (when given) every member of each
   * quorum queue is online: the state every failover case starts from.
   */
  async waitHealthy(queues: readonly string[] = [], timeoutMs = 120_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      try {
        const status = JSON.parse(await cluster.ctl(1, 'cluster_status', '--formatter', 'json')) as {
          running_nodes?: string[];
          partitions?: Record<string, unknown>;
        };
        const running = status.running_nodes ?? [];
        const partitioned = Object.keys(status.partitions ?? {}).length > 0;
        let queuesOk = true;
        if (queues.length > 0 && running.length === 3 && !partitioned) {
          const rows = JSON.parse(
            await cluster.ctl(1, 'list_queues', 'name', 'online', '--formatter', 'json'),
          ) as Array<{ name: string; online?: string[] }>;
          queuesOk = queues.every((q) => (rows.find((r) => r.name === q)?.online ?? []).length === 3);
        }
        if (running.length === 3 && !partitioned && queuesOk) return;
        last = `running ${running.join(',')}, partitions ${JSON.stringify(status.partitions)}, queues ok ${queuesOk}`;
      } catch (error) {
        last = error instanceof Error ? error.message : String(error);
      }
      if (Date.now() > until) throw new Error(`cluster not healthy within ${timeoutMs} ms: ${last}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  },
};
