import {
  createHmac,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  sign,
  timingSafeEqual,
  verify,
} from 'node:crypto';

/**
 * Command signatures.
 *
 * Ed25519 (the default mode): the management plane signs a canonical envelope with its private
 * key; agents hold only public keys, each under a key id. The envelope travels in AMQP headers
 * (COMMAND_SIGNATURE_HEADERS) and the signed bytes are
 *
 *   clvm-command-v1\n
 *   key-id:<key id>\n
 *   host-id:<target host id>\n
 *   issued-at:<RFC 3339 UTC time>\n
 *   expires-at:<RFC 3339 UTC time>\n
 *   \n
 *   <the exact body bytes>
 *
 * (each header value exactly as sent; none may contain a line break, see ENVELOPE_FIELD_PATTERNS).
 * The signature header is the standard base64 of the 64-byte Ed25519 signature.
 *
 * Legacy HMAC (explicitly configured, weaker: every agent holds the key that signs, and only the
 * body is covered): `x-signature: sha256=<hex HMAC-SHA256 of the raw body>`.
 */

/** Legacy HMAC header: `sha256=<hex HMAC-SHA256 of the raw body>`. */
export const SIGNATURE_HEADER = 'x-signature';

/** AMQP headers of the Ed25519 envelope. */
export const COMMAND_SIGNATURE_HEADERS = {
  signature: 'x-clvm-signature',
  keyId: 'x-clvm-key-id',
  hostId: 'x-clvm-host-id',
  issuedAt: 'x-clvm-issued-at',
  expiresAt: 'x-clvm-expires-at',
} as const;

/** First line of the signed bytes; a new envelope layout gets a new version. */
export const ENVELOPE_VERSION = 'clvm-command-v1';

/** What a signed command claims besides its body (all covered by the signature). */
export interface CommandEnvelope {
  keyId: string;
  hostId: string;
  /** RFC 3339 UTC, e.g. 2026-11-30T05:00:00.000Z (kept as sent: the signature covers these bytes). */
  issuedAt: string;
  expiresAt: string;
}

const TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$/;
/** Allowed forms of the envelope fields: no line breaks, so the canonical bytes are unambiguous. */
export const ENVELOPE_FIELD_PATTERNS: Record<keyof CommandEnvelope, RegExp> = {
  keyId: /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/,
  hostId: /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/,
  issuedAt: TIME,
  expiresAt: TIME,
};

/** The exact bytes an Ed25519 signature covers. */
export function canonicalEnvelope(envelope: CommandEnvelope, body: Buffer): Buffer {
  const head = [
    ENVELOPE_VERSION,
    `key-id:${envelope.keyId}`,
    `host-id:${envelope.hostId}`,
    `issued-at:${envelope.issuedAt}`,
    `expires-at:${envelope.expiresAt}`,
    '',
    '',
  ].join('\n');
  return Buffer.concat([Buffer.from(head, 'utf8'), body]);
}

/** Signs a command body for one host; returns the AMQP headers to send with it. */
export function signCommand(
  body: Buffer,
  envelope: CommandEnvelope,
  privateKey: KeyObject,
): Record<string, string> {
  const signature = sign(null, canonicalEnvelope(envelope, body), privateKey).toString('base64');
  const h = COMMAND_SIGNATURE_HEADERS;
  return {
    [h.signature]: signature,
    [h.keyId]: envelope.keyId,
    [h.hostId]: envelope.hostId,
    [h.issuedAt]: envelope.issuedAt,
    [h.expiresAt]: envelope.expiresAt,
  };
}

/** An envelope built for `hostId`, valid from now for `lifetimeMs`. */
export function envelopeFor(hostId: string, keyId: string, lifetimeMs: number, now = Date.now()) {
  return {
    keyId,
    hostId,
    issuedAt: new Date(now).toISOString(),
    expiresAt: new Date(now + lifetimeMs).toISOString(),
  } satisfies CommandEnvelope;
}

/** Header values as strings (amqplib gives strings; other clients may send byte arrays). */
function headerText(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  return undefined;
}

export type ReadEnvelopeResult =
  | { ok: true; envelope: CommandEnvelope; signature: Buffer }
  | { ok: false; missing: boolean; header: string; problem: string };

/** Reads the envelope headers; says which header is missing or malformed. */
export function readEnvelope(headers: Record<string, unknown>): ReadEnvelopeResult {
  const h = COMMAND_SIGNATURE_HEADERS;
  const signatureText = headerText(headers[h.signature]);
  if (signatureText === undefined)
    return { ok: false, missing: true, header: h.signature, problem: 'is missing' };
  const envelope: Partial<CommandEnvelope> = {};
  for (const field of ['keyId', 'hostId', 'issuedAt', 'expiresAt'] as const) {
    const value = headerText(headers[h[field]]);
    if (value === undefined) return { ok: false, missing: false, header: h[field], problem: 'is missing' };
    if (!ENVELOPE_FIELD_PATTERNS[field].test(value))
      return {
        ok: false,
        missing: false,
        header: h[field],
        problem: `${JSON.stringify(value)} is malformed`,
      };
    envelope[field] = value;
  }
  const signature = /^[A-Za-z0-9+/]{86}==$/.test(signatureText)
    ? Buffer.from(signatureText, 'base64')
    : undefined;
  if (signature?.length !== 64)
    return { ok: false, missing: false, header: h.signature, problem: 'is not a base64 Ed25519 signature' };
  return { ok: true, envelope: envelope as CommandEnvelope, signature };
}

/** True when `signature` is a valid Ed25519 signature of the envelope and body under `publicKey`. */
export function verifyEnvelope(
  body: Buffer,
  envelope: CommandEnvelope,
  signature: Buffer,
  publicKey: KeyObject,
): boolean {
  return verify(null, canonicalEnvelope(envelope, body), publicKey, signature);
}

/**
 * An Ed25519 public key from config text: a PEM (SPKI) block, or the standard base64 of the raw
 * 32-byte key (what `snapctl keys generate` prints).
 * @throws Error saying why the text is not an Ed25519 public key
 */
export function parsePublicKey(text: string): KeyObject {
  const trimmed = text.trim();
  let key: KeyObject;
  if (trimmed.startsWith('-----BEGIN')) {
    key = createPublicKey(trimmed);
  } else {
    const raw = Buffer.from(trimmed, 'base64');
    if (raw.length !== 32 || raw.toString('base64') !== trimmed)
      throw new Error('is neither a PEM public key nor the base64 of a raw 32-byte Ed25519 key');
    key = createPublicKey({
      key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') },
      format: 'jwk',
    });
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`is a ${key.asymmetricKeyType} key, not Ed25519`);
  return key;
}

/** An Ed25519 private key from PEM (PKCS#8) text. @throws Error when it is not one */
export function parsePrivateKey(pem: string): KeyObject {
  const key = createPrivateKey(pem);
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`is a ${key.asymmetricKeyType} key, not Ed25519`);
  return key;
}

/** The raw 32-byte public key, standard base64 (the config form). */
export function rawPublicKey(key: KeyObject): string {
  const jwk = key.export({ format: 'jwk' });
  return Buffer.from(jwk.x as string, 'base64url').toString('base64');
}

/** A fresh Ed25519 key pair: PKCS#8 PEM private key, SPKI PEM public key, raw base64 public key. */
export function generateSigningKeyPair(): { privatePem: string; publicPem: string; publicRaw: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return {
    privatePem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
    publicPem: publicKey.export({ format: 'pem', type: 'spki' }).toString(),
    publicRaw: rawPublicKey(publicKey),
  };
}

/** Legacy HMAC-SHA256 signature of the body (weaker mode, see the module comment). */
export function signBody(body: Buffer | string, key: string): string {
  return `sha256=${createHmac('sha256', key).update(body).digest('hex')}`;
}

/** Constant-time check of a legacy signature header value against the body. */
export function verifySignature(body: Buffer, key: string, header: unknown): boolean {
  if (typeof header !== 'string') return false;
  const expected = Buffer.from(signBody(body, key));
  const given = Buffer.from(header);
  return given.length === expected.length && timingSafeEqual(given, expected);
}
