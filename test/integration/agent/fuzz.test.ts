// Property-based fuzzing of the control plane (issue 11): commands generated from the JSON Schemas
// of docs/asyncapi.yaml, valid and mutated, sent through the real broker to a real agent whose
// handlers only record that they ran. The oracle is the document: its schemas (ajv) plus the rules
// it lists beyond them. Seed: FUZZ_SEED (printed); size: FUZZ_COUNT (default 10,000).
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { connect } from 'amqplib';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { ASYNCAPI_FILE } from '../../../scripts/gen-asyncapi.js';
import type { CommandHandlerFn, HandlerRegistry } from '../../../src/jobs/types.js';
import { startTestAgent, type TestAgent, TestClient } from '../../support/agent.js';
import { brokerUrl } from '../../support/broker.js';
import { arbitraryFor, type JsonSchema } from '../../support/schema-arbitrary.js';
import { waitFor } from '../../support/wait.js';

const SEED = Number(process.env.FUZZ_SEED ?? Date.now() % 2_147_483_647);
const COUNT = Number(process.env.FUZZ_COUNT ?? 10_000);
const MAX_BYTES = 64 * 1024;

const doc = parse(readFileSync(ASYNCAPI_FILE, 'utf8'), { version: '1.1' }) as {
  components: { schemas: Record<string, JsonSchema> };
  info: { 'x-error-catalogue': Array<{ code: string; event: string }> };
};
const schemas = doc.components.schemas;
const ajv = new Ajv({ strict: false, validateFormats: false });
ajv.addSchema({ $id: 'asyncapi', components: { schemas } });
const validCommand = ajv.getSchema('asyncapi#/components/schemas/Command')!;
const documentedRejections = new Set(
  doc.info['x-error-catalogue'].filter((c) => c.event === 'rejected').map((c) => c.code),
);
const ID_PATTERN = new RegExp(
  (schemas.SnapshotCreateCommand!.properties as Record<string, JsonSchema>).id!.pattern as string,
);

/** One generated delivery. */
interface Delivery {
  n: number;
  category: string;
  body: Buffer;
  messageId?: string;
  contentType?: string | null;
  contentEncoding?: string;
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Every path (array of keys) to a value inside `v`, the root included. */
function pathsOf(v: Json, prefix: string[] = []): string[][] {
  const out = [prefix];
  if (v && typeof v === 'object') {
    for (const [k, child] of Object.entries(v)) out.push(...pathsOf(child as Json, [...prefix, k]));
  }
  return out;
}

function setAt(root: Json, path: string[], value: Json | undefined): Json {
  if (path.length === 0) return value ?? null;
  const copy = structuredClone(root) as Record<string, Json>;
  let node = copy as Record<string, Json>;
  for (const key of path.slice(0, -1)) node = node[key] as Record<string, Json>;
  const last = path.at(-1)!;
  if (value === undefined) {
    if (Array.isArray(node)) node.splice(Number(last), 1);
    else delete node[last];
  } else node[last] = value;
  return copy;
}

const weirdStrings = [
  '\ud800',
  'a\udfffb',
  'nul\u0000',
  '😀',
  '\u202egnp.exe',
  'e\u0301',
  '',
  ' ',
  '../../etc',
  'a/../b',
  '/abs',
  '..',
  '.',
  '-rf',
  '$(reboot)',
  'x'.repeat(256),
  'x'.repeat(128),
  'snapshot1',
  'lv_tmeta',
];

describe('control plane fuzzing (real broker, real agent)', () => {
  let agent: TestAgent | undefined;
  let client: TestClient | undefined;
  let stateDir: string | undefined;
  afterAll(async () => {
    await client?.close();
    await agent?.stop();
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
  });

  it(`${COUNT} generated commands: accepted iff the document says so, one answer each, nothing runs for a rejection`, async () => {
    const started = Date.now();
    // The journal and outbox on tmpfs when there is one: fsync cost is not what is tested here.
    stateDir = await mkdtemp(join(existsSync('/dev/shm') ? '/dev/shm' : '/tmp', 'i11-fuzz-'));
    const runs = new Map<string, number>();
    const record: CommandHandlerFn = async (ctx) => {
      runs.set(ctx.jobId, (runs.get(ctx.jobId) ?? 0) + 1);
      return {};
    };
    const handlers = {
      'agent.ping': record,
      'snapshot.create': record,
      'snapshot.delete': record,
      'snapshot.revert': record,
      'chain.verify': record,
    } as HandlerRegistry;
    // Roots of our own, so everything is generated (and judged) before the agent starts: a long
    // synchronous generation must not starve the agent's heartbeats.
    const storeRoot = join(stateDir, 'store');
    const fileRoot = join(stateDir, 'pools');
    await mkdir(join(fileRoot, 'p1'), { recursive: true });
    await mkdir(storeRoot, { recursive: true });
    // Symlinks out of the roots: names the schema accepts, a rule beyond it refuses.
    await symlink('/etc', join(fileRoot, 'escape'));
    await symlink('/etc', join(storeRoot, 'escape'));
    const symlinks = [join(fileRoot, 'escape'), join(storeRoot, 'escape')];

    // ---- generation (deterministic from the seed) ----
    const anyCommand = arbitraryFor({ $ref: '#/components/schemas/Command' }, schemas) as fc.Arbitrary<
      Record<string, Json>
    >;
    /** Mostly places paths under the configured roots, so valid commands also pass the config rules. */
    const placed = fc
      .tuple(anyCommand, fc.integer({ min: 0, max: 9 }), fc.constantFrom('', '/p1', '/escape', '/q'))
      .map(([generated, dice, sub]) => {
        const cmd = structuredClone(generated);
        const params = cmd.params as Record<string, Json> | undefined;
        if (!params || dice === 0) return cmd;
        const store = params.store as Record<string, Json> | undefined;
        if (store) store.root = dice === 1 ? `${storeRoot}/` : storeRoot;
        const volume = params.volume as Record<string, Json> | undefined;
        if (volume?.kind === 'file') volume.pool = `${fileRoot}${dice < 8 ? '' : sub}`;
        const compare = params.compare as Record<string, Json> | undefined;
        if (compare) compare.image = `${dice === 9 ? fileRoot : storeRoot}/${dice === 2 ? 'escape' : 'img'}`;
        return cmd;
      });
    const mutation = fc.oneof(
      { arbitrary: fc.constant({ kind: 'none' as const }), weight: 6 },
      { arbitrary: fc.record({ kind: fc.constant('delete' as const), at: fc.nat() }), weight: 2 },
      {
        arbitrary: fc.record({
          kind: fc.constant('replace' as const),
          at: fc.nat(),
          value: fc.oneof(
            fc.constantFrom<Json>(null, true, 0, -1, 1.5, [], {}, 'x'),
            fc.constantFrom<Json>(...weirdStrings),
            fc.string({ maxLength: 8, unit: 'binary' }),
          ),
        }),
        weight: 4,
      },
      {
        arbitrary: fc.record({
          kind: fc.constant('extra' as const),
          at: fc.nat(),
          key: fc.constantFrom('extra', '__proto__', 'constructor', 'x\ud800', 'ID'),
        }),
        weight: 1,
      },
      {
        arbitrary: fc.record({
          kind: fc.constant('raw' as const),
          how: fc.constantFrom(
            'truncate',
            'bad-utf8',
            'overlong',
            'huge',
            'empty',
            'array',
            'number',
            'gzip',
            'text',
            'charset',
            'no-content-type',
            'id-mismatch',
            'no-message-id',
            'unknown-type',
            'duplicate-key',
          ),
        }),
        weight: 2,
      },
    );
    const samples = fc.sample(fc.tuple(placed, mutation), { seed: SEED, numRuns: COUNT });
    const deliveries: Delivery[] = samples.map(([command, m], n) => {
      const id = `f${SEED}-${n}`;
      let body: Json = { ...command, id };
      const d: Delivery = { n, category: m.kind, body: Buffer.alloc(0), messageId: id };
      if (m.kind === 'delete' || m.kind === 'replace' || m.kind === 'extra') {
        // Never the id itself: an id stays the tracking key (id mutations are the 'raw' cases).
        const paths = pathsOf(body).filter((p) => p.length > 0 && !(p.length === 1 && p[0] === 'id'));
        const path = paths[m.at % paths.length]!;
        if (m.kind === 'delete') body = setAt(body, path, undefined);
        else if (m.kind === 'replace') body = setAt(body, path, m.value);
        else {
          const parents = pathsOf(body).filter((p) => {
            let node: Json = body;
            for (const k of p) node = (node as Record<string, Json>)[k]!;
            return node !== null && typeof node === 'object' && !Array.isArray(node);
          });
          const parent = parents[m.at % parents.length]!;
          body = setAt(body, [...parent, m.key], 1);
        }
        d.category = `${m.kind}:${path.join('.')}`.replace(/\.\d+/g, '.N');
      }
      let text = JSON.stringify(body);
      if (m.kind === 'raw') {
        d.category = `raw:${m.how}`;
        switch (m.how) {
          case 'truncate':
            text = text.slice(0, Math.max(1, text.length - 3));
            break;
          case 'huge':
            text = JSON.stringify({ ...(body as object), pad: 'x'.repeat(MAX_BYTES) });
            break;
          case 'empty':
            text = '';
            break;
          case 'array':
            text = `[${text}]`;
            break;
          case 'number':
            text = '42';
            break;
          case 'gzip':
            d.contentEncoding = 'gzip';
            break;
          case 'text':
            d.contentType = 'text/plain';
            break;
          case 'charset':
            d.contentType = 'application/json; charset=utf-8';
            break;
          case 'no-content-type':
            d.contentType = null;
            break;
          case 'id-mismatch':
            d.messageId = `${id}-other`;
            break;
          case 'no-message-id':
            delete d.messageId;
            break;
          case 'unknown-type':
            text = JSON.stringify({ ...(body as object), type: 'vm.destroy' });
            break;
          case 'duplicate-key':
            text = `{"id":"${id}",${text.slice(1)}`;
            break;
        }
        d.body = Buffer.from(text);
        if (m.how === 'bad-utf8')
          d.body = Buffer.concat([Buffer.from(text.slice(0, -1)), Buffer.from([0xff, 0x7d])]);
        if (m.how === 'overlong')
          d.body = Buffer.concat([Buffer.from(text.slice(0, -1)), Buffer.from([0xc0, 0xbd])]);
      } else d.body = Buffer.from(text);
      return d;
    });

    // ---- the oracle: the document ----
    const strictUtf8 = new TextDecoder('utf-8', { fatal: true });
    const loneSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
    const weird = (s: string) => loneSurrogate.test(s) || s.includes(String.fromCharCode(0));
    const underRoot = (path: unknown, roots: string[]) =>
      typeof path === 'string' &&
      roots.some((r) => path === r || path.startsWith(`${r}/`)) &&
      !symlinks.some((s) => path === s || path.startsWith(`${s}/`));
    function readableId(d: Delivery, body: unknown): string | null {
      const id = (body as { id?: unknown } | null)?.id;
      if (typeof id === 'string' && ID_PATTERN.test(id)) return id;
      return d.messageId ?? null;
    }
    function hasWeirdUnicode(v: unknown): boolean {
      if (typeof v === 'string') return weird(v);
      if (v && typeof v === 'object')
        return Object.entries(v).some(([k, c]) => weird(k) || hasWeirdUnicode(c));
      return false;
    }
    const usedIds = new Set<string>();
    /** Whether the document says the agent accepts it, and the id its answer carries. */
    function expectation(d: Delivery): { accept: boolean; id: string | null; why: string } {
      let body: unknown;
      const answer = (accept: boolean, why: string) => ({ accept, id: readableId(d, body), why });
      if (d.body.length > MAX_BYTES) return answer(false, 'size');
      if (
        d.contentType !== undefined &&
        d.contentType !== null &&
        !/^application\/json(; ?charset=utf-8)?$/i.test(d.contentType)
      )
        return answer(false, 'content-type');
      if (d.contentEncoding !== undefined && d.contentEncoding !== 'identity')
        return answer(false, 'content-encoding');
      let text: string;
      try {
        text = strictUtf8.decode(d.body);
      } catch {
        return answer(false, 'utf-8');
      }
      try {
        body = JSON.parse(text);
      } catch {
        return answer(false, 'json');
      }
      if (hasWeirdUnicode(body)) return answer(false, 'unicode');
      if (!validCommand(body)) return answer(false, `schema: ${ajv.errorsText(validCommand.errors)}`);
      const cmd = body as { id: string; params: Record<string, Record<string, unknown> | undefined> };
      if (d.messageId !== undefined && d.messageId !== cmd.id) return answer(false, 'messageId');
      const params = cmd.params ?? {};
      const store = params.store;
      if (store && store.root !== storeRoot) return answer(false, 'store root');
      if (store && !underRoot(`${store.root}/${store.dir}`, [storeRoot])) return answer(false, 'store dir');
      const volume = params.volume;
      if (volume?.kind === 'file' && !underRoot(`${volume.pool}/${volume.file}`, [fileRoot]))
        return answer(false, 'pool');
      const compare = params.compare;
      if (compare && !underRoot(compare.image, [storeRoot, fileRoot])) return answer(false, 'compare image');
      if (usedIds.has(cmd.id)) return answer(false, 'id used');
      usedIds.add(cmd.id);
      return answer(true, 'valid');
    }

    const expected = deliveries.map((d) => ({ d, ...expectation(d) }));

    // ---- send ----
    agent = await startTestAgent({
      handlers,
      stateDir: join(stateDir, 'state'),
      overrides: {
        broker: { prefetch: 64 },
        store: { roots: [storeRoot] },
        pools: { fileRoots: [fileRoot], volumeGroups: [] },
        limits: { maxConcurrentJobs: 16, maxMessageBytes: MAX_BYTES, progressIntervalMs: 1000 },
      },
    });
    client = await TestClient.open(agent);
    const send = async (d: Delivery) =>
      client!.send(d.body, {
        ...(d.messageId ? { messageId: d.messageId } : {}),
        ...(d.contentType !== undefined ? { contentType: d.contentType } : {}),
        ...(d.contentEncoding ? { contentEncoding: d.contentEncoding } : {}),
      });
    const readyz = async () => {
      const res = await fetch(`${await agent!.httpUrl()}/readyz`);
      const text = await res.text();
      return res.status === 200 ? 200 : `${res.status} ${text}`;
    };
    for (const [i, e] of expected.entries()) {
      await send(e.d);
      if (i % 1000 === 999) {
        // Backpressure for the test's own publisher (at most ~2000 unanswered), and the agent must
        // stay ready throughout.
        await waitFor(
          () => (client!.events.filter((x) => x.kind !== 'accepted').length >= i - 2000 ? true : undefined),
          120_000,
          () => `the agent stopped answering (seed ${SEED})`,
        );
        expect(await readyz()).toBe(200);
      }
    }

    // Phase 2, after phase 1 is answered: the same ids again, byte-identical and with other bodies.
    const byCorrelation = () => {
      const map = new Map<string, TestClient['events']>();
      for (const e of client!.events) {
        const list = map.get(e.event.correlationid) ?? [];
        list.push(e);
        map.set(e.event.correlationid, list);
      }
      return map;
    };
    const waitAnswers = async (ids: Array<string | null>) => {
      const want = ids.filter((x): x is string => x !== null);
      await waitFor(
        () => {
          const map = byCorrelation();
          const missing = want.filter(
            (id) => !(map.get(id) ?? []).some((e) => ['succeeded', 'failed', 'rejected'].includes(e.kind!)),
          );
          return missing.length === 0 ? true : undefined;
        },
        150_000,
        () => `no answer yet (seed ${SEED})`,
      );
    };
    await waitAnswers(expected.map((e) => e.id));
    const acceptedOnes = expected.filter((e) => e.accept);
    const reuse = acceptedOnes.slice(0, 300).map((e, i) => {
      const original = JSON.parse(e.d.body.toString()) as Record<string, Json>;
      const variant = i % 3;
      const body =
        variant === 0
          ? e.d.body // byte-identical: the recorded terminal again
          : Buffer.from(
              JSON.stringify(
                variant === 1
                  ? { type: 'agent.ping', id: original.id, params: {} } // valid, other body: ID_CONFLICT
                  : { ...original, params: 7 }, // invalid body under a used id
              ),
            );
      return {
        d: { ...e.d, body, category: `reuse:${['same', 'conflict', 'invalid'][variant]}` },
        variant,
        id: e.id!,
      };
    });
    if (reuse.some((r) => r.variant === 1 && r.d.body.equals(acceptedOnes[reuse.indexOf(r)]!.d.body)))
      throw new Error('a conflict body equals its original');
    for (const r of reuse) await send(r.d);
    const conflictId = (r: (typeof reuse)[number]) =>
      `${r.id}#${createHash('sha256').update(r.d.body).digest('hex').slice(0, 16)}`;
    await waitAnswers(reuse.filter((r) => r.variant !== 0).map(conflictId));
    await waitFor(
      () => {
        const map = byCorrelation();
        return reuse
          .filter((r) => r.variant === 0)
          .every((r) => (map.get(r.id) ?? []).filter((e) => e.kind === 'succeeded').length === 2)
          ? true
          : undefined;
      },
      60_000,
      () => `byte-identical duplicates not answered (seed ${SEED})`,
    );

    // ---- invariants ----
    const map = byCorrelation();
    const problems: string[] = [];
    const codes = new Map<string, number>();
    const why = new Map<string, number>();
    const reuseById = new Map(reuse.map((r) => [r.id, r]));
    for (const e of expected) {
      why.set(e.why.split(':')[0]!, (why.get(e.why.split(':')[0]!) ?? 0) + 1);
      const show = () =>
        `#${e.d.n} ${e.d.category} (${e.why}) body=${e.d.body.toString('utf8').slice(0, 300)}`;
      if (e.id === null) continue;
      const events = map.get(e.id) ?? [];
      const kinds = events.map((x) => `${x.kind}:${x.event.sequence}`);
      const sameBytes = reuseById.get(e.id)?.variant === 0;
      if (e.accept) {
        const want = [
          'accepted:0000000001',
          'succeeded:0000000002',
          ...(sameBytes ? ['succeeded:0000000002'] : []),
        ];
        if (kinds.join() !== want.join())
          problems.push(`accepted stream ${kinds.join()} ≠ ${want.join()}: ${show()}`);
        // job.cancel is built into the runner and touches no host tool: not recorded.
        const builtIn = (JSON.parse(e.d.body.toString()) as { type: string }).type === 'job.cancel';
        if (!builtIn && runs.get(e.id) !== 1) problems.push(`ran ${runs.get(e.id) ?? 0} times: ${show()}`);
        if (sameBytes && events[1]!.event.id !== events[2]!.event.id)
          problems.push(`duplicate got a new event id: ${show()}`);
      } else {
        const rejected = events.filter((x) => x.kind === 'rejected');
        if (kinds.join() !== 'rejected:0000000001')
          problems.push(`rejected stream ${kinds.join()}: ${show()}`);
        if (runs.has(e.id)) problems.push(`a rejected command ran: ${show()}`);
        for (const x of rejected) {
          const code = (x.event.data as { error: { code: string } }).error.code;
          codes.set(code, (codes.get(code) ?? 0) + 1);
          if (!documentedRejections.has(code)) problems.push(`undocumented code ${code}: ${show()}`);
        }
      }
    }
    for (const r of reuse.filter((x) => x.variant !== 0)) {
      const events = map.get(conflictId(r)) ?? [];
      const code = (events[0]?.event.data as { error?: { code: string } } | undefined)?.error?.code;
      const want = r.variant === 1 ? 'ID_CONFLICT' : 'SCHEMA_INVALID';
      if (events.length !== 1 || events[0]!.kind !== 'rejected' || code !== want)
        problems.push(`reuse ${r.id} variant ${r.variant}: ${events.map((x) => x.kind).join()} ${code}`);
      codes.set(code ?? '?', (codes.get(code ?? '?') ?? 0) + 1);
    }
    for (const [id, n] of runs) if (n !== 1) problems.push(`${id} ran ${n} times`);
    // Every refused message, with an id or not, was dead-lettered.
    const expectedDead =
      expected.filter((e) => !e.accept).length + reuse.filter((r) => r.variant !== 0).length;
    const deadLetters = async () => {
      const conn = await connect(brokerUrl());
      try {
        const ch = await conn.createChannel();
        return (await ch.checkQueue(agent!.names.deadLetterQueue)).messageCount;
      } finally {
        await conn.close();
      }
    };
    // Dead-lettering follows the rejected event: wait a little for the count, then judge it.
    const dead = await waitFor(async () => {
      const n = await deadLetters();
      return n >= expectedDead ? n : undefined;
    }, 20_000).catch(() => deadLetters());
    expect(await readyz()).toBe(200);
    const accepted = expected.filter((e) => e.accept).length;
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    console.log(
      [
        `fuzz seed ${SEED} (FUZZ_SEED=${SEED} to reproduce): ${COUNT + reuse.length} messages in ${seconds} s`,
        `  accepted ${accepted}, rejected ${COUNT - accepted} (+${reuse.length} id reuses: ${reuse.filter((r) => r.variant === 0).length} same bytes, ${reuse.filter((r) => r.variant === 1).length} ID_CONFLICT, ${reuse.filter((r) => r.variant === 2).length} invalid)`,
        `  events ${client.events.length}, handler runs ${runs.size}, dead letters ${dead}`,
        `  oracle verdicts: ${[...why].map(([k, v]) => `${k} ${v}`).join(', ')}`,
        `  rejection codes: ${[...codes]
          .sort((a, b) => b[1] - a[1])
          .map(([k, v]) => `${k} ${v}`)
          .join(', ')}`,
      ].join('\n'),
    );
    expect(problems.slice(0, 20), `seed ${SEED}: ${problems.length} problems`).toEqual([]);
    expect(dead).toBe(expectedDead);
    expect(accepted).toBeGreaterThan(COUNT / 5);
  }, 300_000);
});
