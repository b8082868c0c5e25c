// The drain condition that stands in for "wait a while and see that nothing more arrives":
// stop the agent, see that its outbox is empty (every event it will ever send was confirmed by
// the broker, so it already sits in the test's queue), then pass a fence through the test's
// queue (a queue is FIFO: once the fence comes out, everything queued before it was delivered).
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Channel, ConsumeMessage } from 'amqplib';
import { waitFor } from './wait.js';

const FENCE_HEADER = 'x-test-fence';

/** Fails unless the stopped agent's outbox (`<stateDir>/outbox`) holds no event. */
export async function expectOutboxEmpty(stateDir: string): Promise<void> {
  const left = (await readdir(join(stateDir, 'outbox')).catch(() => [])).filter((f) => f.endsWith('.json'));
  if (left.length > 0)
    throw new Error(`the agent stopped with ${left.length} event(s) in its outbox: ${left}`);
}

/** Fences through a consumer's queue; the consumer hands every message to {@link take} first. */
export class QueueFence {
  private readonly passed = new Set<string>();

  /** True when `message` is a fence (then it is not an event). */
  take(message: ConsumeMessage): boolean {
    const id = message.properties.headers?.[FENCE_HEADER] as string | undefined;
    if (id === undefined) return false;
    this.passed.add(id);
    return true;
  }

  /** Sends a fence to `queue` and resolves once the consumer took it: all before it was delivered. */
  async pass(channel: Channel, queue: string, timeoutMs = 10_000): Promise<void> {
    const id = randomBytes(6).toString('hex');
    channel.sendToQueue(queue, Buffer.from('fence'), { headers: { [FENCE_HEADER]: id } });
    await waitFor(() => (this.passed.has(id) ? true : undefined), timeoutMs, `the fence through ${queue}`);
  }
}
