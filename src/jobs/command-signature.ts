import type { KeyObject } from 'node:crypto';
import { ValidationError } from '../errors/index.js';
import {
  COMMAND_SIGNATURE_HEADERS,
  type CommandEnvelope,
  parsePublicKey,
  readEnvelope,
  verifyEnvelope,
} from '../protocol/index.js';
import type { IncomingCommand } from './ports.js';

/** What the Ed25519 check of intake needs (built once from the config). */
export interface CommandKeyPolicy {
  /** This agent's host id: a command signed for another host is refused. */
  hostId: string;
  /** Every configured public key by id (accepted or retired). */
  keys: ReadonlyMap<string, KeyObject>;
  /** The ids accepted now; a known id not in here is retired. */
  acceptedKeyIds: ReadonlySet<string>;
  clockSkewMs: number;
  maxLifetimeMs: number;
  now?: () => number;
}

/** Builds the policy from config values (keys already validated by the config schema). */
export function commandKeyPolicy(options: {
  hostId: string;
  publicKeys: Record<string, string>;
  acceptedKeyIds: readonly string[];
  clockSkewMs: number;
  maxCommandLifetimeMs: number;
}): CommandKeyPolicy | undefined {
  const ids = Object.keys(options.publicKeys);
  if (ids.length === 0) return undefined;
  return {
    hostId: options.hostId,
    keys: new Map(ids.map((id) => [id, parsePublicKey(options.publicKeys[id]!)])),
    acceptedKeyIds: new Set(options.acceptedKeyIds.length > 0 ? options.acceptedKeyIds : ids),
    clockSkewMs: options.clockSkewMs,
    maxLifetimeMs: options.maxCommandLifetimeMs,
  };
}

/**
 * Checks a delivery's Ed25519 envelope, in an order that trusts no claim before the signature
 * is verified: headers present and well-formed → key id known → key not retired → signature
 * over the canonical bytes → host id → times. Returns the verified envelope.
 *
 * @throws ValidationError SIGNATURE_MISSING | SIGNATURE_ENVELOPE_INVALID | SIGNING_KEY_UNKNOWN |
 *   SIGNING_KEY_RETIRED | SIGNATURE_INVALID | WRONG_HOST | COMMAND_LIFETIME_TOO_LONG |
 *   COMMAND_NOT_YET_VALID | COMMAND_EXPIRED
 */
export function checkCommandSignature(incoming: IncomingCommand, policy: CommandKeyPolicy): CommandEnvelope {
  const h = COMMAND_SIGNATURE_HEADERS;
  const read = readEnvelope(incoming.headers);
  if (!read.ok) {
    throw new ValidationError(
      read.missing ? 'SIGNATURE_MISSING' : 'SIGNATURE_ENVELOPE_INVALID',
      `signed commands are required: the ${read.header} header ${read.problem}`,
      { field: `headers.${read.header}` },
    );
  }
  const { envelope, signature } = read;
  const key = policy.keys.get(envelope.keyId);
  if (key === undefined) {
    throw new ValidationError(
      'SIGNING_KEY_UNKNOWN',
      `key id ${JSON.stringify(envelope.keyId)} is not configured`,
      {
        field: `headers.${h.keyId}`,
      },
    );
  }
  if (!policy.acceptedKeyIds.has(envelope.keyId)) {
    throw new ValidationError(
      'SIGNING_KEY_RETIRED',
      `key id ${JSON.stringify(envelope.keyId)} is retired (not in security.acceptedKeyIds)`,
      { field: `headers.${h.keyId}` },
    );
  }
  if (!verifyEnvelope(incoming.body, envelope, signature, key)) {
    throw new ValidationError(
      'SIGNATURE_INVALID',
      `the ${h.signature} header is not a signature of this body and envelope by key ${envelope.keyId}`,
      { field: `headers.${h.signature}` },
    );
  }
  if (envelope.hostId !== policy.hostId) {
    throw new ValidationError(
      'WRONG_HOST',
      `the command is signed for host ${JSON.stringify(envelope.hostId)}, this is ${JSON.stringify(policy.hostId)}`,
      { field: `headers.${h.hostId}` },
    );
  }
  const issued = Date.parse(envelope.issuedAt);
  const expires = Date.parse(envelope.expiresAt);
  if (!Number.isFinite(issued) || !Number.isFinite(expires) || expires <= issued) {
    throw new ValidationError(
      'SIGNATURE_ENVELOPE_INVALID',
      `issuedAt ${envelope.issuedAt} and expiresAt ${envelope.expiresAt} are not valid times in order`,
      { field: `headers.${h.expiresAt}` },
    );
  }
  if (expires - issued > policy.maxLifetimeMs) {
    throw new ValidationError(
      'COMMAND_LIFETIME_TOO_LONG',
      `expiresAt - issuedAt is ${expires - issued} ms, more than security.maxCommandLifetimeMs (${policy.maxLifetimeMs})`,
      { field: `headers.${h.expiresAt}` },
    );
  }
  const now = (policy.now ?? Date.now)();
  if (issued > now + policy.clockSkewMs) {
    throw new ValidationError(
      'COMMAND_NOT_YET_VALID',
      `issuedAt ${envelope.issuedAt} is more than security.clockSkewMs (${policy.clockSkewMs} ms) in the future`,
      { field: `headers.${h.issuedAt}` },
    );
  }
  if (now >= expires) {
    throw new ValidationError('COMMAND_EXPIRED', `the command expired at ${envelope.expiresAt}`, {
      field: `headers.${h.expiresAt}`,
    });
  }
  return envelope;
}
