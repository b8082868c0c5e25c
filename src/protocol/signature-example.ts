import { createPrivateKey, createPublicKey } from 'node:crypto';
import { type CommandEnvelope, canonicalEnvelope, rawPublicKey, signCommand } from './signing.js';

/**
 * A worked Ed25519 signing example for the AsyncAPI document, fixed so that any client can
 * check its implementation byte for byte (Ed25519 signatures are deterministic). The private key
 * is derived from a published seed: it is an example, never configure it.
 */
const EXAMPLE_SEED = Buffer.from('000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', 'hex');
/** PKCS#8 DER of an Ed25519 private key = this fixed prefix + the 32-byte seed (RFC 8410). */
const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');

export function signatureExample() {
  const privateKey = createPrivateKey({
    key: Buffer.concat([PKCS8_ED25519_PREFIX, EXAMPLE_SEED]),
    format: 'der',
    type: 'pkcs8',
  });
  const envelope: CommandEnvelope = {
    keyId: 'mp-2026-11',
    hostId: 'kvm-01',
    issuedAt: '2026-11-30T05:00:00.000Z',
    expiresAt: '2026-11-30T05:15:00.000Z',
  };
  const body = '{"id":"cmd-example-1","type":"agent.ping","params":{}}';
  const headers = signCommand(Buffer.from(body), envelope, privateKey);
  return {
    privateKeyPem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
    publicKeyRaw: rawPublicKey(createPublicKey(privateKey)),
    envelope,
    body,
    /** The signed bytes, as text (they are UTF-8 here). */
    signedBytes: canonicalEnvelope(envelope, Buffer.from(body)).toString('utf8'),
    headers,
  };
}
