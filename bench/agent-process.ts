// What the benches that run a real agent process share: a temp dir with a config of unique broker
// names, the agent's environment, waiting for /readyz, and removing the names again.
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChannelModel } from 'amqplib';

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  await new Promise((r) => server.close(r));
  return port;
}

/** A temp dir holding `config.json`: names prefixed `<prefix>-<pid>-<random>`, state, store and pools inside the dir. */
export async function agentWorkDir(prefix: string, brokerUrl: string) {
  const suffix = `${prefix}-${process.pid}-${randomBytes(3).toString('hex')}`;
  const work = await mkdtemp(join(tmpdir(), `${prefix}-`));
  const port = await freePort();
  const config = {
    hostId: suffix,
    broker: { urls: [brokerUrl] },
    topology: {
      commandsExchange: `${suffix}.commands`,
      eventsExchange: `${suffix}.events`,
      queuePrefix: `${suffix}.agent.`,
      deadLetterExchange: `${suffix}.dlx`,
      deadLetterQueue: `${suffix}.dead`,
    },
    stateDir: join(work, 'state'),
    store: { roots: [join(work, 'store')] },
    pools: { fileRoots: [join(work, 'pools')] },
    http: { host: '127.0.0.1', port },
    log: { level: 'warn' },
  };
  const configFile = join(work, 'config.json');
  await writeFile(configFile, JSON.stringify(config));
  return { suffix, work, port, config, configFile };
}

/** This process's environment without AGENT_* (they would override the config), plus AGENT_CONFIG. */
export function agentEnv(configFile: string): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('AGENT_')));
  return { ...env, AGENT_CONFIG: configFile };
}

/** Polls /readyz until 200; fails after 60 s or when the agent exits. */
export async function waitReady(port: number, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const ready = await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined);
    if (ready?.status === 200) return;
    if (Date.now() > deadline || child.exitCode !== null) throw new Error('the agent did not become ready');
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Stops the agent, deletes its queues and exchanges, closes `conn` and removes the temp dir. */
export async function stopAndRemove(
  child: ChildProcess,
  exited: Promise<unknown>,
  conn: ChannelModel,
  { suffix, work, config }: Awaited<ReturnType<typeof agentWorkDir>>,
): Promise<void> {
  child.kill('SIGTERM');
  await exited;
  const ch = await conn.createChannel();
  await ch.deleteQueue(`${suffix}.agent.${suffix}`);
  await ch.deleteQueue(config.topology.deadLetterQueue);
  for (const x of [
    config.topology.commandsExchange,
    config.topology.eventsExchange,
    config.topology.deadLetterExchange,
  ]) {
    await ch.deleteExchange(x);
  }
  await conn.close();
  await rm(work, { recursive: true, force: true });
}
