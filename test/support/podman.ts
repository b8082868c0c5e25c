import { createServer } from 'node:net';
import { join } from 'node:path';
import { execa } from 'execa';

// podman for the image test: Debian's podman with runc and the limits this machine allows
// (scripts/podman/containers.conf); the base image stands in for the registry's
// (scripts/ensure-base-image.sh). Both are set up by scripts/ensure-host.sh.

const ROOT = join(import.meta.dirname, '..', '..');
export const CONTAINERS_CONF = join(ROOT, 'scripts', 'podman', 'containers.conf');
export const BASE_IMAGE = 'localhost/node:24-bookworm-slim';
/** The project's image as the test builds it. */
export const AGENT_IMAGE = 'localhost/clvm-snapshot-agent:test';

/** Runs podman with the project's containers.conf; throws on a non-zero exit unless `reject` is false. */
export async function podman(
  args: string[],
  opts: { timeoutMs?: number; reject?: boolean } = {},
): Promise<{ stdout: string; stderr: string; exitCode: number }> {
  const result = await execa('podman', args, {
    env: { CONTAINERS_CONF },
    timeout: opts.timeoutMs ?? 60_000,
    reject: opts.reject ?? true,
    cwd: ROOT,
  });
  return { stdout: String(result.stdout), stderr: String(result.stderr), exitCode: result.exitCode ?? -1 };
}

/** Fails saying what is missing when podman or the local base image is not there. */
export async function requirePodman(): Promise<void> {
  const version = await execa('podman', ['--version'], { reject: false, timeout: 10_000 }).catch(() => null);
  if (version?.exitCode !== 0)
    throw new Error(
      'podman is not installed: run scripts/ensure-host.sh (apt-get install podman runc mmdebstrap)',
    );
  const base = await podman(['image', 'exists', BASE_IMAGE], { reject: false });
  if (base.exitCode !== 0)
    throw new Error(`the local base image ${BASE_IMAGE} is missing: run scripts/ensure-base-image.sh`);
}

/**
 * Builds the project's Dockerfile as it ships (`--pull=never`: FROM resolves to the local base).
 * The build stage is tagged too, so its layers (npm ci) are not dangling: the prune that follows
 * removes what earlier builds left behind and keeps the layer cache of this one.
 */
export async function buildAgentImage(): Promise<void> {
  const build = ['build', '--network', 'host', '--pull=never', '--format', 'docker', '-q'];
  await podman([...build, '-t', AGENT_IMAGE, '.'], { timeoutMs: 600_000 });
  await podman([...build, '--target', 'build', '-t', `${AGENT_IMAGE}-build`, '.'], { timeoutMs: 600_000 });
  await podman(['image', 'prune', '-f'], { timeoutMs: 120_000 });
}

/** A TCP port free on 127.0.0.1 right now (containers here share the host network). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Removes a container whatever its state (test clean-up). */
export async function removeContainer(name: string): Promise<void> {
  await podman(['rm', '-f', '-t', '0', name], { reject: false, timeoutMs: 60_000 });
}
