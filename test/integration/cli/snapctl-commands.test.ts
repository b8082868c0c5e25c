import { describe, expect, it } from 'vitest';
import { brokerUrl } from '../../support/broker.js';
import { startFakeAgent, uniqueHost, uniqueTopology } from '../../support/fake-agent.js';
import { fakeAgentPerFile, lastJson, snapctl, topologyFlags } from '../../support/snapctl.js';

// snapctl against the real broker and a fake agent that answers with real CloudEvents.
// Each command: its happy path, its failure path and the exit code (see src/cli/exit-codes.ts).

const SIGNING_KEY = 'test-signing-key';
const volumeFlags = ['--volume', 'lvm:vg0/vol-7', '--store-root', '/mnt/snapstore', '--store-dir', 'vol-7'];

const fake = fakeAgentPerFile('cli', 'hv', {
  signingKey: SIGNING_KEY,
  // Command ids starting with "fail-" fail (NOT_IMPLEMENTED), "hang-" never finish.
  behaviour: (c) => (c.id.startsWith('fail-') ? 'fail' : c.id.startsWith('hang-') ? 'hang' : 'succeed'),
});
const { topology, hostId, flags } = fake;

const signed = { AGENT_SIGNING_KEY: SIGNING_KEY };

describe('snapctl ping', () => {
  it('prints the agent version and exits 0', async () => {
    const run = await snapctl(['ping', ...flags], signed);
    expect(run.exitCode).toBe(0);
    // Non-TTY stderr: one line per event while waiting (here only `accepted`).
    expect(run.stderr).toMatch(new RegExp(`^${hostId} snapctl-\\S+ accepted agent.ping agent$`));
    expect(run.stdout).toMatch(
      new RegExp(`^${hostId} snapctl-\\S+ succeeded agent.ping in 42ms: agent 0.0.0-fake`),
    );
  });

  it('--json prints one document with the terminal event', async () => {
    const run = await snapctl(['ping', '--json', '--id', `ping-json-${hostId}`, ...flags], signed);
    expect(run.exitCode).toBe(0);
    const doc = lastJson(run.stdout);
    expect(doc).toMatchObject({ ok: true, outcome: 'succeeded', exitCode: 0 });
    expect(doc.command).toEqual({ id: `ping-json-${hostId}`, type: 'agent.ping', host: hostId });
    expect((doc.event as { correlationid: string }).correlationid).toBe(`ping-json-${hostId}`);
    // The command reached the agent signed, schema-valid, with the id we gave.
    expect(fake.agent.received.some((c) => c.id === `ping-json-${hostId}` && c.type === 'agent.ping')).toBe(
      true,
    );
  });

  it('--reply-to gets the result as an RPC reply (the agent sends the terminal event only there)', async () => {
    const replyTopology = uniqueTopology('reply');
    const replyHost = uniqueHost('hvr');
    const replyAgent = await startFakeAgent({
      url: brokerUrl(),
      hostId: replyHost,
      topology: replyTopology,
      terminalOnlyToReplyTo: true,
    });
    try {
      const base = [...topologyFlags(brokerUrl(), replyTopology), '--host', replyHost, '--timeout', '5'];
      const withReply = await snapctl(['ping', '--reply-to', '--json', ...base]);
      expect(withReply.exitCode).toBe(0);
      expect(lastJson(withReply.stdout)).toMatchObject({ ok: true, outcome: 'succeeded' });
      // Control: without --reply-to the terminal event never comes, so the wait times out.
      const without = await snapctl(['ping', '--json', ...base.slice(0, -1), '2']);
      expect(without.exitCode).toBe(4);
    } finally {
      await replyAgent.close();
    }
  });

  it('a wrong signing key is rejected by the agent: exit 3 with the reason', async () => {
    const run = await snapctl(['ping', ...flags], { AGENT_SIGNING_KEY: 'not-the-key' });
    expect(run.exitCode).toBe(3);
    expect(run.stderr).toContain('rejected');
    expect(run.stderr).toContain('SIGNATURE_INVALID');
  });

  it('no answer before --timeout: exit 4, says the job may still run', async () => {
    const run = await snapctl(['ping', '--id', `hang-${hostId}`, '--timeout', '1.5', ...flags], signed);
    expect(run.exitCode).toBe(4);
    expect(run.stderr).toMatch(/no result for agent\.ping hang-\S+ .* within 2 s .*snapctl watch/);
  });

  it('an unreachable broker: exit 5, credentials hidden, no stack trace', async () => {
    const run = await snapctl([
      'ping',
      '--broker-url',
      'amqp://secretuser:secretpw@127.0.0.1:1',
      '--host',
      hostId,
    ]);
    expect(run.exitCode).toBe(5);
    expect(run.stderr).toContain('cannot connect to the broker');
    expect(run.stderr).not.toContain('secretpw');
    expect(run.stderr).not.toMatch(/\n\s+at /);
  });

  it('a host without a command queue: exit 6', async () => {
    const run = await snapctl(
      ['ping', ...topologyFlags(brokerUrl(), topology), '--host', 'nohost-here'],
      signed,
    );
    expect(run.exitCode).toBe(6);
    expect(run.stderr).toContain('no command queue for host "nohost-here"');
  });
});

describe('snapctl snapshot create', () => {
  it('shows progress while waiting and prints the snapshot; exit 0', async () => {
    const run = await snapctl(
      ['snapshot', 'create', ...volumeFlags, '--snapshot', 'snap-2', '--parent', 'snap-1', ...flags],
      signed,
    );
    expect(run.exitCode).toBe(0);
    // Non-TTY stderr: one plain line per event while waiting.
    expect(run.stderr).toMatch(/accepted snapshot\.create lvm~vg0~vol-7/);
    expect(run.stderr).toMatch(
      /progress step 2\/3 export {2}\d+\.\d% {2}[\d.]+ MiB of 8\.0 MiB {2}2\.0 MiB\/s {2}ETA /,
    );
    expect(run.stdout).toMatch(
      /succeeded snapshot\.create in 42ms: snap-2 delta, 3\.0 MiB, strategy offline/,
    );
    const sent = fake.agent.received.find(
      (c) => c.type === 'snapshot.create' && c.params.snapshot === 'snap-2',
    );
    expect(sent?.params).toMatchObject({
      volume: { kind: 'lvm', vg: 'vg0', lv: 'vol-7' },
      store: { root: '/mnt/snapstore', dir: 'vol-7' },
      parents: ['snap-1'],
      options: { strategy: 'auto', verify: 'metadata' },
    });
  });

  it('a failed job: exit 1 with code, message and rollback state', async () => {
    const run = await snapctl(
      [
        'snapshot',
        'create',
        ...volumeFlags,
        '--snapshot',
        'snap-9',
        '--id',
        `fail-create-${hostId}`,
        ...flags,
      ],
      signed,
    );
    expect(run.exitCode).toBe(1);
    expect(run.stderr).toMatch(/failed snapshot\.create in 5ms: NOT_IMPLEMENTED .* \(rolled back\)/);
  });

  it('a name the schema refuses never leaves snapctl: exit 2 naming the flag', async () => {
    const before = fake.agent.received.length;
    const run = await snapctl(
      ['snapshot', 'create', ...volumeFlags, '--snapshot', '../etc/passwd', ...flags],
      signed,
    );
    expect(run.exitCode).toBe(2);
    expect(run.stderr).toContain('--snapshot (snapshot): invalid file name');
    expect(run.stderr).not.toMatch(/\n\s+at /);
    expect(fake.agent.received.length).toBe(before);
  });

  it('a missing required option: exit 2', async () => {
    const run = await snapctl(['snapshot', 'create', '--volume', 'lvm:vg0/vol-7', ...flags]);
    expect(run.exitCode).toBe(2);
    expect(run.stderr).toContain("required option '--store-root <path>' not specified");
  });

  it('--json on a usage error prints a JSON error document', async () => {
    const run = await snapctl([
      'snapshot',
      'create',
      ...volumeFlags,
      '--volume',
      'nfs:x',
      '--snapshot',
      's',
      '--json',
      ...flags,
    ]);
    expect(run.exitCode).toBe(2);
    expect(lastJson(run.stdout)).toMatchObject({ ok: false, exitCode: 2, error: { code: 'USAGE' } });
  });
});

describe('snapctl snapshot delete / revert, chain verify, job cancel', () => {
  const cases: Array<{ name: string; args: string[]; type: string }> = [
    {
      name: 'snapshot delete',
      args: ['snapshot', 'delete', ...volumeFlags, '--chain', 'snap-1,snap-2,snap-3', '--snapshot', 'snap-2'],
      type: 'snapshot.delete',
    },
    {
      name: 'snapshot revert',
      args: [
        'snapshot',
        'revert',
        ...volumeFlags,
        '--chain',
        'snap-1,snap-2',
        '--snapshot',
        'snap-1',
        '--mode',
        'flatten',
      ],
      type: 'snapshot.revert',
    },
    {
      name: 'chain verify',
      args: [
        'chain',
        'verify',
        '--store-root',
        '/mnt/snapstore',
        '--store-dir',
        'vol-7',
        '--chain',
        'snap-1',
        '--chain',
        'snap-2',
      ],
      type: 'chain.verify',
    },
    {
      name: 'volume resize',
      args: ['volume', 'resize', '--volume', 'lvm:vg0/vol-7', '--vm', 'i-2-34-VM', '--size', '21474836480'],
      type: 'volume.resize',
    },
    { name: 'job cancel', args: ['job', 'cancel', 'some-job-id'], type: 'job.cancel' },
  ];

  for (const c of cases) {
    it(`${c.name}: exit 0 on success, 1 on failure, the command is schema-valid`, async () => {
      const okId = `ok-${c.type.replace('.', '-')}-${hostId}`;
      const ok = await snapctl([...c.args, '--id', okId, '--json', ...flags], signed);
      expect(ok.exitCode).toBe(0);
      expect(lastJson(ok.stdout)).toMatchObject({
        ok: true,
        outcome: 'succeeded',
        command: { type: c.type },
      });
      expect(fake.agent.received.find((r) => r.id === okId)?.type).toBe(c.type);

      const failed = await snapctl(
        [...c.args, '--id', `fail-${c.type.replace('.', '-')}-${hostId}`, ...flags],
        signed,
      );
      expect(failed.exitCode).toBe(1);
      expect(failed.stderr).toContain(`failed ${c.type}`);
      expect(failed.stderr).toContain('NOT_IMPLEMENTED');
    });
  }

  it('the sent params hold what the flags said', () => {
    expect(fake.agent.received.find((r) => r.type === 'volume.resize')?.params).toEqual({
      volume: { kind: 'lvm', vg: 'vg0', lv: 'vol-7' },
      vm: 'i-2-34-VM',
      sizeBytes: 21474836480,
    });
    const del = fake.agent.received.find((r) => r.type === 'snapshot.delete');
    expect(del?.params).toMatchObject({ chain: ['snap-1', 'snap-2', 'snap-3'], snapshot: 'snap-2' });
    const revert = fake.agent.received.find((r) => r.type === 'snapshot.revert');
    expect(revert?.params).toMatchObject({ mode: 'flatten', snapshot: 'snap-1' });
    const verify = fake.agent.received.find((r) => r.type === 'chain.verify');
    expect(verify?.params).toMatchObject({ chain: ['snap-1', 'snap-2'] });
    const cancel = fake.agent.received.find((r) => r.type === 'job.cancel');
    expect(cancel?.params).toEqual({ jobId: 'some-job-id' });
  });

  it('bad usage of each: a clear message, exit 2', async () => {
    const runs = await Promise.all([
      snapctl(['job', 'cancel', ...flags]),
      snapctl([
        'chain',
        'verify',
        '--store-root',
        '/s',
        '--store-dir',
        'd',
        '--chain',
        'a',
        '--compare-image',
        '/x',
        ...flags,
      ]),
      snapctl([
        'snapshot',
        'revert',
        ...volumeFlags,
        '--chain',
        'a',
        '--snapshot',
        'a',
        '--mode',
        'sideways',
        ...flags,
      ]),
      snapctl(['no-such-command']),
    ]);
    expect(runs.map((r) => r.exitCode)).toEqual([2, 2, 2, 2]);
    expect(runs[0]?.stderr).toContain("missing required argument 'job-id'");
    expect(runs[1]?.stderr).toContain('--compare-snapshot and --compare-image go together');
    expect(runs[2]?.stderr).toContain("argument 'sideways' is invalid");
    expect(runs[3]?.stderr).toContain("unknown command 'no-such-command'");
    for (const r of runs) expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});

describe('exit codes of help', () => {
  it('--help exits 0 and lists every command', async () => {
    const run = await snapctl(['--help']);
    expect(run.exitCode).toBe(0);
    for (const word of ['ping', 'snapshot', 'chain', 'job', 'watch', 'dlq', 'dashboard'])
      expect(run.stdout).toContain(word);
  });
});
