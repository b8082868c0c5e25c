// fast-check arbitraries built from the JSON Schemas of docs/asyncapi.yaml (not from the agent's
// zod): the fuzz suite generates commands from the document a client would read.
import fc from 'fast-check';

export type JsonSchema = Record<string, unknown>;

/** Removes `(?!...)` / `(?=...)` groups (fast-check cannot generate through lookaheads). */
function stripLookaheads(pattern: string): string {
  let out = '';
  for (let i = 0; i < pattern.length; i++) {
    if (pattern[i] === '\\') {
      out += pattern.slice(i, i + 2);
      i++;
      continue;
    }
    if (pattern.startsWith('(?!', i) || pattern.startsWith('(?=', i)) {
      let depth = 0;
      for (; i < pattern.length; i++) {
        if (pattern[i] === '\\') {
          i++;
          continue;
        }
        if (pattern[i] === '(') depth++;
        else if (pattern[i] === ')' && --depth === 0) break;
      }
      continue;
    }
    out += pattern[i];
  }
  return out;
}

function matching(pattern: string): fc.Arbitrary<string> {
  const re = new RegExp(pattern);
  try {
    return fc.stringMatching(re);
  } catch {
    return fc.stringMatching(new RegExp(stripLookaheads(pattern))).filter((s) => re.test(s));
  }
}

/** An arbitrary of values the schema accepts; `components` resolves `#/components/schemas/<id>`. */
export function arbitraryFor(
  schema: JsonSchema,
  components: Record<string, JsonSchema>,
  cache = new Map<string, fc.Arbitrary<unknown>>(),
): fc.Arbitrary<unknown> {
  const ref = schema.$ref as string | undefined;
  if (ref) {
    // The protocol's schemas have no cycles: each reference is built once and reused.
    const id = ref.split('/').pop()!;
    const target = components[id];
    if (!target) throw new Error(`unresolved ${ref}`);
    if (!cache.has(id)) cache.set(id, arbitraryFor(target, components, cache));
    return cache.get(id)!;
  }
  const all = schema.allOf as JsonSchema[] | undefined;
  if (all?.length === 1) return arbitraryFor(all[0]!, components, cache);
  if (all) throw new Error('allOf with several schemas is not supported');
  const alternatives = (schema.oneOf ?? schema.anyOf) as JsonSchema[] | undefined;
  if (alternatives) return fc.oneof(...alternatives.map((s) => arbitraryFor(s, components, cache)));
  if ('const' in schema) return fc.constant(schema.const);
  if (Array.isArray(schema.enum)) return fc.constantFrom(...(schema.enum as unknown[]));
  switch (schema.type) {
    case 'object': {
      const properties = (schema.properties ?? {}) as Record<string, JsonSchema>;
      const required = (schema.required ?? []) as string[];
      const record: Record<string, fc.Arbitrary<unknown>> = {};
      for (const [key, sub] of Object.entries(properties)) record[key] = arbitraryFor(sub, components, cache);
      return fc.record(record, { requiredKeys: required });
    }
    case 'array': {
      const minLength = (schema.minItems as number | undefined) ?? 0;
      const maxLength = Math.min((schema.maxItems as number | undefined) ?? 3, minLength + 3);
      return fc.array(arbitraryFor(schema.items as JsonSchema, components, cache), { minLength, maxLength });
    }
    case 'string': {
      const minLength = (schema.minLength as number | undefined) ?? 0;
      const maxLength = (schema.maxLength as number | undefined) ?? 64;
      const base =
        typeof schema.pattern === 'string'
          ? matching(schema.pattern)
          : fc.string({ minLength, maxLength: Math.min(maxLength, 40) });
      return base.filter((s) => s.length >= minLength && s.length <= maxLength);
    }
    case 'integer':
      return fc.integer({
        min: (schema.minimum as number | undefined) ?? -1000,
        max: (schema.maximum as number | undefined) ?? 1000,
      });
    case 'number':
      return fc.double({
        min: (schema.minimum as number | undefined) ?? -1000,
        max: (schema.maximum as number | undefined) ?? 1000,
        noNaN: true,
      });
    case 'boolean':
      return fc.boolean();
    case 'null':
      return fc.constant(null);
    default:
      throw new Error(`schema without a type the fuzzer knows: ${JSON.stringify(schema).slice(0, 200)}`);
  }
}
