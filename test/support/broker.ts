import { connect } from 'amqplib';

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
        `(${error instanceof Error ? error.message : String(error)}). ` +
        'Set TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672 or provide a Docker engine.',
    );
  }
}

async function assertReachable(url: string): Promise<void> {
  try {
    const conn = await connect(url, { timeout: 5000 });
    await conn.close();
  } catch (error) {
    throw new Error(
      `TEST_AMQP_URL=${url.replace(/\/\/[^@]*@/, '//***@')} is not reachable: ${error instanceof Error ? error.message : String(error)}`,
    );
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
