// Cross-language check of the signed-command envelope: OpenSSL (not Node) signs the bytes the
// AsyncAPI document describes and must produce the documented signature byte for byte; the agent's
// verifier accepts what OpenSSL signs, and OpenSSL verifies what snapctl's signer produces.
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { ASYNCAPI_FILE } from '../../../scripts/gen-asyncapi.js';
import {
  envelopeFor,
  COMMAND_SIGNATURE_HEADERS as H,
  parsePrivateKey,
  parsePublicKey,
  readEnvelope,
  signCommand,
  verifyEnvelope,
} from '../../../src/protocol/index.js';

interface Example {
  privateKeyPem: string;
  publicKeyRaw: string;
  body: string;
  headers: Record<string, string>;
}

const example = (parse(readFileSync(ASYNCAPI_FILE, 'utf8')) as { info: { 'x-signature-example': Example } })
  .info['x-signature-example'];

/** The signed bytes written out from the documented layout, independently of src/protocol. */
function documentedBytes(headers: Record<string, string>, body: string): Buffer {
  return Buffer.from(
    `clvm-command-v1\nkey-id:${headers['x-clvm-key-id']}\nhost-id:${headers['x-clvm-host-id']}\n` +
      `issued-at:${headers['x-clvm-issued-at']}\nexpires-at:${headers['x-clvm-expires-at']}\n\n${body}`,
    'utf8',
  );
}

async function openssl(args: string[]) {
  const r = await execa('openssl', args, { timeout: 15_000, reject: false, encoding: 'buffer' });
  return { exitCode: r.exitCode, stdout: Buffer.from(r.stdout), stderr: Buffer.from(r.stderr) };
}

/** `openssl pkeyutl -verify` of the raw `bytes` against signature file `sig` with public key file `pub`. */
function opensslVerify(pub: string, sig: string, bytes: string) {
  return openssl(['pkeyutl', '-verify', '-rawin', '-pubin', '-inkey', pub, '-sigfile', sig, '-in', bytes]);
}

describe('Ed25519 envelope with OpenSSL', () => {
  let dir: string;
  beforeAll(async () => {
    const version = await execa('openssl', ['version'], { timeout: 5000, reject: false });
    if (version.exitCode !== 0) throw new Error('openssl is missing (scripts/ensure-host.sh installs it)');
    dir = await mkdtemp(join(tmpdir(), 'i12-openssl-'));
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('reproduces the documented example signature byte for byte, and the agent verifies it', async () => {
    const key = join(dir, 'example.pem');
    const bytes = join(dir, 'signed-bytes');
    await writeFile(key, example.privateKeyPem);
    await writeFile(bytes, documentedBytes(example.headers, example.body));
    const signed = await openssl(['pkeyutl', '-sign', '-rawin', '-inkey', key, '-in', bytes]);
    expect(signed.exitCode, signed.stderr.toString()).toBe(0);
    expect(signed.stdout.toString('base64')).toBe(example.headers[H.signature]);

    const pub = await openssl(['pkey', '-in', key, '-pubout']);
    expect(parsePublicKey(pub.stdout.toString()).export({ format: 'jwk' }).x).toBe(
      Buffer.from(example.publicKeyRaw, 'base64').toString('base64url'),
    );
    const read = readEnvelope(example.headers);
    if (!read.ok) throw new Error(read.problem);
    const publicKey = parsePublicKey(example.publicKeyRaw);
    expect(verifyEnvelope(Buffer.from(example.body), read.envelope, read.signature, publicKey)).toBe(true);
    expect(verifyEnvelope(Buffer.from(`${example.body} `), read.envelope, read.signature, publicKey)).toBe(
      false,
    );
  });

  it('OpenSSL verifies what snapctl signs with an OpenSSL-generated key, and refuses it altered', async () => {
    const key = join(dir, 'mp.pem');
    const pub = join(dir, 'mp.pub');
    expect((await openssl(['genpkey', '-algorithm', 'ed25519', '-out', key])).exitCode).toBe(0);
    expect((await openssl(['pkey', '-in', key, '-pubout', '-out', pub])).exitCode).toBe(0);
    const body = '{"id":"i12-x","type":"agent.ping","params":{"note":"é"}}';
    const headers = signCommand(
      Buffer.from(body),
      envelopeFor('i12-host', 'mp-1', 60_000),
      parsePrivateKey(await readFile(key, 'utf8')),
    );
    const sig = join(dir, 'sig');
    const bytes = join(dir, 'bytes');
    await writeFile(sig, Buffer.from(headers[H.signature]!, 'base64'));
    await writeFile(bytes, documentedBytes(headers, body));
    const ok = await opensslVerify(pub, sig, bytes);
    expect(ok.exitCode, ok.stderr.toString()).toBe(0);
    await writeFile(bytes, documentedBytes({ ...headers, 'x-clvm-host-id': 'i12-other' }, body));
    const bad = await opensslVerify(pub, sig, bytes);
    expect(bad.exitCode).not.toBe(0);
  });
});
