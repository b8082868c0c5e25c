import { type AgentConfig, loadConfig } from '../config/index.js';
import { ConfigError } from '../errors/index.js';
import type { HandlerRegistry } from '../jobs/types.js';
import { createLogger, type Logger } from '../observability/logger.js';
import { AGENT_NAME, AGENT_VERSION } from '../version.js';
import { type RunningAgent, startAgent } from './agent.js';

/** Exit codes of the agent process. */
export const EXIT = {
  ok: 0,
  startFailed: 1,
  /** sysexits EX_CONFIG: the configuration is invalid. */
  config: 78,
} as const;

export interface AgentProcessOptions {
  /** Builds the command handlers once config and logger exist (the snapshot engine registers here). */
  handlers?: (config: AgentConfig, logger: Logger) => HandlerRegistry | Promise<HandlerRegistry>;
  env?: NodeJS.ProcessEnv;
  /** Runs once the agent stopped, before the process exits (closes long-lived host sessions). */
  afterStop?: () => Promise<void>;
}

/**
 * The agent as a process: load config (a ConfigError prints the key and exits 78), log the
 * redacted config, start the agent, and stop it gracefully on SIGTERM/SIGINT. A second signal
 * exits at once: journal and outbox writes are atomic, so nothing is corrupted, and the next
 * start recovers what was running.
 */
export async function runAgentProcess(opts: AgentProcessOptions = {}): Promise<void> {
  let config: AgentConfig;
  let redacted: string;
  try {
    ({ config, redacted } = loadConfig({ env: opts.env ?? process.env }));
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    const key = error.details.key ? ` [key: ${String(error.details.key)}]` : '';
    process.stderr.write(`${AGENT_NAME}: configuration error${key}: ${error.message}\n`);
    process.exit(EXIT.config);
  }
  const logger = createLogger({ level: config.log.level });
  logger.info({ config: JSON.parse(redacted), version: AGENT_VERSION }, 'configuration loaded');
  if (Object.keys(config.security.publicKeys).length === 0) {
    logger.warn(
      config.security.signingKey
        ? 'commands are checked with the LEGACY shared HMAC key: any host holding it can sign commands for every host; configure security.publicKeys'
        : 'commands are NOT signed (no security.publicKeys): anyone who can publish to the commands exchange can command this host',
    );
  }

  process.on('unhandledRejection', (reason) => logger.error({ err: reason }, 'unhandled promise rejection'));
  process.on('uncaughtException', (error) => {
    logger.fatal({ err: error }, 'uncaught exception: exiting');
    process.exit(EXIT.startFailed);
  });

  let agent: RunningAgent | undefined;
  let signals = 0;
  let pending: NodeJS.Signals | undefined;
  const stopGracefully = (signal: NodeJS.Signals, running: RunningAgent) => {
    logger.info({ signal }, 'signal received: shutting down gracefully');
    void running.stop(signal).then(
      async (errors) => {
        try {
          await opts.afterStop?.();
        } catch (error) {
          logger.error({ err: error }, 'closing host sessions failed');
          errors.push(error as Error);
        }
        process.exit(errors.length === 0 ? EXIT.ok : EXIT.startFailed);
      },
      (error: unknown) => {
        logger.fatal({ err: error }, 'shutdown failed');
        process.exit(EXIT.startFailed);
      },
    );
  };
  const onSignal = (signal: NodeJS.Signals) => {
    signals += 1;
    if (signals > 1) {
      logger.warn({ signal }, 'second signal: exiting at once');
      process.exit(signal === 'SIGINT' ? 130 : 143);
    }
    if (agent) stopGracefully(signal, agent);
    else pending = signal;
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);

  try {
    const handlers = (await opts.handlers?.(config, logger)) ?? {};
    agent = await startAgent({ config, logger, handlers });
  } catch (error) {
    logger.fatal({ err: error }, 'agent failed to start');
    process.exit(EXIT.startFailed);
  }
  // A signal that arrived during start-up: stop now that there is something to stop.
  if (pending) stopGracefully(pending, agent);
}
