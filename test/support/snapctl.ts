import { fileURLToPath } from 'node:url';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll } from 'vitest';
import { brokerUrl } from './broker.js';
import {
  type FakeAgent,
  type FakeAgentOptions,
  startFakeAgent,
  type Topology,
  uniqueHost,
  uniqueTopology,
} from './fake-agent.js';

const ENTRY = fileURLToPath(new URL('../../src/snapctl.ts', import.meta.url));
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Environment for snapctl children: no agent settings inherited from the developer's shell. */
function cleanEnv(extra: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && !key.startsWith('AGENT_')) env[key] = value;
  }
  return { ...env, ...extra };
}

/** Flags that point snapctl at one test's broker and topology. */
export function topologyFlags(url: string, topology: Topology): string[] {
  return [
    '--broker-url',
    url,
    '--commands-exchange',
    topology.commandsExchange,
    '--events-exchange',
    topology.eventsExchange,
    '--dead-letter-queue',
    topology.deadLetterQueue,
  ];
}

/** Starts snapctl as a child process (`node --import tsx src/snapctl.ts ...`), stdout/stderr piped. */
export function startSnapctl(args: readonly string[], env: Record<string, string> = {}): ResultPromise {
  return execa('node', ['--import', 'tsx', ENTRY, ...args], {
    cwd: ROOT,
    env: cleanEnv(env),
    extendEnv: false,
    reject: false,
    timeout: 90_000,
    stdin: 'ignore',
  });
}

export interface SnapctlRun {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Runs snapctl to the end. */
export async function snapctl(
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<SnapctlRun> {
  const result = await startSnapctl(args, env);
  return { exitCode: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
}

/** The last stdout line parsed as JSON (what `--json` prints). */
export function lastJson(stdout: string): Record<string, unknown> {
  const lines = stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1] ?? 'null') as Record<string, unknown>;
}

/** A long-running snapctl (watch, dashboard) whose stdout and stderr are collected as they come. */
export interface CollectedSnapctl {
  child: ResultPromise;
  out: string;
  err: string;
}

export function startSnapctlCollecting(
  args: readonly string[],
  env: Record<string, string> = {},
): CollectedSnapctl {
  const run: CollectedSnapctl = { child: startSnapctl(args, env), out: '', err: '' };
  run.child.stdout?.on('data', (c: Buffer) => {
    run.out += c.toString();
  });
  run.child.stderr?.on('data', (c: Buffer) => {
    run.err += c.toString();
  });
  return run;
}

/** The frame of a snapctl test file: a fake agent on its own topology and host, for all its tests. */
export interface FakeAgentFile {
  readonly topology: Topology;
  readonly hostId: string;
  /** snapctl's flags for this broker, topology and host (filled before the tests run). */
  readonly flags: string[];
  readonly agent: FakeAgent;
}

/** Starts the fake agent before all tests of the file and closes it after them. */
export function fakeAgentPerFile(
  label: string,
  hostLabel: string,
  options: Omit<FakeAgentOptions, 'url' | 'hostId' | 'topology'> = {},
): FakeAgentFile {
  const topology = uniqueTopology(label);
  const hostId = uniqueHost(hostLabel);
  const flags: string[] = [];
  let agent: FakeAgent | undefined;
  beforeAll(async () => {
    agent = await startFakeAgent({ url: brokerUrl(), hostId, topology, ...options });
    flags.push(...topologyFlags(brokerUrl(), topology), '--host', hostId);
  });
  afterAll(async () => {
    await agent?.close();
  });
  return {
    topology,
    hostId,
    flags,
    get agent() {
      if (!agent) throw new Error('the fake agent is read before beforeAll started it');
      return agent;
    },
  };
}
