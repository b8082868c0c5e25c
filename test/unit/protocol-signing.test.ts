import { describe, expect, it } from 'vitest';
import { signBody, verifySignature } from '../../src/protocol/index.js';

describe('command signing', () => {
  it('accepts the signature of the same body and key only', () => {
    const body = Buffer.from('{"id":"c1","type":"agent.ping","params":{}}');
    const sig = signBody(body, 'k1');
    expect(sig).toMatch(/^sha256=[0-9a-f]{64}$/);
    expect(verifySignature(body, 'k1', sig)).toBe(true);
    expect(verifySignature(body, 'k2', sig)).toBe(false);
    expect(verifySignature(Buffer.from(`${body} `), 'k1', sig)).toBe(false);
    expect(verifySignature(body, 'k1', undefined)).toBe(false);
  });
});
