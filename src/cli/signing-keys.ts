import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import type { CommandSigner } from '../client/messages.js';
import { ENVELOPE_FIELD_PATTERNS, generateSigningKeyPair, parsePrivateKey } from '../protocol/index.js';
import { usageError } from './exit-codes.js';

/** Default lifetime of a command snapctl signs (must stay within the agent's maxCommandLifetimeMs). */
export const DEFAULT_COMMAND_LIFETIME_S = 900;

/**
 * The Ed25519 signer from `--signing-key-file` / $SNAPCTL_SIGNING_KEY_FILE and `--key-id` /
 * $SNAPCTL_KEY_ID; undefined when no key file is given.
 * @throws AgentError USAGE naming the option when the file or the key id is unusable
 */
export function loadSigner(
  options: { signingKeyFile?: string; keyId?: string; lifetime?: number },
  env: NodeJS.ProcessEnv,
): CommandSigner | undefined {
  const file = options.signingKeyFile ?? env.SNAPCTL_SIGNING_KEY_FILE;
  if (!file) return undefined;
  const keyId = options.keyId ?? env.SNAPCTL_KEY_ID;
  if (!keyId || !ENVELOPE_FIELD_PATTERNS.keyId.test(keyId)) {
    throw usageError(
      '--key-id (or $SNAPCTL_KEY_ID): a signing key file needs its key id (1-64 letters, digits, _.:-)',
    );
  }
  let pem: string;
  try {
    pem = readFileSync(file, 'utf8');
  } catch (error) {
    throw usageError(`--signing-key-file ${file}: ${(error as Error).message}`);
  }
  try {
    return {
      privateKey: parsePrivateKey(pem),
      keyId,
      lifetimeMs: (options.lifetime ?? DEFAULT_COMMAND_LIFETIME_S) * 1000,
    };
  } catch (error) {
    throw usageError(`--signing-key-file ${file}: not an Ed25519 private key (${(error as Error).message})`);
  }
}

/**
 * Writes `<prefix>.key` (PKCS#8 PEM, mode 0600, never overwritten) and `<prefix>.pub` (SPKI PEM).
 * Returns the raw base64 public key (the agent's security.publicKeys value).
 */
export async function writeKeyPair(
  prefix: string,
): Promise<{ privateFile: string; publicFile: string; publicRaw: string }> {
  const pair = generateSigningKeyPair();
  const privateFile = `${prefix}.key`;
  const publicFile = `${prefix}.pub`;
  try {
    await writeFile(privateFile, pair.privatePem, { mode: 0o600, flag: 'wx' });
    await writeFile(publicFile, pair.publicPem, { mode: 0o644, flag: 'wx' });
  } catch (error) {
    throw usageError(`--out ${prefix}: ${(error as Error).message}`);
  }
  return { privateFile, publicFile, publicRaw: pair.publicRaw };
}
