import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { ASYNCAPI_FILE, buildAsyncApi, generatedSchemas } from '../../../scripts/gen-asyncapi.js';
import { REJECT_CODES } from '../../../src/jobs/command-validation.js';
import {
  COMMAND_TYPES,
  commandSchema,
  EVENT_KINDS,
  eventKindOf,
  eventSchema,
  eventSchemas,
  QMP_CODE_PATTERN,
  REJECTION_CODE_LIST,
} from '../../../src/protocol/index.js';

interface Message {
  name: string;
  payload: { $ref: string };
  examples?: Array<{ name: string; payload: unknown }>;
}

const doc = parse(readFileSync(ASYNCAPI_FILE, 'utf8')) as {
  asyncapi: string;
  info: {
    description: string;
    'x-error-catalogue': Array<{ code: string; event: string }>;
    'x-result-schemas': Record<string, { $ref: string }>;
  };
  components: { schemas: Record<string, unknown>; messages: Record<string, Message> };
  channels: Record<string, { address: string | null }>;
};
const regenerate = 'docs/asyncapi.yaml is stale: run `node --import tsx scripts/gen-asyncapi.ts`';

describe('docs/asyncapi.yaml', () => {
  it('is AsyncAPI 3.0.0 and embeds exactly the JSON Schemas generated from the zod schemas', () => {
    expect(doc.asyncapi).toBe('3.0.0');
    const { CommandHeaders: _headers, ...embedded } = doc.components.schemas;
    expect(embedded, regenerate).toEqual(generatedSchemas());
    for (const id of ['Command', 'Event', 'SnapshotCreateCommand', 'FailedEvent', 'PingResult']) {
      expect(Object.keys(embedded)).toContain(id);
    }
  });

  it('is exactly what the generator writes (examples and channels cannot drift either)', () => {
    expect(doc, regenerate).toEqual(JSON.parse(JSON.stringify(buildAsyncApi())));
  });

  it('has a message with examples for every command type and event kind', () => {
    const names = Object.values(doc.components.messages).map((m) => m.name);
    for (const type of COMMAND_TYPES) expect(names).toContain(type);
    for (const kind of EVENT_KINDS) expect(names).toContain(`io.clvm.snapshot-agent.${kind}`);
    for (const message of Object.values(doc.components.messages)) {
      expect(message.examples?.length, message.name).toBeGreaterThan(0);
    }
    expect(doc.channels.events?.address).toBe('{hostId}.{volumeKey}.{kind}');
    expect(doc.channels.commands?.address).toBe('{hostId}');
  });

  it('every example is valid by the zod schemas the agent uses', () => {
    let checked = 0;
    for (const message of Object.values(doc.components.messages)) {
      for (const example of message.examples ?? []) {
        const kind = eventKindOf(message.name);
        if (kind) {
          expect(eventSchema.safeParse(example.payload).success, example.name).toBe(true);
          const parsed = eventSchemas[kind].safeParse(example.payload);
          expect(parsed.error?.issues ?? [], example.name).toEqual([]);
        } else {
          const parsed = commandSchema.safeParse(example.payload);
          expect(parsed.error?.issues ?? [], example.name).toEqual([]);
          expect((example.payload as { type: string }).type).toBe(message.name);
        }
        checked++;
      }
    }
    expect(checked).toBeGreaterThanOrEqual(COMMAND_TYPES.length + EVENT_KINDS.length);
  });

  it('every example is valid by the embedded JSON Schema of its message, and bad input is not', () => {
    const ajv = new Ajv({ strict: false, validateFormats: false, allErrors: true });
    ajv.addSchema({ $id: 'asyncapi', components: { schemas: doc.components.schemas } });
    const validatorOf = (ref: string) => ajv.getSchema(`asyncapi${ref}`)!;
    for (const message of Object.values(doc.components.messages)) {
      const validate = validatorOf(message.payload.$ref);
      for (const example of message.examples ?? []) {
        expect(validate(example.payload), `${example.name}: ${ajv.errorsText(validate.errors)}`).toBe(true);
      }
    }
    const command = validatorOf('#/components/schemas/Command');
    expect(command({ id: 'x', type: 'agent.ping', params: { extra: 1 } })).toBe(false);
    expect(command({ id: '../x', type: 'agent.ping', params: {} })).toBe(false);
    expect(command({ id: 'x', type: 'vm.destroy', params: {} })).toBe(false);
  });

  it('examples stay valid after a YAML 1.1 round trip (timestamps and yes/no are quoted)', () => {
    const old = parse(readFileSync(ASYNCAPI_FILE, 'utf8'), { version: '1.1' }) as typeof doc;
    const ajv = new Ajv({ strict: false, validateFormats: false });
    ajv.addSchema({ $id: 'asyncapi', components: { schemas: old.components.schemas } });
    let checked = 0;
    for (const message of Object.values(old.components.messages)) {
      const validate = ajv.getSchema(`asyncapi${message.payload.$ref}`)!;
      for (const example of message.examples ?? []) {
        expect(validate(example.payload), `${example.name}: ${ajv.errorsText(validate.errors)}`).toBe(true);
        checked++;
      }
    }
    expect(checked).toBeGreaterThanOrEqual(COMMAND_TYPES.length + EVENT_KINDS.length);
  });

  it('lists every error code the source can raise, and intake emits only the RejectionCode enum', () => {
    const listed = new Set(doc.info['x-error-catalogue'].map((c) => c.code));
    const rejected = new Set(
      doc.info['x-error-catalogue'].filter((c) => c.event === 'rejected').map((c) => c.code),
    );
    // Intake's codes are exactly the document's rejection codes (and its schema enum).
    expect([...REJECT_CODES].sort()).toEqual([...rejected].sort());
    const enumInDoc = (doc.components.schemas.RejectionCode as { enum: string[] }).enum;
    expect([...enumInDoc].sort()).toEqual([...REJECTION_CODE_LIST].sort());
    // Every literal code in the source (errors thrown with a code) is in the catalogue.
    const found = new Map<string, string>();
    const walk = (dir: string) => {
      for (const name of readdirSync(dir)) {
        const path = join(dir, name);
        if (statSync(path).isDirectory()) {
          if (name !== 'cli' && name !== 'dashboard') walk(path);
        } else if (name.endsWith('.ts')) {
          const text = readFileSync(path, 'utf8');
          const patterns = [
            /(?:ValidationError|AgentError)\(\s*'([A-Z][A-Z0-9_]+)'/g,
            /super\(\s*'([A-Z][A-Z0-9_]+)'/g,
            /:\s*'(HOST_[A-Z_]+)'/g,
            /'(STORE_FULL|POOL_FULL)'/g,
            /toAgentError\([^,]+,\s*'([A-Z_]+)'\)/g,
          ];
          for (const re of patterns) for (const m of text.matchAll(re)) found.set(m[1]!, path);
        }
      }
    };
    walk(join(import.meta.dirname, '../../../src'));
    expect(found.size).toBeGreaterThan(40);
    // Codes that never reach an event: configuration at start-up, snapctl's usage errors.
    const notInEvents = new Set(['CONFIG_INVALID', 'USAGE']);
    const missing = [...found].filter(
      ([code]) => !listed.has(code) && !notInEvents.has(code) && !new RegExp(QMP_CODE_PATTERN).test(code),
    );
    expect(missing, 'add these codes to src/protocol/error-codes.ts').toEqual([]);
    expect(doc.info.description).toContain('| `ID_CONFLICT` | rejected | no |');
  });

  it('has a result schema for every command type', () => {
    for (const type of COMMAND_TYPES) {
      const ref = doc.info['x-result-schemas'][type]?.$ref;
      expect(ref, type).toMatch(/^#\/components\/schemas\/\w+Result$/);
      expect(doc.components.schemas[ref!.split('/').pop()!], type).toBeDefined();
    }
  });
});
