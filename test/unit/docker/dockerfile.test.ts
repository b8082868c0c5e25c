import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

// No Docker engine here: the Dockerfile is checked as text. The key check ties the image to the
// code: every host tool the adapters in src/host call must come from a package the runtime stage
// installs (or the base image has), so a new tool without its package fails here, not in prod.

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const dockerfile = readFileSync(`${ROOT}Dockerfile`, 'utf8');
const dockerignore = readFileSync(`${ROOT}.dockerignore`, 'utf8');

/** Debian package of each tool the adapters may run. */
const PACKAGE_OF_TOOL: Readonly<Record<string, string>> = {
  'qemu-img': 'qemu-utils',
  'qemu-io': 'qemu-utils',
  lvm: 'lvm2',
  lvs: 'lvm2',
  vgs: 'lvm2',
  pvs: 'lvm2',
  lvcreate: 'lvm2',
  lvremove: 'lvm2',
  lvrename: 'lvm2',
  lvchange: 'lvm2',
  lvextend: 'lvm2',
  virsh: 'libvirt-clients',
  losetup: 'util-linux',
  mount: 'util-linux',
  umount: 'util-linux',
  nsenter: 'util-linux',
  cp: 'coreutils',
  sync: 'coreutils',
  df: 'coreutils',
  stat: 'coreutils',
};
/** Essential packages of node:24-bookworm-slim (Debian bookworm). */
const IN_BASE_IMAGE = new Set(['coreutils', 'util-linux']);
/** Tools deliberately left out of the image, with the reason the Dockerfile must state. */
const NOT_IN_IMAGE: Readonly<Record<string, RegExp>> = {
  'qemu-system-x86_64': /qemu-system-x86 is NOT installed/,
};

interface Stage {
  from: string;
  name: string | undefined;
  lines: string[];
}

/** Stages of the Dockerfile, with continuation lines joined. */
function stages(): Stage[] {
  const joined = dockerfile.replace(/\\\n/g, ' ').split('\n');
  const result: Stage[] = [];
  for (const line of joined) {
    const from = /^FROM\s+(\S+)(?:\s+AS\s+(\S+))?/i.exec(line);
    if (from) result.push({ from: from[1]!, name: from[2], lines: [] });
    else result.at(-1)?.lines.push(line);
  }
  return result;
}

function aptPackages(stage: Stage): string[] {
  const install = stage.lines.find((l) => /apt-get install/.test(l));
  if (!install) return [];
  const after =
    install.slice(install.indexOf('apt-get install') + 'apt-get install'.length).split('&&')[0] ?? '';
  return after.split(/\s+/).filter((w) => w && !w.startsWith('-'));
}

/** Tool names the adapters run: first string argument of run/runTool/tool calls, and binary defaults. */
function toolsCalledByAdapters(): string[] {
  const dir = `${ROOT}src/host/`;
  const tools = new Set<string>();
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.ts'))) {
    const source = readFileSync(dir + file, 'utf8');
    for (const m of source.matchAll(/\b(?:runTool|run|tool)\(\s*'([a-z][a-z0-9._-]*)'/g)) tools.add(m[1]!);
    for (const m of source.matchAll(/binary\s*\?\?\s*'([a-z][a-z0-9._-]*)'/g)) tools.add(m[1]!);
  }
  return [...tools].sort();
}

describe('Dockerfile', () => {
  const all = stages();
  const build = all[0]!;
  const runtime = all.at(-1)!;

  it('is multi-stage: a build stage with npm ci + compile, a Node 24 slim runtime', () => {
    expect(all.length).toBeGreaterThanOrEqual(2);
    expect(build.from).toBe('node:24-bookworm-slim');
    expect(build.lines.some((l) => /^RUN npm ci\b/.test(l))).toBe(true);
    expect(build.lines.some((l) => /^RUN npm run build\b/.test(l))).toBe(true);
    expect(runtime.from).toBe('node:24-bookworm-slim');
    expect(runtime.lines.some((l) => /^RUN npm ci --omit=dev\b/.test(l))).toBe(true);
    expect(runtime.lines).toContain(`COPY --from=${build.name} /app/dist ./dist`);
  });

  it('runs node dist/main.js under tini, as root with the reason written next to it', () => {
    expect(runtime.lines).toContain('ENTRYPOINT ["/usr/bin/tini", "--"]');
    expect(runtime.lines).toContain(
      'CMD ["node", "--max-semi-space-size=1", "--optimize-for-size", "--single-threaded-gc", "dist/main.js"]',
    );
    expect(runtime.lines).toContain('ENV MALLOC_ARENA_MAX=2');
    expect(aptPackages(runtime)).toContain('tini');
    const userIndex = runtime.lines.indexOf('USER root');
    expect(userIndex).toBeGreaterThan(0);
    const comment = runtime.lines.slice(Math.max(0, userIndex - 6), userIndex).join('\n');
    expect(comment).toMatch(/^# Runs as root/m);
    expect(comment).toMatch(/LV|device-mapper/);
    expect(comment).toMatch(/libvirt/);
  });

  it('the runtime stage installs the package of every tool the adapters call', () => {
    const tools = toolsCalledByAdapters();
    // The scan must find the known tools, or it is scanning nothing.
    expect(tools).toEqual(expect.arrayContaining(['qemu-img', 'virsh', 'lvcreate', 'lvs']));
    const installed = new Set(aptPackages(runtime));
    expect(installed).toEqual(new Set([...installed].filter(Boolean)));
    for (const tool of tools) {
      const skip = NOT_IN_IMAGE[tool];
      if (skip) {
        expect(dockerfile, `the Dockerfile must say why ${tool} is not installed`).toMatch(skip);
        continue;
      }
      const pkg = PACKAGE_OF_TOOL[tool];
      expect(pkg, `src/host calls "${tool}": add it to PACKAGE_OF_TOOL and the Dockerfile`).toBeDefined();
      expect(installed.has(pkg!) || IN_BASE_IMAGE.has(pkg!), `${tool} needs the Debian package ${pkg}`).toBe(
        true,
      );
    }
    for (const pkg of ['qemu-utils', 'lvm2', 'libvirt-clients', 'util-linux'])
      expect(installed.has(pkg)).toBe(true);
  });

  it('HEALTHCHECK runs the compiled check that reads the port from the agent config (not a fixed 9464)', () => {
    const health = runtime.lines.find((l) => l.startsWith('HEALTHCHECK'));
    expect(health).toMatch(/CMD \["node", "dist\/service\/healthcheck\.js"\]$/);
    expect(existsSync(`${ROOT}src/service/healthcheck.ts`)).toBe(true);
    expect(health).not.toContain('9464');
  });

  it('copies only paths that exist, and the dashboard assets the server reads', () => {
    for (const line of runtime.lines.concat(build.lines)) {
      const copy = /^COPY (?!--from)(.+)$/.exec(line);
      if (!copy) continue;
      const parts = copy[1]!.split(/\s+/);
      for (const source of parts.slice(0, -1))
        expect(existsSync(`${ROOT}${source}`), `COPY source ${source}`).toBe(true);
    }
    expect(runtime.lines).toContain('COPY src/dashboard/public ./src/dashboard/public');
    expect(runtime.lines).toContain('COPY config ./config');
  });

  it('.dockerignore keeps the context small but keeps what the build copies', () => {
    const ignored = dockerignore.split('\n').filter((l) => l && !l.startsWith('#'));
    for (const heavy of ['node_modules', 'dist', '.git', '.lab-cache']) expect(ignored).toContain(heavy);
    for (const needed of ['src', 'config', 'package.json', 'package-lock.json', 'tsconfig.json']) {
      expect(ignored).not.toContain(needed);
    }
  });
});
