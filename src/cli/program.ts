import { Command as Commander, CommanderError, InvalidArgumentError, Option } from 'commander';
import { AgentClient, type AgentClientOptions, openBrokerConnection } from '../client/index.js';
import type { TerminalEvent } from '../client/send-and-wait.js';
import { type AgentConfig, loadConfig } from '../config/index.js';
import { AgentError, messageOf } from '../errors/index.js';
import { brokerTlsOptions } from '../messaging/broker-tls.js';
import type { BrokerConnection } from '../messaging/connection.js';
import {
  type Command,
  type CommandType,
  ENVELOPE_FIELD_PATTERNS,
  EVENT_KINDS,
  type EventKind,
  strategyName,
} from '../protocol/index.js';
import {
  applyRights,
  type BrokerRights,
  declareFor,
  HOST_USER_PREFIX,
  hostRights,
  MANAGEMENT_USER,
  managementRights,
  passwordFrom,
  rightsLines,
  vhostOf,
} from './broker-provision.js';
import { buildCommand, parseList, parseVolume } from './command-builder.js';
import { type DeadLetterDetail, peekDeadLetters, replayDeadLetters, summaryOf } from './dlq.js';
import { eventLine } from './event-lines.js';
import { EXIT, type ExitCode, exitCodeOf, usageError } from './exit-codes.js';
import { formatBytes } from './format.js';
import { type CliIo, writeJson, writeLine } from './io.js';
import { createJobProgressView } from './progress-view.js';
import { Rabbitmqctl } from './rabbitmqctl.js';
import { DEFAULT_COMMAND_LIFETIME_S, loadSigner, writeKeyPair } from './signing-keys.js';
import { watchEvents } from './watch.js';

/** Options every snapctl command accepts (commander merges them from any position). */
interface GlobalOptions {
  config?: string;
  brokerUrl?: string[];
  host?: string;
  signingKey?: string;
  signingKeyFile?: string;
  keyId?: string;
  lifetime?: number;
  commandsExchange?: string;
  eventsExchange?: string;
  deadLetterQueue?: string;
  timeout?: number;
  replyTo?: boolean;
  id?: string;
  json?: boolean;
}

/** Default wait for a terminal event, per command type, in seconds (--timeout overrides). */
const DEFAULT_TIMEOUT_S: Record<CommandType, number> = {
  'agent.ping': 30,
  'job.cancel': 60,
  'snapshot.create': 3600,
  'snapshot.delete': 3600,
  'snapshot.revert': 3600,
  'chain.verify': 3600,
  'volume.resize': 600,
};

/**
 * Serves the dashboard for `config`'s broker and events exchange on `listen` (src/snapctl.ts
 * passes the real one in: the CLI and the dashboard import nothing of each other).
 */
export type DashboardStarter = (
  config: AgentConfig,
  listen: { port: number; host: string },
) => Promise<{ url: string; close(): Promise<void> }>;

export interface SnapctlContext {
  startDashboard: DashboardStarter;
  env?: NodeJS.ProcessEnv;
  /** Stops `watch` and `dashboard` (default: the first SIGINT or SIGTERM). */
  stopSignal?: AbortSignal;
}

/**
 * Runs snapctl with `argv` (without node and script) and returns the exit code. Never throws:
 * every error becomes one message (no stack trace) and a documented exit code.
 */
export async function runSnapctl(
  argv: readonly string[],
  io: CliIo,
  context: SnapctlContext,
): Promise<ExitCode> {
  let exitCode: ExitCode = EXIT.ok;
  const program = buildProgram(io, context, (code) => {
    exitCode = code;
  });
  const json = argv.includes('--json');
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return exitCode;
  } catch (error) {
    if (error instanceof CommanderError) {
      // Commander already printed its message (or the help) through configureOutput.
      if (error.code === 'commander.helpDisplayed' || error.code === 'commander.version') return EXIT.ok;
      if (json)
        writeJson(io, { ok: false, exitCode: EXIT.usage, error: { code: 'USAGE', message: error.message } });
      return EXIT.usage;
    }
    const code = exitCodeOf(error);
    const agentError = error instanceof AgentError ? error : undefined;
    const message = messageOf(error);
    if (json) {
      writeJson(io, { ok: false, exitCode: code, error: { code: agentError?.code ?? 'ERROR', message } });
    } else {
      writeLine(io.stderr, `snapctl: ${message}`);
      if (code === EXIT.usage) writeLine(io.stderr, '(run snapctl --help, or snapctl <command> --help)');
    }
    return code;
  }
}

function buildProgram(io: CliIo, context: SnapctlContext, setExit: (code: ExitCode) => void): Commander {
  const env = context.env ?? process.env;
  const stopSignal = context.stopSignal;
  const program = new Commander('snapctl')
    .description(
      'Operate clvm-snapshot-agent: send commands, watch events, handle dead letters, serve the dashboard.',
    )
    .exitOverride()
    .configureOutput({
      writeOut: (text) => io.stdout.write(text),
      writeErr: (text) => io.stderr.write(text),
    })
    .showHelpAfterError('(run snapctl --help, or snapctl <command> --help)')
    .option('-c, --config <file>', 'agent config file (default: $AGENT_CONFIG, else built-in defaults)')
    .option(
      '--broker-url <url>',
      'RabbitMQ URL; repeat for fallbacks (default: config broker.urls)',
      collect,
      undefined,
    )
    .option(
      '--host <id>',
      'target host id (default: config hostId; for watch/dlq: all hosts / original host)',
    )
    .option(
      '--signing-key-file <file>',
      'Ed25519 private key (PEM) that signs commands (default: $SNAPCTL_SIGNING_KEY_FILE)',
    )
    .option('--key-id <id>', 'key id of --signing-key-file, as the agents know it (default: $SNAPCTL_KEY_ID)')
    .option(
      '--lifetime <seconds>',
      `how long a signed command stays valid (default ${DEFAULT_COMMAND_LIFETIME_S})`,
      positiveInteger,
    )
    .option(
      '--signing-key <key>',
      'LEGACY shared HMAC key (prefer $AGENT_SIGNING_KEY: flags show in ps; prefer --signing-key-file)',
    )
    .option('--commands-exchange <name>', 'commands exchange (default: config topology.commandsExchange)')
    .option('--events-exchange <name>', 'events exchange (default: config topology.eventsExchange)')
    .option('--dead-letter-queue <name>', 'dead-letter queue (default: config topology.deadLetterQueue)')
    .option('--timeout <seconds>', 'how long to wait for the result', positiveNumber)
    .option('--reply-to', 'also ask for the result as an RPC reply (RabbitMQ direct reply-to)')
    .option('--id <command-id>', 'command id (default: snapctl-<uuid>); reuse it to ask again idempotently')
    .option('--json', 'machine-readable output: one JSON document per line on stdout');

  const send = (type: CommandType, params: (opts: Record<string, unknown>) => Record<string, unknown>) =>
    async function (this: Commander, ...args: unknown[]): Promise<void> {
      const opts = this.optsWithGlobals<GlobalOptions & Record<string, unknown>>();
      // Positional arguments come first; keep them under their names for the params builder.
      const named = { ...opts, args: args.slice(0, -2) };
      const command = buildCommand(type, params(named), opts.id);
      setExit(await sendCommand(io, env, opts, command));
    };

  program
    .command('keys')
    .description('command signing keys')
    .command('generate')
    .description('write a new Ed25519 key pair: <out>.key (private, 0600) and <out>.pub')
    .requiredOption('--out <prefix>', 'path prefix of the two files (never overwritten)')
    .action(async function (this: Commander) {
      // --key-id (the id agents will know the public key by) is the global option.
      const opts = this.optsWithGlobals<GlobalOptions & { out: string }>();
      if (!opts.keyId || !ENVELOPE_FIELD_PATTERNS.keyId.test(opts.keyId))
        throw usageError('keys generate needs --key-id <id> (1-64 letters, digits, _.:-)');
      const written = await writeKeyPair(opts.out);
      const entry = { [opts.keyId]: written.publicRaw };
      if (opts.json) writeJson(io, { ok: true, keyId: opts.keyId, ...written });
      else {
        writeLine(io.stdout, `private key: ${written.privateFile} (keep it on the management plane only)`);
        writeLine(io.stdout, `public key:  ${written.publicFile}`);
        writeLine(io.stdout, `agent config (security.publicKeys): ${JSON.stringify(entry)}`);
        writeLine(io.stdout, `or in the environment: AGENT_PUBLIC_KEYS=${opts.keyId}=${written.publicRaw}`);
      }
    });

  const broker = program
    .command('broker')
    .description('broker users and rights (runs rabbitmqctl on a broker node)');
  const provisionOptions = (c: Commander) =>
    c
      .option('--vhost <name>', 'vhost (default: the one of the first broker URL)')
      .option('--password-file <file>', 'the password, first line (default: a new random one, printed once)')
      .option('--rabbitmqctl-node <node>', 'node rabbitmqctl talks to (default: its own default)')
      .option(
        '--no-declare',
        'only set the user and rights (do not declare the exchanges and queues over AMQP)',
      );
  const provision = async (
    opts: GlobalOptions & {
      vhost?: string;
      passwordFile?: string;
      rabbitmqctlNode?: string;
      declare: boolean;
    },
    rightsOf: (config: AgentConfig, vhost: string) => BrokerRights,
    hostId?: string,
  ) => {
    const config = configFrom(env, opts);
    const vhost = opts.vhost ?? vhostOf(config.broker.urls[0]!);
    const rights = rightsOf(config, vhost);
    if (opts.declare)
      await withConnection(config, (connection) => declareFor(connection, config.topology, hostId));
    const ctl = new Rabbitmqctl({
      timeoutMs: 60_000,
      ...(opts.rabbitmqctlNode ? { node: opts.rabbitmqctlNode } : {}),
    });
    const { password, generated } = await passwordFrom(opts.passwordFile);
    const outcome = await applyRights(ctl, rights, password);
    if (opts.json) {
      writeJson(io, { ok: true, outcome, ...rights, ...(generated ? { password } : {}) });
      return;
    }
    for (const line of rightsLines(rights)) writeLine(io.stdout, line);
    writeLine(io.stdout, `${outcome}${generated ? `; password (shown once): ${password}` : ''}`);
  };
  provisionOptions(
    broker
      .command('provision-host')
      .description("create or update a host's broker user with only that host's rights")
      .argument('<hostId>', 'the host id (its agent config hostId)')
      .option('--user <name>', `broker user (default ${HOST_USER_PREFIX}<hostId>)`),
  ).action(async function (this: Commander, hostId: string) {
    const opts = this.optsWithGlobals<Parameters<typeof provision>[0] & { user?: string }>();
    if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/.test(hostId))
      throw usageError(`host id ${JSON.stringify(hostId)} is not valid`);
    await provision(
      opts,
      (config, vhost) =>
        hostRights(config.topology, vhost, hostId, opts.user ?? `${HOST_USER_PREFIX}${hostId}`),
      hostId,
    );
    if (!opts.json) {
      writeLine(io.stdout, `agent ${hostId}: set topology.declare=false and broker.urls with this user`);
    }
  });
  provisionOptions(
    broker
      .command('provision-management')
      .description("create or update the management plane's broker user")
      .option('--user <name>', `broker user (default ${MANAGEMENT_USER})`),
  ).action(async function (this: Commander) {
    const opts = this.optsWithGlobals<Parameters<typeof provision>[0] & { user?: string }>();
    await provision(opts, (config, vhost) =>
      managementRights(config.topology, vhost, opts.user ?? MANAGEMENT_USER),
    );
  });

  program
    .command('ping')
    .description('ask the agent for its version and tools')
    .action(send('agent.ping', () => ({})));

  const snapshot = program.command('snapshot').description('create, delete or revert snapshots');
  volumeCommand(snapshot, 'create', 'take a snapshot of a volume into the snapshot store')
    .requiredOption('--snapshot <name>', 'file name of the new snapshot')
    .option('--parent <name>', 'the chain so far, oldest first (repeat, or comma-separated)', collect, [])
    .addOption(new Option('--strategy <name>', 'strategy').choices(strategyName.options))
    .option('--quiesce', 'freeze guest filesystems through the guest agent')
    .addOption(new Option('--verify <level>', 'check after export').choices(['none', 'metadata', 'full']))
    .option('--compress', 'compress the exported QCOW2')
    .option('--max-chain <n>', 'start a full snapshot when the chain is this long', positiveInteger)
    .action(
      send('snapshot.create', (o) => ({
        ...volumeParams(o),
        parents: parseList(o.parent as string[]),
        snapshot: o.snapshot,
        options: definedOnly({
          strategy: o.strategy,
          quiesce: o.quiesce,
          verify: o.verify,
          compress: o.compress,
          maxChainLength: o.maxChain,
        }),
      })),
    );
  volumeCommand(snapshot, 'delete', 'remove one snapshot from a chain (merging it into its neighbour)')
    .requiredOption('--chain <names...>', 'the whole chain, oldest first (comma-separated or repeated)')
    .requiredOption('--snapshot <name>', 'the member of the chain to remove')
    .action(
      send('snapshot.delete', (o) => ({
        ...volumeParams(o),
        chain: parseList(o.chain as string[]),
        snapshot: o.snapshot,
      })),
    );
  volumeCommand(snapshot, 'revert', 'revert a volume to a snapshot')
    .requiredOption('--chain <names...>', 'the whole chain, oldest first')
    .requiredOption('--snapshot <name>', 'the snapshot to revert to')
    .addOption(
      new Option('--mode <mode>', 'new overlay on the snapshot, or a flattened copy').choices([
        'overlay',
        'flatten',
      ]),
    )
    .action(
      send('snapshot.revert', (o) => ({
        ...volumeParams(o),
        chain: parseList(o.chain as string[]),
        snapshot: o.snapshot,
        ...definedOnly({ mode: o.mode }),
      })),
    );

  program
    .command('chain')
    .description('snapshot chain checks')
    .command('verify')
    .description('check a chain in the store (qemu-img check, backing links, optional data compare)')
    .requiredOption('--store-root <path>', 'snapshot store root')
    .requiredOption('--store-dir <dir>', 'directory of the chain under the store root')
    .requiredOption('--chain <names...>', 'the chain, oldest first')
    .option('--volume <ref>', 'also check that this volume is backed by the chain')
    .option('--compare-snapshot <name>', 'data-compare this snapshot (through its chain)...')
    .option('--compare-image <path>', '...against this image')
    .action(
      send('chain.verify', (o) => {
        if ((o.compareSnapshot === undefined) !== (o.compareImage === undefined)) {
          throw usageError('--compare-snapshot and --compare-image go together');
        }
        return {
          store: { root: o.storeRoot, dir: o.storeDir },
          chain: parseList(o.chain as string[]),
          ...(o.volume ? { volume: parseVolume(String(o.volume)) } : {}),
          ...(o.compareSnapshot ? { compare: { snapshot: o.compareSnapshot, image: o.compareImage } } : {}),
        };
      }),
    );

  program
    .command('volume')
    .description('volume operations')
    .command('resize')
    .description(
      "grow a volume, also while its VM runs and after live rotations (LVM: lvextend of the volume's LVs, then libvirt)",
    )
    .requiredOption('--volume <ref>', 'lvm:<vg>/<lv> or file:<pool dir>/<file> (any of its names)')
    .requiredOption('--size <bytes>', 'the new virtual size in bytes (a multiple of 512)', positiveInteger)
    .option('--vm <name>', 'libvirt domain using the volume')
    .action(
      send('volume.resize', (o) => ({
        volume: parseVolume(String(o.volume)),
        vm: o.vm ?? null,
        sizeBytes: o.size,
      })),
    );

  program
    .command('job')
    .description('job control')
    .command('cancel')
    .description('cancel a running job (it stops at the next safe point and rolls back)')
    .argument('<job-id>', 'the job id (= the command id)')
    .action(send('job.cancel', (o) => ({ jobId: (o.args as string[])[0] })));

  program
    .command('watch')
    .description('follow events live: a progress bar per running job, one line per finished job')
    .option('--volume <ref>', 'only this volume (lvm:<vg>/<lv> or file:<pool dir>/<file>)')
    .addOption(new Option('--kind <kind>', 'only this event kind').choices([...EVENT_KINDS]))
    .action(async function (this: Commander) {
      const opts = this.optsWithGlobals<GlobalOptions & { volume?: string; kind?: EventKind }>();
      const config = configFrom(env, opts);
      const volume = opts.volume ? parseVolume(opts.volume) : undefined;
      await withConnection(config, async (connection) => {
        await watchEvents(
          connection,
          io,
          {
            eventsExchange: config.topology.eventsExchange,
            json: Boolean(opts.json),
            ...(opts.host ? { hostId: opts.host } : {}),
            ...(volume ? { volume } : {}),
            ...(opts.kind ? { kind: opts.kind } : {}),
          },
          stopSignal ?? interruptSignal(),
        );
      });
    });

  const dlq = program.command('dlq').description('dead-lettered commands (read without losing them, replay)');
  dlq
    .command('list')
    .description('list dead-lettered commands (they stay in the queue)')
    .option('--limit <n>', 'read at most this many', positiveInteger, 100)
    .action(async function (this: Commander) {
      const opts = this.optsWithGlobals<GlobalOptions & { limit: number }>();
      const config = configFrom(env, opts);
      const { letters, more } = await withConnection(config, (connection) =>
        peekDeadLetters(connection, config.topology.deadLetterQueue, opts.limit),
      );
      if (opts.json) {
        writeJson(io, {
          ok: true,
          queue: config.topology.deadLetterQueue,
          more,
          letters: letters.map(summaryOf),
        });
        return;
      }
      writeLine(
        io.stdout,
        `${letters.length} dead-lettered command(s) in ${config.topology.deadLetterQueue}${more ? ' (more not shown: raise --limit)' : ''}`,
      );
      for (const l of letters) writeLine(io.stdout, deadLetterLine(l));
    });
  dlq
    .command('show')
    .description('show one dead-lettered command in full (it stays in the queue)')
    .argument('<message-id>', 'the command id (AMQP messageId)')
    .option('--limit <n>', 'search at most this many messages', positiveInteger, 1000)
    .action(async function (this: Commander, messageId: string) {
      const opts = this.optsWithGlobals<GlobalOptions & { limit: number }>();
      const config = configFrom(env, opts);
      const { letters } = await withConnection(config, (connection) =>
        peekDeadLetters(connection, config.topology.deadLetterQueue, opts.limit),
      );
      const letter = letters.find((l) => l.messageId === messageId);
      if (!letter) {
        throw new AgentError(
          'NOT_FOUND',
          `no dead-lettered command with id ${messageId} in ${config.topology.deadLetterQueue}`,
        );
      }
      if (opts.json) writeJson(io, { ok: true, letter });
      else writeLine(io.stdout, JSON.stringify(letter, null, 2));
    });
  dlq
    .command('replay')
    .description('send dead-lettered commands again (acked only after the broker confirmed the new publish)')
    .argument('[message-id...]', 'command ids to replay')
    .option('--all', 'replay every dead letter read (up to --limit)')
    .option('--limit <n>', 'read at most this many messages', positiveInteger, 1000)
    .action(async function (this: Commander, ids: string[]) {
      const opts = this.optsWithGlobals<GlobalOptions & { all?: boolean; limit: number }>();
      if (!opts.all && ids.length === 0) throw usageError('give message ids to replay, or --all');
      if (opts.all && ids.length > 0) throw usageError('give message ids or --all, not both');
      const config = configFrom(env, opts);
      const result = await withConnection(config, (connection) =>
        replayDeadLetters(connection, {
          queue: config.topology.deadLetterQueue,
          commandsExchange: config.topology.commandsExchange,
          select: opts.all ? 'all' : ids,
          limit: opts.limit,
          confirmTimeoutMs: config.broker.confirmTimeoutMs,
          ...(opts.host ? { hostId: opts.host } : {}),
        }),
      );
      const ok = result.missing.length === 0;
      if (opts.json) writeJson(io, { ok, ...result });
      else {
        for (const r of result.replayed)
          writeLine(io.stdout, `replayed ${r.messageId ?? '(no id)'} to host ${r.hostId}`);
        for (const id of result.missing)
          writeLine(io.stderr, `snapctl: not found in the dead-letter queue: ${id}`);
      }
      if (!ok) setExit(EXIT.failed);
    });

  program
    .command('dashboard')
    .description('serve the live web dashboard (events over Server-Sent Events)')
    .option('--port <n>', 'TCP port', portNumber, 8080)
    .option('--listen <address>', 'address to listen on', '127.0.0.1')
    .action(async function (this: Commander) {
      const opts = this.optsWithGlobals<GlobalOptions & { port: number; listen: string }>();
      const config = configFrom(env, opts);
      const dashboard = await context.startDashboard(config, { port: opts.port, host: opts.listen });
      if (opts.json) writeJson(io, { ok: true, url: dashboard.url });
      else writeLine(io.stdout, `dashboard on ${dashboard.url} (Ctrl-C to stop)`);
      const signal = stopSignal ?? interruptSignal();
      await new Promise<void>((resolve) => {
        if (signal.aborted) resolve();
        else signal.addEventListener('abort', () => resolve(), { once: true });
      });
      await dashboard.close();
    });

  return program;
}

/** A subcommand on one volume and its store directory (snapshot create, delete, revert). */
function volumeCommand(parent: Commander, name: string, description: string): Commander {
  return parent
    .command(name)
    .description(description)
    .requiredOption('--volume <ref>', 'lvm:<vg>/<lv> or file:<pool dir>/<file>')
    .requiredOption('--store-root <path>', 'snapshot store root (a configured store root)')
    .requiredOption('--store-dir <dir>', 'directory of this volume under the store root')
    .option('--vm <name>', 'libvirt domain using the volume');
}

/** The params a volumeCommand's options give. */
function volumeParams(o: Record<string, unknown>) {
  return {
    volume: parseVolume(String(o.volume)),
    vm: (o.vm as string | undefined) ?? null,
    store: { root: o.storeRoot, dir: o.storeDir },
  };
}

/** Loads the agent's configuration with the command-line overrides on top. */
function configFrom(env: NodeJS.ProcessEnv, opts: GlobalOptions): AgentConfig {
  const overrides: Record<string, unknown> = {};
  if (opts.host) overrides.hostId = opts.host;
  if (opts.brokerUrl) overrides.broker = { urls: opts.brokerUrl };
  const topology = definedOnly({
    commandsExchange: opts.commandsExchange,
    eventsExchange: opts.eventsExchange,
    deadLetterQueue: opts.deadLetterQueue,
  });
  if (Object.keys(topology).length > 0) overrides.topology = topology;
  if (opts.signingKey) overrides.security = { signingKey: opts.signingKey };
  return loadConfig({ env, overrides, ...(opts.config ? { file: opts.config } : {}) }).config;
}

/** How snapctl reaches the broker: one pass over the URLs, no reconnect, named `snapctl`. */
function connectOptions(config: AgentConfig): AgentClientOptions {
  return {
    urls: config.broker.urls,
    connectTimeoutMs: config.broker.connectTimeoutMs,
    tls: brokerTlsOptions(config.broker.tls),
    connectionName: 'snapctl',
  };
}

async function withConnection<T>(
  config: AgentConfig,
  use: (connection: BrokerConnection) => Promise<T>,
): Promise<T> {
  const connection = await openBrokerConnection(connectOptions(config));
  try {
    return await use(connection);
  } finally {
    await connection.close();
  }
}

/** Sends one command, shows its progress, prints the outcome; returns the exit code. */
async function sendCommand(
  io: CliIo,
  env: NodeJS.ProcessEnv,
  opts: GlobalOptions,
  command: Command,
): Promise<ExitCode> {
  const config = configFrom(env, opts);
  const signer = loadSigner(opts, env);
  const json = Boolean(opts.json);
  const view = createJobProgressView(io, { json });
  let terminal: TerminalEvent;
  try {
    const client = await AgentClient.connect({
      ...connectOptions(config),
      commandsExchange: config.topology.commandsExchange,
      eventsExchange: config.topology.eventsExchange,
      confirmTimeoutMs: config.broker.confirmTimeoutMs,
      ...(signer ? { signer } : {}),
      ...(!signer && config.security.signingKey ? { signingKey: config.security.signingKey } : {}),
    });
    try {
      terminal = await client.run(config.hostId, command, {
        replyTo: Boolean(opts.replyTo),
        timeoutMs: (opts.timeout ?? DEFAULT_TIMEOUT_S[command.type]) * 1000,
        onEvent: (event) => view.onEvent(event),
        onInvalid: (problem) => {
          if (!json) writeLine(io.stderr, `snapctl: ignored a message on the events exchange: ${problem}`);
        },
      });
    } finally {
      await client.close();
    }
  } finally {
    view.stop();
  }
  const outcome = terminal.type.slice(terminal.type.lastIndexOf('.') + 1);
  const exitCode = outcome === 'succeeded' ? EXIT.ok : outcome === 'rejected' ? EXIT.rejected : EXIT.failed;
  if (json) {
    writeJson(io, {
      ok: exitCode === EXIT.ok,
      outcome,
      exitCode,
      command: { id: command.id, type: command.type, host: config.hostId },
      event: terminal,
    });
  } else if (exitCode === EXIT.ok) {
    writeLine(io.stdout, eventLine(terminal));
  } else {
    writeLine(io.stderr, `snapctl: ${eventLine(terminal)}`);
  }
  return exitCode;
}

function deadLetterLine(l: DeadLetterDetail): string {
  return [
    `#${l.position}`,
    l.messageId ?? '(no id)',
    l.commandType ?? '?',
    `host=${l.hostId ?? '?'}`,
    `reason=${l.reason ?? '?'}`,
    `deaths=${l.deathCount}`,
    `from=${l.fromQueue ?? '?'}`,
    `at=${l.deadLetteredAt ?? '?'}`,
    formatBytes(l.bytes),
  ].join('  ');
}

/** Aborts on the first SIGINT or SIGTERM (watch and dashboard stop cleanly: cursor back, queue gone). */
function interruptSignal(): AbortSignal {
  const controller = new AbortController();
  const stop = () => controller.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  return controller.signal;
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

function positiveNumber(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('must be a positive number');
  return n;
}

function positiveInteger(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('must be a positive integer');
  return n;
}

function portNumber(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535)
    throw new InvalidArgumentError('must be a port number (0-65535)');
  return n;
}

function definedOnly(values: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(values).filter(([, v]) => v !== undefined));
}
