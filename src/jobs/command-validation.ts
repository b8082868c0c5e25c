import type { z } from 'zod';
import { ValidationError } from '../errors/index.js';
import {
  COMMAND_ID_PATTERN,
  type Command,
  type CommandEnvelope,
  commandSchema,
  REJECTION_CODE_LIST,
  type RejectionCode,
  SIGNATURE_HEADER,
  type VolumeRef,
  verifySignature,
} from '../protocol/index.js';
import { type CommandKeyPolicy, checkCommandSignature } from './command-signature.js';
import { commandSpec, type PathPolicy } from './command-table.js';
import type { IncomingCommand } from './ports.js';

/** What intake checks against (a slice of AgentConfig). */
export interface IntakePolicy extends PathPolicy {
  maxMessageBytes: number;
  /** Legacy: when non-empty (and no commandKeys), every command must carry a valid HMAC header. */
  signingKey: string;
  /** When set, every command must carry a valid Ed25519 envelope (takes the place of signingKey). */
  commandKeys?: CommandKeyPolicy;
}

/** Rejection codes (the `rejected` event's error.code and the metric's reason): the catalogue's. */
export const REJECT_CODES = REJECTION_CODE_LIST;
export type RejectCode = RejectionCode;

/** Content types a command may declare (or none at all); parameters other than charset=utf-8 are refused. */
const JSON_CONTENT_TYPE = /^application\/json\s*(;\s*charset\s*=\s*"?utf-8"?\s*)?$/i;
/** Content encodings a command may declare (or none): the body is never compressed. */
const IDENTITY_ENCODING = /^identity$/i;
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false });

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
  if (incoming.contentType !== undefined && !JSON_CONTENT_TYPE.test(incoming.contentType)) {
    return fail(
      new ValidationError(
        'UNSUPPORTED_CONTENT_TYPE',
        `content-type ${JSON.stringify(incoming.contentType)} is not supported: send application/json or none`,
        { field: 'properties.contentType' },
      ),
    );
  }
  if (incoming.contentEncoding !== undefined && !IDENTITY_ENCODING.test(incoming.contentEncoding)) {
    return fail(
      new ValidationError(
        'UNSUPPORTED_CONTENT_ENCODING',
        `content-encoding ${JSON.stringify(incoming.contentEncoding)} is not supported: send the JSON as is`,
        { field: 'properties.contentEncoding' },
      ),
    );
  }
  let text: string;
  try {
    text = strictUtf8.decode(incoming.body);
  } catch (error) {
    return fail(
      new ValidationError('INVALID_UTF8', 'command body is not valid UTF-8 (or holds overlong sequences)', {
        field: 'body',
        cause: error,
      }),
    );
  }
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (error) {
    return fail(
      new ValidationError('INVALID_JSON', `command body is not JSON: ${(error as Error).message}`, {
        field: 'body',
        cause: error,
      }),
    );
  }
  const unicode = unicodeProblem(body, '');
  if (unicode) {
    return fail(
      new ValidationError('INVALID_UNICODE', `${unicode.field || 'command'}: ${unicode.problem}`, {
        field: unicode.field || undefined,
      }),
      body,
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
  let code: RejectCode = 'SCHEMA_INVALID';
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
  await commandSpec(command.type).confine(command, policy);
}

/**
 * The first string (key or value) holding a lone UTF-16 surrogate or a NUL, with its dotted path.
 * Iterative: a deeply nested body must not overflow the stack.
 */
export function unicodeProblem(
  root: unknown,
  rootField: string,
): { field: string; problem: string } | undefined {
  const stack: Array<[unknown, string]> = [[root, rootField]];
  while (stack.length > 0) {
    const [value, field] = stack.pop()!;
    if (typeof value === 'string') {
      const problem = stringProblem(value, field);
      if (problem) return problem;
      continue;
    }
    if (value === null || typeof value !== 'object') continue;
    const entries = Array.isArray(value)
      ? value.map((v, i) => [String(i), v] as const)
      : Object.entries(value);
    for (let i = entries.length - 1; i >= 0; i--) {
      const [key, child] = entries[i]!;
      const path = field ? `${field}.${key}` : key;
      const problem = stringProblem(key, path);
      if (problem) return problem;
      stack.push([child, path]);
    }
  }
  return undefined;
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function stringProblem(value: string, field: string): { field: string; problem: string } | undefined {
  if (LONE_SURROGATE.test(value))
    return { field, problem: 'holds a lone UTF-16 surrogate (\\uD800-\\uDFFF)' };
  if (value.includes('\u0000')) return { field, problem: 'holds a NUL character' };
  return undefined;
}

function readString(body: unknown, key: string): string | null {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return null;
  const value = (body as Record<string, unknown>)[key];
  return typeof value === 'string' ? value : null;
}

/** A body id is used for the rejection only when it is a plausible id (it becomes a routing/reply value). */
function readId(body: unknown): string | null {
  const id = readString(body, 'id');
  return id !== null && COMMAND_ID_PATTERN.test(id) ? id : null;
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
