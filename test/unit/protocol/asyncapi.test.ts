import { readFileSync } from 'node:fs';
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { ASYNCAPI_FILE, buildAsyncApi, generatedSchemas } from '../../../scripts/gen-asyncapi.js';
import {
  COMMAND_TYPES,
  commandSchema,
  EVENT_KINDS,
  eventKindOf,
  eventSchema,
  eventSchemas,
} from '../../../src/protocol/index.js';

interface Message {
  name: string;
  payload: { $ref: string };
  examples?: Array<{ name: string; payload: unknown }>;
}

const doc = parse(readFileSync(ASYNCAPI_FILE, 'utf8')) as {
  asyncapi: string;
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
});
