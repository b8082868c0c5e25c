import type { ConsumeMessage } from 'amqplib';
import { describe, expect, it } from 'vitest';
import { toIncomingCommand } from '../../../src/messaging/command-consumer.js';

function message(properties: Partial<ConsumeMessage['properties']>, redelivered = false): ConsumeMessage {
  return {
    content: Buffer.from('{}'),
    fields: { deliveryTag: 1, redelivered, exchange: 'x', routingKey: 'h', consumerTag: 'c' },
    properties: { headers: {}, ...properties } as ConsumeMessage['properties'],
  };
}

describe('toIncomingCommand', () => {
  it('reads x-delivery-count (number or bigint) and the AMQP properties', () => {
    const command = toIncomingCommand(
      message(
        { messageId: 'm', correlationId: 'c', replyTo: 'r', headers: { 'x-delivery-count': 2, a: 'b' } },
        true,
      ),
    );
    expect(command).toMatchObject({
      messageId: 'm',
      correlationId: 'c',
      replyTo: 'r',
      redelivered: true,
      deliveryCount: 2,
      headers: { 'x-delivery-count': 2, a: 'b' },
    });
    expect(toIncomingCommand(message({ headers: { 'x-delivery-count': 5n } })).deliveryCount).toBe(5);
  });

  it('a first delivery (no header) counts 0; missing or empty properties are undefined', () => {
    const command = toIncomingCommand(message({ headers: undefined, messageId: '' }));
    expect(command).toMatchObject({
      deliveryCount: 0,
      messageId: undefined,
      replyTo: undefined,
      headers: {},
    });
  });
});
