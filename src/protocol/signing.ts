import { createHmac, timingSafeEqual } from 'node:crypto';

/** AMQP header that carries a command's signature: `sha256=<hex HMAC-SHA256 of the raw body>`. */
export const SIGNATURE_HEADER = 'x-signature';

export function signBody(body: Buffer | string, key: string): string {
  return `sha256=${createHmac('sha256', key).update(body).digest('hex')}`;
}

/** Constant-time check of a signature header value against the body. */
export function verifySignature(body: Buffer, key: string, header: unknown): boolean {
  if (typeof header !== 'string') return false;
  const expected = Buffer.from(signBody(body, key));
  const given = Buffer.from(header);
  return given.length === expected.length && timingSafeEqual(given, expected);
}
