// VirshSession against the real virsh and libvirtd: arguments reach virsh's own parser unchanged
// (hostile strings round-trip through `echo`), failures read as a virsh process's would, and
// concurrent callers each get their own answer.
import { afterAll, describe, expect, it } from 'vitest';
import { runTool } from '../../../src/host/exec.js';
import { VirshSession } from '../../../src/host/virsh-session.js';
import { LIBVIRT_URI } from '../../support/libvirt-fixtures.js';

const HOSTILE = [
  "it's",
  'a"b',
  'c\\d',
  '#comment',
  'a;quit',
  '$(id)',
  '`id`',
  '-',
  '',
  ' lead',
  'trail ',
  "''",
  '\\',
  'é ü 東京',
  "';quit;'",
  "\\'",
  '"\'"',
  'x'.repeat(8000),
];

describe('VirshSession (real virsh)', () => {
  const session = new VirshSession({ uri: LIBVIRT_URI });
  afterAll(() => session.close());

  it('passes hostile arguments to virsh exactly as given', async () => {
    // `--` ends the options: a quoted "--x" is still an option to virsh, as it is in argv.
    const { stdout } = await session.run(['echo', '--', ...HOSTILE], { timeoutMs: 15_000 });
    expect(stdout).toBe(HOSTILE.join(' '));
    for (const arg of HOSTILE) {
      expect((await session.run(['echo', '--', arg, 'end'], { timeoutMs: 15_000 })).stdout).toBe(
        `${arg} end`,
      );
    }
  });

  it('fails like a virsh process does (same kind and stderr)', async () => {
    const args = ['domstate', '--domain', 'h16-no-such-domain'];
    const fromProcess = await runTool('virsh', ['-c', LIBVIRT_URI, ...args], { timeoutMs: 15_000 }).catch(
      (e: unknown) => e,
    );
    const fromSession = await session.run(args, { timeoutMs: 15_000 }).catch((e: unknown) => e);
    expect(fromSession).toMatchObject({
      kind: 'not-found',
      stderr: (fromProcess as { stderr: string }).stderr,
    });
  });

  it('gives concurrent callers their own answers in one shell', async () => {
    const before = session.stats.starts;
    const words = Array.from({ length: 40 }, (_, i) => `w${i}-${'y'.repeat(i * 50)}`);
    const outputs = await Promise.all(
      words.map((w) => session.run(['echo', '--', w], { timeoutMs: 15_000 }).then((r) => r.stdout)),
    );
    expect(outputs).toEqual(words);
    expect(session.stats.starts).toBe(before);
  });

  it('outputs the same text as a virsh process for a query', async () => {
    const viaSession = await session.run(['version'], { timeoutMs: 15_000 });
    const viaProcess = await runTool('virsh', ['-c', LIBVIRT_URI, 'version'], { timeoutMs: 15_000 });
    expect(viaSession.stdout.trim()).toBe(viaProcess.stdout.trim());
  });
});
