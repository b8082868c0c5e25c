// Generates docs/asyncapi.yaml (AsyncAPI 3.0.0) from the zod schemas the agent validates with,
// so the document cannot drift from the code. Run: node --import tsx scripts/gen-asyncapi.ts
// test/unit/protocol/asyncapi.test.ts fails when the committed file differs from this output.
import { writeFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { stringify } from 'yaml';
import { z } from 'zod';
import {
  type AgentEvent,
  COMMAND_RESULTS,
  COMMAND_SIGNATURE_HEADERS,
  COMMAND_TYPES,
  type Command,
  ENVELOPE_FIELD_PATTERNS,
  ENVELOPE_VERSION,
  ERROR_CATALOGUE,
  EVENT_KINDS,
  type EventKind,
  eventTypePrefix,
  QMP_CODE_PATTERN,
  ROUTING_WORD_MAX,
  ROUTING_WORD_PREFIX,
  SIGNATURE_HEADER,
  volumeKey,
} from '../src/protocol/index.js';
import { signatureExample } from '../src/protocol/signature-example.js';
import { AGENT_VERSION } from '../src/version.js';

export const ASYNCAPI_FILE = fileURLToPath(new URL('../docs/asyncapi.yaml', import.meta.url));

/**
 * JSON Schemas of every protocol schema that has a meta id (commands, events, their parts), as
 * AsyncAPI components: references point at `#/components/schemas/<id>`. Draft-07 is what the
 * AsyncAPI schema format builds on. Name rules that are code (LVM reserved words) are enforced by
 * the agent beyond these schemas; their patterns here are the documented subset.
 */
export function generatedSchemas(): Record<string, Record<string, unknown>> {
  const { schemas } = z.toJSONSchema(z.globalRegistry, {
    target: 'draft-07',
    io: 'input',
    uri: (id) => `#/components/schemas/${id}`,
  });
  const out: Record<string, Record<string, unknown>> = {};
  for (const [id, schema] of Object.entries(schemas)) {
    const { $schema: _s, $id: _i, ...rest } = schema as Record<string, unknown>;
    out[id] = rest;
  }
  return out;
}

const HOST = 'hv01';
const VOLUME = { kind: 'lvm', vg: 'vg-primary', lv: 'vol-7f3a' } as const;
const FILE_VOLUME = { kind: 'file', pool: '/var/lib/libvirt/images/pool1', file: 'vol-42.qcow2' } as const;
const STORE = { root: '/mnt/snapstore', dir: 'vol-7f3a' };
const TIME = '2026-01-15T10:00:00.000Z';

/** One example message per command type, valid by commandSchema (the unit test checks). */
export const commandExamples: Record<string, Command[]> = {
  'agent.ping': [{ id: 'ping-0001', type: 'agent.ping', params: {} }],
  'snapshot.create': [
    {
      id: 'cmd-0002',
      type: 'snapshot.create',
      params: {
        volume: VOLUME,
        vm: 'i-2-34-VM',
        store: STORE,
        parents: ['snap-1', 'snap-2'],
        snapshot: 'snap-3',
        options: {
          strategy: 'auto',
          quiesce: false,
          verify: 'metadata',
          compress: false,
          maxChainLength: 16,
        },
      },
      createdAt: TIME,
    },
    {
      id: 'cmd-0003',
      type: 'snapshot.create',
      params: {
        volume: FILE_VOLUME,
        vm: null,
        store: { root: '/mnt/snapstore', dir: 'vol-42' },
        parents: [],
        snapshot: 'snap-1',
        options: { strategy: 'offline', quiesce: false, verify: 'full', compress: false, maxChainLength: 16 },
      },
    },
  ],
  'snapshot.delete': [
    {
      id: 'cmd-0004',
      type: 'snapshot.delete',
      params: {
        volume: VOLUME,
        vm: null,
        store: STORE,
        chain: ['snap-1', 'snap-2', 'snap-3'],
        snapshot: 'snap-2',
      },
    },
  ],
  'snapshot.revert': [
    {
      id: 'cmd-0005',
      type: 'snapshot.revert',
      params: {
        volume: VOLUME,
        vm: null,
        store: STORE,
        chain: ['snap-1', 'snap-2'],
        snapshot: 'snap-2',
        mode: 'overlay',
      },
    },
  ],
  'chain.verify': [
    {
      id: 'cmd-0006',
      type: 'chain.verify',
      params: { store: STORE, chain: ['snap-1', 'snap-2'], volume: VOLUME },
    },
  ],
  'volume.resize': [
    {
      id: 'cmd-0008',
      type: 'volume.resize',
      params: { volume: VOLUME, vm: 'i-2-34-VM', sizeBytes: 21474836480 },
    },
  ],
  'job.cancel': [{ id: 'cmd-0007', type: 'job.cancel', params: { jobId: 'cmd-0002' } }],
};

function event<K extends EventKind>(
  kind: K,
  sequence: number,
  correlationid: string,
  volume: typeof VOLUME | null,
  data: Extract<AgentEvent, { type: `${typeof eventTypePrefix}${K}` }>['data'],
): AgentEvent {
  return {
    specversion: '1.0',
    id: `example-${kind}-${correlationid}-${sequence}`,
    source: `clvm-snapshot-agent/${HOST}`,
    type: `${eventTypePrefix}${kind}`,
    subject: volumeKey(volume),
    time: TIME,
    datacontenttype: 'application/json',
    correlationid,
    sequence: String(sequence).padStart(10, '0'),
    data,
  } as AgentEvent;
}

/** Example events (a snapshot.create's life, a rejection, a failure, ping, lifecycle). */
export const eventExamples: Record<EventKind, AgentEvent[]> = {
  accepted: [
    event('accepted', 1, 'cmd-0002', VOLUME, {
      jobId: 'cmd-0002',
      commandType: 'snapshot.create',
      volume: VOLUME,
    }),
  ],
  progress: [
    event('progress', 2, 'cmd-0002', VOLUME, {
      jobId: 'cmd-0002',
      step: 'export',
      stepIndex: 1,
      stepCount: 4,
      percent: 42.5,
      bytesDone: 456_340_275,
      bytesTotal: 1_073_741_824,
      bytesPerSecond: 215_000_000,
    }),
  ],
  succeeded: [
    event('succeeded', 3, 'cmd-0002', VOLUME, {
      jobId: 'cmd-0002',
      commandType: 'snapshot.create',
      durationMs: 5210,
      result: {
        snapshot: {
          name: 'snap-3',
          path: '/mnt/snapstore/vol-7f3a/snap-3',
          parent: 'snap-2',
          kind: 'delta',
          physicalSize: 52_428_800,
          virtualSize: 10_737_418_240,
          chainDepth: 3,
        },
        strategy: { name: 'live-rotate', reason: 'VM running, QEMU 7.2 has blockdev-reopen' },
        vmPauseMs: 0,
        activePath: '/dev/vg-primary/vol-7f3a',
        quiesced: 'not-requested',
        steps: [
          { name: 'rotate', durationMs: 40 },
          { name: 'export', durationMs: 5020 },
          { name: 'repoint', durationMs: 12 },
          { name: 'cleanup', durationMs: 30 },
        ],
      },
    }),
    event('succeeded', 2, 'ping-0001', null, {
      jobId: 'ping-0001',
      commandType: 'agent.ping',
      durationMs: 3.2,
      result: {
        agentVersion: AGENT_VERSION,
        hostId: HOST,
        tools: { qemuImg: '7.2.15', qemu: '7.2.15', libvirt: '9.0.0', lvm2: '2.03.16(2) (2022-05-18)' },
        strategies: ['auto', 'offline', 'lvm-cow', 'live-rotate'],
      },
    }),
  ],
  failed: [
    event('failed', 3, 'cmd-0004', VOLUME, {
      jobId: 'cmd-0004',
      commandType: 'snapshot.delete',
      durationMs: 820,
      error: {
        code: 'SNAPSHOT_IN_USE',
        message: 'snap-2 backs the running disk of i-2-34-VM',
        retryable: false,
      },
      rolledBack: true,
      retryable: false,
    }),
  ],
  rejected: [
    event('rejected', 1, 'cmd-0009', null, {
      jobId: 'cmd-0009',
      commandType: 'snapshot.create',
      error: {
        code: 'PATH_OUTSIDE_ROOTS',
        message: 'params.volume.pool "/etc" is not under a configured root (/var/lib/libvirt/images)',
        retryable: false,
        field: 'params.volume.pool',
      },
    }),
  ],
  started: [event('started', 7, `agent:${HOST}`, null, { hostId: HOST, agentVersion: AGENT_VERSION })],
  quarantined: [
    event('quarantined', 3, 'cmd-0010', VOLUME, {
      jobId: 'cmd-0010',
      eventId: 'f1c6d9a2-5b8e-4c1a-9d7e-2a4b6c8d0e1f',
      eventType: 'io.clvm.snapshot-agent.succeeded',
      reason: 'the broker refused event f1c6d9a2-5b8e-4c1a-9d7e-2a4b6c8d0e1f for good: PRECONDITION_FAILED',
    }),
  ],
  stopping: [
    event('stopping', 8, `agent:${HOST}`, null, {
      hostId: HOST,
      agentVersion: AGENT_VERSION,
      reason: 'SIGTERM',
    }),
  ],
};

const pascal = (s: string) =>
  s
    .split(/[.-]/)
    .map((w) => w[0]!.toUpperCase() + w.slice(1))
    .join('');

const SIGNATURE_DESCRIPTION = [
  'Signed commands (Ed25519; agents with security.publicKeys): the management plane signs, agents hold',
  'only public keys. Headers: ' +
    Object.values(COMMAND_SIGNATURE_HEADERS)
      .map((h) => `\`${h}\``)
      .join(', ') +
    '. The signed bytes are, in UTF-8, each header value exactly as sent, lines ended by one LF:',
  '',
  `    ${ENVELOPE_VERSION}`,
  '    key-id:<x-clvm-key-id>',
  '    host-id:<x-clvm-host-id>',
  '    issued-at:<x-clvm-issued-at>',
  '    expires-at:<x-clvm-expires-at>',
  '    <empty line>',
  '    <the exact body bytes, no trailing newline added>',
  '',
  '`x-clvm-signature` = standard base64 of the Ed25519 signature (RFC 8032, no pre-hash) of those',
  'bytes. `x-signature-example` below is a complete example (its key is public: never use it): e.g.',
  '`openssl pkeyutl -sign -rawin -inkey example.pem -in signed-bytes | base64 -w0` prints its signature.',
  'Refusals (a `rejected` event, error.code): SIGNATURE_MISSING, SIGNATURE_ENVELOPE_INVALID (a',
  'malformed header), SIGNING_KEY_UNKNOWN, SIGNING_KEY_RETIRED (known but not in',
  'security.acceptedKeyIds), SIGNATURE_INVALID, WRONG_HOST (x-clvm-host-id is another host),',
  'COMMAND_LIFETIME_TOO_LONG (expiresAt - issuedAt > security.maxCommandLifetimeMs),',
  'COMMAND_NOT_YET_VALID (issuedAt more than security.clockSkewMs ahead), COMMAND_EXPIRED,',
  'COMMAND_REPLAYED (an id this agent already received; the journal keeps ids at least until',
  'their expiresAt, so a signed command never runs twice).',
];

/** The whole AsyncAPI document as a plain object. */
export function buildAsyncApi(): Record<string, unknown> {
  const commandMessages = Object.fromEntries(
    COMMAND_TYPES.map((type) => {
      const id = `${pascal(type)}Command`;
      return [
        id,
        {
          name: type,
          title: `${type} command`,
          contentType: 'application/json',
          headers: { $ref: '#/components/schemas/CommandHeaders' },
          payload: { $ref: `#/components/schemas/${schemaIdOfCommand(type)}` },
          correlationId: { $ref: '#/components/correlationIds/commandId' },
          bindings: {
            amqp: { messageType: type, deliveryMode: 2, bindingVersion: '0.3.0' },
          },
          examples: (commandExamples[type] ?? []).map((payload) => ({
            name: payload.id,
            headers: {
              [COMMAND_SIGNATURE_HEADERS.signature]: '<base64 Ed25519 signature of the envelope and body>',
              [COMMAND_SIGNATURE_HEADERS.keyId]: 'mp-2026-11',
              [COMMAND_SIGNATURE_HEADERS.hostId]: HOST,
              [COMMAND_SIGNATURE_HEADERS.issuedAt]: '2026-11-30T05:00:00.000Z',
              [COMMAND_SIGNATURE_HEADERS.expiresAt]: '2026-11-30T05:15:00.000Z',
            },
            payload,
          })),
        },
      ];
    }),
  );
  const eventMessages = Object.fromEntries(
    EVENT_KINDS.map((kind) => [
      `${pascal(kind)}Event`,
      {
        name: `${eventTypePrefix}${kind}`,
        title: `${kind} event`,
        summary: EVENT_SUMMARIES[kind],
        contentType: 'application/cloudevents+json',
        payload: { $ref: `#/components/schemas/${pascal(kind)}Event` },
        correlationId: { $ref: '#/components/correlationIds/eventCorrelation' },
        bindings: {
          amqp: { deliveryMode: kind === 'progress' ? 1 : 2, bindingVersion: '0.3.0' },
        },
        examples: eventExamples[kind].map((payload) => ({
          name: `${kind}-${payload.correlationid}-${payload.sequence}`,
          summary: `routing key ${HOST}.${payload.subject}.${kind}`,
          payload,
        })),
      },
    ]),
  );
  const ref = (kind: 'messages', id: string) => ({ $ref: `#/components/${kind}/${id}` });
  return {
    asyncapi: '3.0.0',
    info: {
      title: 'clvm-snapshot-agent',
      version: AGENT_VERSION,
      description: DESCRIPTION,
      'x-error-catalogue': ERROR_CATALOGUE.map((c) => ({ ...c, commands: [...c.commands] })),
      'x-result-schemas': Object.fromEntries(
        COMMAND_TYPES.map((type) => [type, { $ref: `#/components/schemas/${resultSchemaId(type)}` }]),
      ),
      license: { name: 'Apache-2.0' },
      'x-signature-example': signatureExample(),
    },
    defaultContentType: 'application/json',
    servers: {
      broker: {
        host: 'rabbitmq.example:5672',
        protocol: 'amqp',
        protocolVersion: '0-9-1',
        description: 'RabbitMQ ≥ 3.10 (quorum queues with delivery limit).',
      },
    },
    channels: {
      commands: {
        address: '{hostId}',
        title: 'Commands to one host',
        description:
          "Direct exchange `clvm.commands`, routing key = host id, bound to the host's quorum queue " +
          '`clvm.agent.<hostId>` (durable, single active consumer, x-delivery-limit, dead-letter exchange ' +
          '`clvm.commands.dlx` (fanout) → `clvm.commands.dead`).',
        parameters: { hostId: { description: 'config.hostId of the target hypervisor (no dots).' } },
        messages: Object.fromEntries(Object.keys(commandMessages).map((id) => [id, ref('messages', id)])),
        bindings: {
          amqp: {
            is: 'routingKey',
            exchange: { name: 'clvm.commands', type: 'direct', durable: true, autoDelete: false, vhost: '/' },
            bindingVersion: '0.3.0',
          },
        },
      },
      commandQueue: {
        address: 'clvm.agent.{hostId}',
        title: 'The per-host command queue the agent consumes',
        parameters: { hostId: { description: 'config.hostId of the hypervisor.' } },
        messages: Object.fromEntries(Object.keys(commandMessages).map((id) => [id, ref('messages', id)])),
        bindings: {
          amqp: {
            is: 'queue',
            queue: {
              name: 'clvm.agent.{hostId}',
              durable: true,
              exclusive: false,
              autoDelete: false,
              vhost: '/',
            },
            bindingVersion: '0.3.0',
          },
        },
      },
      events: {
        address: '{hostId}.{volumeKey}.{kind}',
        title: 'Events of every host',
        description: [
          'Topic exchange `clvm.events`. Bind a queue with a pattern to choose what you get:',
          '`hv01.#` or `hv01.*.*` — everything from host hv01;',
          '`*.lvm~vg0~vol-7.*` — one volume on any host (the volume key of lvm vg0/vol-7);',
          '`*.*.failed` — one kind from everyone; `*.*.succeeded` + `*.*.failed` — all results;',
          '`hv01.agent.*` — ping results and lifecycle (started, stopping) of hv01;',
          '`#` — everything. src/protocol/routing.ts eventBindingPattern() builds these.',
        ].join('\n'),
        parameters: {
          hostId: { description: 'config.hostId of the agent that published the event.' },
          volumeKey: {
            description:
              'The volume word: `lvm~<vg>~<lv>`, `file~<pool path>~<file>` or `agent`, encoded and bounded as "Routing keys" in info.description says.',
          },
          kind: { enum: [...EVENT_KINDS], description: 'The event kind; last word of the CloudEvents type.' },
        },
        messages: Object.fromEntries(Object.keys(eventMessages).map((id) => [id, ref('messages', id)])),
        bindings: {
          amqp: {
            is: 'routingKey',
            exchange: { name: 'clvm.events', type: 'topic', durable: true, autoDelete: false, vhost: '/' },
            bindingVersion: '0.3.0',
          },
        },
      },
      replies: {
        address: null,
        title: 'RPC replies',
        description:
          'The terminal event (succeeded | failed | rejected) is also published to the default exchange ' +
          "with routing key = the command's `replyTo` and the command's `correlationId` (or its id).",
        messages: {
          SucceededEvent: ref('messages', 'SucceededEvent'),
          FailedEvent: ref('messages', 'FailedEvent'),
          RejectedEvent: ref('messages', 'RejectedEvent'),
        },
      },
    },
    operations: {
      receiveCommands: {
        action: 'receive',
        title: 'The agent consumes commands',
        channel: { $ref: '#/channels/commandQueue' },
        messages: Object.keys(commandMessages).map((id) => ({
          $ref: `#/channels/commandQueue/messages/${id}`,
        })),
        reply: {
          address: { location: '$message.header#/replyTo' },
          channel: { $ref: '#/channels/replies' },
          messages: ['SucceededEvent', 'FailedEvent', 'RejectedEvent'].map((id) => ({
            $ref: `#/channels/replies/messages/${id}`,
          })),
        },
        bindings: { amqp: { ack: true, bindingVersion: '0.3.0' } },
      },
      sendCommands: {
        action: 'send',
        title: 'A caller (management plane, snapctl) sends a command',
        channel: { $ref: '#/channels/commands' },
        messages: Object.keys(commandMessages).map((id) => ({ $ref: `#/channels/commands/messages/${id}` })),
      },
      publishEvents: {
        action: 'send',
        title: 'The agent publishes events',
        description:
          'Persistent events (all but progress) use publisher confirms and an on-disk outbox, replayed in order after a reconnect.',
        channel: { $ref: '#/channels/events' },
        messages: Object.keys(eventMessages).map((id) => ({ $ref: `#/channels/events/messages/${id}` })),
      },
    },
    components: {
      schemas: {
        CommandHeaders: {
          type: 'object',
          description:
            'AMQP headers of a command. With security.publicKeys configured (Ed25519 mode) the five x-clvm-* headers are required (see the info description and x-signature-example for the signed bytes); the legacy HMAC header is then ignored.',
          properties: {
            [COMMAND_SIGNATURE_HEADERS.signature]: {
              type: 'string',
              pattern: '^[A-Za-z0-9+/]{86}==$',
              description: 'Standard base64 of the 64-byte Ed25519 signature of the signed bytes.',
            },
            [COMMAND_SIGNATURE_HEADERS.keyId]: {
              type: 'string',
              pattern: ENVELOPE_FIELD_PATTERNS.keyId.source,
              description: 'Id of the signing key, as the agent knows it (security.publicKeys).',
            },
            [COMMAND_SIGNATURE_HEADERS.hostId]: {
              type: 'string',
              pattern: ENVELOPE_FIELD_PATTERNS.hostId.source,
              description: 'The host the command is for (the routing key).',
            },
            [COMMAND_SIGNATURE_HEADERS.issuedAt]: {
              type: 'string',
              pattern: ENVELOPE_FIELD_PATTERNS.issuedAt.source,
              description: 'RFC 3339 UTC time the command was signed.',
            },
            [COMMAND_SIGNATURE_HEADERS.expiresAt]: {
              type: 'string',
              pattern: ENVELOPE_FIELD_PATTERNS.expiresAt.source,
              description:
                'RFC 3339 UTC time after which the agent refuses it; at most security.maxCommandLifetimeMs after issuedAt.',
            },
            [SIGNATURE_HEADER]: {
              type: 'string',
              pattern: '^sha256=[0-9a-f]{64}$',
              description:
                'LEGACY (weaker): hex HMAC-SHA256 of the raw body; required only when the agent has security.signingKey set and no publicKeys.',
            },
          },
        },
        ...generatedSchemas(),
      },
      messages: { ...commandMessages, ...eventMessages },
      correlationIds: {
        commandId: { description: 'The command id (= AMQP messageId).', location: '$message.payload#/id' },
        eventCorrelation: {
          description: 'The command id the event is about.',
          location: '$message.payload#/correlationid',
        },
      },
    },
  };
}

function resultSchemaId(type: keyof typeof COMMAND_RESULTS): string {
  const id = z.globalRegistry.get(COMMAND_RESULTS[type])?.id;
  if (!id) throw new Error(`result schema of ${type} has no meta id`);
  return id;
}

const catalogueTable = [
  '| code | event | retryable | command types | meaning |',
  '| --- | --- | --- | --- | --- |',
  ...ERROR_CATALOGUE.map(
    (c) => `| \`${c.code}\` | ${c.event} | ${c.retryable} | ${c.commands.join(', ')} | ${c.meaning} |`,
  ),
  `| \`QMP_<CLASS>\` (pattern \`${QMP_CODE_PATTERN}\`) | failed | no | snapshot.create | QEMU refused a QMP command; <CLASS> is its error class in upper snake case. |`,
].join('\n');

const DESCRIPTION = [
  'Commands to, and events from, the snapshot agent that runs on every KVM hypervisor.',
  'Generated by scripts/gen-asyncapi.ts from the zod schemas in src/protocol (do not edit by hand).',
  'This document is the whole contract: a command is accepted if and only if its JSON Schema below',
  'accepts it and the configuration rules listed under "Rules beyond the schema" hold.',
  '',
  '## Commands',
  'Publish to the direct exchange `clvm.commands` with routing key = the host id; the message lands in',
  "that host's quorum queue `clvm.agent.<hostId>`. Set the AMQP `messageId` to the command `id` (they must",
  'be equal when both are set), optionally `replyTo` and `correlationId` to get the terminal event',
  '(succeeded | failed | rejected) as an RPC reply.',
  '',
  '## Signatures',
  ...SIGNATURE_DESCRIPTION,
  '',
  'The body is UTF-8 JSON. AMQP `content-type` must be absent or `application/json` (a',
  '`charset=utf-8` parameter is allowed), else `UNSUPPORTED_CONTENT_TYPE`; `content-encoding` must be absent',
  'or `identity` (bodies are never compressed), else `UNSUPPORTED_CONTENT_ENCODING`. Bytes that are not',
  'UTF-8 (including overlong forms and encoded surrogates) are `INVALID_UTF8`; a string (key or value)',
  'with a lone `\\uD800`-`\\uDFFF` escape or a NUL is `INVALID_UNICODE`.',
  '',
  'Intake checks in this order and answers the first failure: size, signature, content-type,',
  'content-encoding, UTF-8, JSON, unicode, schema, then the rules beyond the schema. Any refusal is a',
  '`rejected` event (sequence 1; also sent to `replyTo`) when an id is readable (the body `id` when it',
  'matches the id pattern, else the AMQP messageId), and the message is dead-lettered to',
  '`clvm.commands.dlx` → `clvm.commands.dead`. Nothing runs for a rejected command.',
  '',
  '## Rules beyond the schema (they depend on the configuration or the host)',
  '- `params.store.root` must equal one of config.store.roots exactly (`STORE_ROOT_NOT_CONFIGURED`).',
  '- file pools, `params.store.dir` and `params.compare.image` must lie under a configured root, also',
  '  after symlinks are resolved; a dangling symlink is refused (`PATH_OUTSIDE_ROOTS`, `INVALID_PATH`).',
  '- `params.volume.vg` must be in config.pools.volumeGroups when that list is set (`VOLUME_GROUP_NOT_ALLOWED`).',
  '- the AMQP messageId, when set, equals `id` (`MESSAGE_ID_MISMATCH`); the body is at most',
  '  limits.maxMessageBytes (`MESSAGE_TOO_LARGE`); signatures when signing is on.',
  '',
  '## Command ids',
  'A command id names one job. The agent keeps the ids of finished jobs for 7 days (journal retention),',
  'and the id of a signed command at least until its expiresAt. Signed commands (Ed25519 mode): any',
  'message under an id already received is refused `COMMAND_REPLAYED` (correlationid as below), except',
  'a broker redelivery of the same message after an agent crash, which is treated as below.',
  '- the same id with byte-identical body again: nothing runs; a finished job gets its recorded terminal',
  '  event again (same CloudEvents `id`), a queued or running job nothing (its terminal event follows).',
  '- the same id with any other body: nothing runs; it is answered `rejected` — `ID_CONFLICT` when the',
  '  body is a valid command, otherwise the code of what is wrong with it — with `correlationid`',
  "  `<id>#<first 16 hex digits of SHA-256 of the body>`, so it never joins the job's own sequence.",
  '- a rejected command does not use its id: the id can be sent again with a valid body.',
  '',
  '## Events',
  'CloudEvents 1.0 in structured mode (AMQP content-type `application/cloudevents+json`; the body is the',
  'whole event, `datacontenttype` is that of `data`) on the topic exchange `clvm.events`, persistent',
  'except progress. Per job (`correlationid` = the command id): `accepted` (sequence 1), any number of',
  '`progress`, then exactly one `succeeded` or `failed`, whatever crash or broker outage happens in',
  'between; `sequence` is zero-padded and strictly increasing per `correlationid`. Delivery is at least',
  'once: deduplicate by event `id`. When the broker can never accept an event (quarantine), a',
  '`quarantined` event with the same correlationid and sequence takes its place.',
  '',
  'The `result` of `succeeded` per command type: ' +
    COMMAND_TYPES.map((t) => `${t} → ${resultSchemaId(t)}`).join(', ') +
    ' (also in `x-result-schemas`).',
  '',
  '## Routing keys',
  '`<hostWord>.<volumeWord>.<kind>`. A word is made from a value in three steps:',
  '1. the value is taken as UTF-8 (a lone UTF-16 surrogate becomes U+FFFD);',
  '2. every byte other than `A-Z a-z 0-9 _ -` is written `%XX` with upper-case hex (so `.` is `%2E`,',
  '   `*` `%2A`, `#` `%23`, `~` `%7E`, `/` `%2F`);',
  `3. a word longer than ${ROUTING_WORD_MAX} characters becomes its first ${ROUTING_WORD_PREFIX} characters (cut before a`,
  '   `%XX` that would be split) + `~h` + the first 16 hex digits of SHA-256 of the whole step-2 word.',
  'hostWord = word(hostId). volumeWord = step 3 applied to the volume key `lvm~<vg>~<lv>`,',
  '`file~<pool>~<file>` (each part encoded by steps 1-2, joined by `~`) or `agent`. The volume key before',
  'step 3 is the event `subject`; the full names are in the event data. A routing key is therefore at',
  "most 177 characters, within AMQP's 255-byte limit whatever the names.",
  '',
  '## Error codes',
  'Every code a `rejected` or `failed` event can carry (also in `x-error-catalogue` and the RejectionCode',
  '/ FailureCode schemas). retryable: whether sending the same command again can succeed; `depends`:',
  "the event's `retryable` says.",
  '',
  catalogueTable,
  '',
  'Exchange and queue names are the defaults of config.topology.',
].join('\n');

function schemaIdOfCommand(type: string): string {
  return type === 'agent.ping' ? 'PingCommand' : `${pascal(type)}Command`;
}

const EVENT_SUMMARIES: Record<EventKind, string> = {
  accepted: 'The command is journaled and will run (sequence 1).',
  rejected: 'The command was refused before anything ran; it is dead-lettered. Terminal.',
  progress: 'Throttled progress of a step (best effort, not persistent).',
  succeeded: 'The job finished; data.result depends on the command type. Terminal.',
  failed: 'The job failed; rolledBack says whether the volume is as before. Terminal.',
  started: 'The agent started (correlationid agent:<hostId>).',
  stopping: 'The agent is shutting down (correlationid agent:<hostId>).',
  quarantined:
    'An event of this job could never be published and was set aside on the agent; this takes its place (same correlationid and sequence).',
};

/** The YAML text of the document. */
export function renderAsyncApi(): string {
  // YAML 1.1 rules for scalars: timestamps, yes/no... are quoted, so a 1.1 loader reads strings back.
  return `# Generated by scripts/gen-asyncapi.ts from src/protocol; do not edit by hand.\n${stringify(buildAsyncApi(), { lineWidth: 0, aliasDuplicateObjects: false, version: '1.1' })}`;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  writeFileSync(ASYNCAPI_FILE, renderAsyncApi());
  process.stdout.write(`wrote ${ASYNCAPI_FILE}\n`);
}
