import { join, resolve } from 'node:path';
import type { z } from 'zod';
import { ValidationError } from '../errors/index.js';
import { confineChild, confinePath } from '../host/paths.js';
import type { IncomingCommand } from '../messaging/types.js';
import {
  type Command,
  type CommandEnvelope,
  commandSchema,
  SIGNATURE_HEADER,
  type StoreRef,
  type VolumeRef,
  verifySignature,
} from '../protocol/index.js';
import { type CommandKeyPolicy, checkCommandSignature } from './command-signature.js';

/** What intake checks against (a slice of AgentConfig). */
export interface IntakePolicy {
  maxMessageBytes: number;
  /** Legacy: when non-empty (and no commandKeys), every command must carry a valid HMAC header. */
  signingKey: string;
  /** When set, every command must carry a valid Ed25519 envelope (takes the place of signingKey). */
  commandKeys?: CommandKeyPolicy;
  storeRoots: readonly string[];
  fileRoots: readonly string[];
  /** Empty: any VG with a valid name. */
  volumeGroups: readonly string[];
}

/** Rejection codes intake produces (the `rejected` event's error.code and the metric's reason). */
export const REJECT_CODES = [
  'MESSAGE_TOO_LARGE',
  'SIGNATURE_MISSING',
  'SIGNATURE_INVALID',
  'INVALID_JSON',
  'UNKNOWN_COMMAND_TYPE',
  'SCHEMA_INVALID',
  'INVALID_NAME',
  'INVALID_PATH',
  'INVALID_ID',
  'PATH_OUTSIDE_ROOTS',
  'STORE_ROOT_NOT_CONFIGURED',
  'VOLUME_GROUP_NOT_ALLOWED',
  'MESSAGE_ID_MISMATCH',
  // Ed25519 envelope (src/jobs/command-signature.ts); COMMAND_REPLAYED comes from the job runner.
  'SIGNATURE_ENVELOPE_INVALID',
  'SIGNING_KEY_UNKNOWN',
  'SIGNING_KEY_RETIRED',
  'WRONG_HOST',
  'COMMAND_LIFETIME_TOO_LONG',
  'COMMAND_NOT_YET_VALID',
  'COMMAND_EXPIRED',
  'COMMAND_REPLAYED',
] as const;

export type IntakeResult =
  | {
      ok: true;
      command: Command;
      /** The verified Ed25519 envelope (only in that mode). */
      envelope?: CommandEnvelope;
    }
  | {
      ok: false;
      error: ValidationError;
      /** The command id when it could be read (body id, else AMQP messageId). */
      id: string | null;
      type: string | null;
      volume: VolumeRef | null;
    };

/**
 * Checks one delivery in the order that keeps untrusted bytes furthest from the code:
 * size → signature (Ed25519 envelope, or legacy HMAC; before the body is even parsed) → JSON → zod schema → semantics
 * (roots, VGs, messageId). Never throws for bad input; returns the precise reason.
 */
export async function validateIncoming(
  incoming: IncomingCommand,
  policy: IntakePolicy,
): Promise<IntakeResult> {
  const fail = (error: ValidationError, body?: unknown): IntakeResult => ({
    ok: false,
    error,
    id: readId(body) ?? incoming.messageId ?? null,
    type: readString(body, 'type'),
    volume: readVolume(body),
  });

  if (incoming.body.length > policy.maxMessageBytes) {
    return fail(
      new ValidationError(
        'MESSAGE_TOO_LARGE',
        `command body is ${incoming.body.length} bytes, more than the limit of ${policy.maxMessageBytes}`,
        { field: 'body' },
      ),
    );
  }
  let envelope: CommandEnvelope | undefined;
  if (policy.commandKeys) {
    try {
      envelope = checkCommandSignature(incoming, policy.commandKeys);
    } catch (error) {
      if (error instanceof ValidationError) return fail(error);
      throw error;
    }
  } else if (policy.signingKey) {
    const header = incoming.headers[SIGNATURE_HEADER];
    if (header === undefined) {
      return fail(
        new ValidationError('SIGNATURE_MISSING', `signing is on: the ${SIGNATURE_HEADER} header is missing`, {
          field: `headers.${SIGNATURE_HEADER}`,
        }),
      );
    }
    if (!verifySignature(incoming.body, policy.signingKey, header)) {
      return fail(
        new ValidationError('SIGNATURE_INVALID', `the ${SIGNATURE_HEADER} header does not match the body`, {
          field: `headers.${SIGNATURE_HEADER}`,
        }),
      );
    }
  }
  let body: unknown;
  try {
    body = JSON.parse(incoming.body.toString('utf8'));
  } catch (error) {
    return fail(
      new ValidationError('INVALID_JSON', `command body is not JSON: ${(error as Error).message}`, {
        field: 'body',
        cause: error,
      }),
    );
  }
  const parsed = commandSchema.safeParse(body);
  if (!parsed.success) return fail(schemaError(parsed.error, body), body);
  const command = parsed.data;
  try {
    await checkSemantics(command, incoming, policy);
  } catch (error) {
    if (error instanceof ValidationError) return fail(error, body);
    throw error;
  }
  return envelope ? { ok: true, command, envelope } : { ok: true, command };
}

/** Maps the first zod issue to a rejection code and the dotted path of the field. */
export function schemaError(error: z.ZodError, body: unknown): ValidationError {
  const issue = error.issues[0];
  if (!issue) return new ValidationError('SCHEMA_INVALID', 'command does not match the schema');
  let field = issue.path.map(String).join('.');
  if (issue.code === 'unrecognized_keys' && issue.keys[0]) {
    field = field ? `${field}.${issue.keys[0]}` : issue.keys[0];
  }
  const message = `${field || 'command'}: ${issue.message}`;
  let code: (typeof REJECT_CODES)[number] = 'SCHEMA_INVALID';
  if (field === 'type' && typeof readString(body, 'type') === 'string') code = 'UNKNOWN_COMMAND_TYPE';
  else if (/^invalid (LVM name|VM name|file name)/.test(issue.message)) code = 'INVALID_NAME';
  else if (/^invalid (path|directory)/.test(issue.message)) code = 'INVALID_PATH';
  else if (issue.message.startsWith('invalid command id')) code = 'INVALID_ID';
  return new ValidationError(code, message, { field: field || undefined });
}

async function checkSemantics(command: Command, incoming: IncomingCommand, policy: IntakePolicy) {
  if (incoming.messageId !== undefined && incoming.messageId !== command.id) {
    throw new ValidationError(
      'MESSAGE_ID_MISMATCH',
      `AMQP messageId ${JSON.stringify(incoming.messageId)} differs from the command id ${JSON.stringify(command.id)}`,
      { field: 'id' },
    );
  }
  switch (command.type) {
    case 'snapshot.create':
    case 'snapshot.delete':
    case 'snapshot.revert':
      await checkVolume(command.params.volume, policy);
      await checkStore(command.params.store, policy);
      break;
    case 'chain.verify':
      await checkStore(command.params.store, policy);
      if (command.params.volume) await checkVolume(command.params.volume, policy);
      if (command.params.compare) {
        await confinePath(
          command.params.compare.image,
          [...policy.storeRoots, ...policy.fileRoots],
          'params.compare.image',
        );
      }
      break;
    case 'agent.ping':
    case 'job.cancel':
      break;
  }
}

async function checkStore(store: StoreRef, policy: IntakePolicy): Promise<void> {
  const root = policy.storeRoots.find((r) => resolve(r) === store.root);
  if (root === undefined) {
    throw new ValidationError(
      'STORE_ROOT_NOT_CONFIGURED',
      `store root ${JSON.stringify(store.root)} is not a configured store root (${policy.storeRoots.join(', ')})`,
      { field: 'params.store.root' },
    );
  }
  await confinePath(join(store.root, store.dir), [root], 'params.store.dir');
}

async function checkVolume(volume: VolumeRef, policy: IntakePolicy): Promise<void> {
  if (volume.kind === 'lvm') {
    if (policy.volumeGroups.length > 0 && !policy.volumeGroups.includes(volume.vg)) {
      throw new ValidationError(
        'VOLUME_GROUP_NOT_ALLOWED',
        `volume group ${JSON.stringify(volume.vg)} is not one this agent may touch (${policy.volumeGroups.join(', ')})`,
        { field: 'params.volume.vg' },
      );
    }
    return;
  }
  await confinePath(volume.pool, policy.fileRoots, 'params.volume.pool');
  await confineChild(volume.pool, volume.file, policy.fileRoots, 'params.volume.file');
}

function readString(body: unknown, key: string): string | null {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return null;
  const value = (body as Record<string, unknown>)[key];
  return typeof value === 'string' ? value : null;
}

/** A body id is used for the rejection only when it is a plausible id (it becomes a routing/reply value). */
function readId(body: unknown): string | null {
  const id = readString(body, 'id');
  return id !== null && /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/.test(id) ? id : null;
}

function readVolume(body: unknown): VolumeRef | null {
  const params = (body as { params?: { volume?: unknown } } | null)?.params;
  const volume = params && typeof params === 'object' ? params.volume : undefined;
  if (!volume || typeof volume !== 'object') return null;
  const v = volume as Record<string, unknown>;
  if (v.kind === 'lvm' && typeof v.vg === 'string' && typeof v.lv === 'string') {
    return { kind: 'lvm', vg: v.vg, lv: v.lv };
  }
  if (v.kind === 'file' && typeof v.pool === 'string' && typeof v.file === 'string') {
    return { kind: 'file', pool: v.pool, file: v.file };
  }
  return null;
}
