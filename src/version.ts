import { readFileSync } from 'node:fs';

/**
 * The agent's version, from package.json (one level up from src/ and dist/ alike:
 * src/version.ts and dist/version.js both sit one level below the package root).
 */
function readVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
    version?: unknown;
  };
  return typeof pkg.version === 'string' ? pkg.version : '0.0.0';
}

export const AGENT_VERSION: string = readVersion();
export const AGENT_NAME = 'clvm-snapshot-agent';
