import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Ajv from 'ajv';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { loadConfig } from '../../../src/config/index.js';
import { createMetrics } from '../../../src/observability/metrics.js';
import { CHART, daemonSet, stubTemplate, templateFiles, templates, values } from '../../support/chart.js';

// No helm binary here: the chart is checked piece by piece. values.yaml against its schema (ajv),
// every .Values reference against values.yaml, each template's YAML once template actions are
// stubbed, the agent config it renders against the agent's own config loader, and the Grafana
// dashboard's metric names against the agent's metrics registry.

const schema = JSON.parse(readFileSync(`${CHART}values.schema.json`, 'utf8')) as object;

function validator() {
  // Helm validates values.schema.json as JSON Schema draft-07.
  const ajv = new Ajv.default({ allErrors: true, strict: false });
  return ajv.compile(schema);
}

function clone<T>(value: T): T {
  return structuredClone(value);
}

function hasPath(object: unknown, path: readonly string[]): boolean {
  let current = object;
  for (const key of path) {
    if (current === null || typeof current !== 'object' || !(key in current)) return false;
    current = (current as Record<string, unknown>)[key];
  }
  return true;
}

describe('values.yaml and values.schema.json', () => {
  it('values.yaml is valid against the schema', () => {
    const validate = validator();
    expect(validate(values), JSON.stringify(validate.errors)).toBe(true);
  });

  it('the schema refuses typos and bad values (it can fail)', () => {
    const validate = validator();
    const typo = { ...clone(values), updateStrategyy: {} };
    expect(validate(typo)).toBe(false);
    const recreate = clone(values) as { updateStrategy: { type: string } };
    recreate.updateStrategy.type = 'Recreate';
    expect(validate(recreate)).toBe(false);
    const relative = clone(values) as { agentConfig: { store: { roots: string[] } } };
    relative.agentConfig.store.roots = ['mnt/snapstore'];
    expect(validate(relative)).toBe(false);
    const dotdot = clone(values) as { agentConfig: { store: { roots: string[] } } };
    dotdot.agentConfig.store.roots = ['/mnt/../etc'];
    expect(validate(dotdot)).toBe(false);
    const badUrl = clone(values) as { secret: { brokerUrls: string } };
    badUrl.secret.brokerUrls = 'http://rabbit';
    expect(validate(badUrl)).toBe(false);
  });

  it('agentConfig is a config file the agent itself accepts (strict convict validation)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'clvmt-helm-'));
    try {
      const file = join(dir, 'agent.json');
      await writeFile(file, JSON.stringify(values.agentConfig));
      const { config } = loadConfig({
        file,
        env: {
          AGENT_HOST_ID: 'kvm-node-01',
          AGENT_BROKER_URLS: 'amqp://u:p@rabbit:5672',
          AGENT_SIGNING_KEY: 'k',
        },
      });
      expect(config.hostId).toBe('kvm-node-01');
      expect(config.broker.urls).toEqual(['amqp://u:p@rabbit:5672']);
      expect(config.store.roots).toEqual(['/mnt/snapstore']);
      // And a typo in agentConfig would stop the agent: the loader refuses unknown keys.
      await writeFile(file, JSON.stringify({ ...(values.agentConfig as object), stateDirr: '/x' }));
      expect(() => loadConfig({ file, env: {} })).toThrow(/stateDirr/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('terminationGracePeriodSeconds covers the preStop wait plus the agent drain', () => {
    const v = values as {
      terminationGracePeriodSeconds: number;
      preStop: { waitForIdleSeconds: number };
      agentConfig: { limits: { shutdownGraceMs: number } };
    };
    expect(v.terminationGracePeriodSeconds * 1000).toBeGreaterThan(
      v.preStop.waitForIdleSeconds * 1000 + v.agentConfig.limits.shutdownGraceMs + 30_000,
    );
    expect(templates['daemonset.yaml']).toMatch(/\{\{- fail "terminationGracePeriodSeconds must exceed/);
  });
});

describe('templates', () => {
  it('every .Values reference exists in values.yaml', () => {
    const missing: string[] = [];
    for (const [file, text] of Object.entries(templates)) {
      for (const match of text.matchAll(/\$?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)/g)) {
        const path = match[1]!.slice(1).split('.');
        if (!hasPath(values, path)) missing.push(`${file}: .Values.${path.join('.')}`);
      }
    }
    expect(missing).toEqual([]);
  });

  it('the reference check can fail', () => {
    expect(hasPath(values, ['agentConfig', 'store', 'roots'])).toBe(true);
    expect(hasPath(values, ['agentConfig', 'store', 'rootz'])).toBe(false);
  });

  it('every template is valid YAML once its actions are stubbed', () => {
    for (const file of templateFiles) {
      const docs = parseAllDocuments(stubTemplate(templates[file]!), { uniqueKeys: true });
      for (const doc of docs) expect(doc.errors.map(String), file).toEqual([]);
      const objects = docs.map((d) => d.toJS()).filter(Boolean);
      expect(objects.length, `${file} renders a Kubernetes object`).toBeGreaterThan(0);
      for (const o of objects) {
        expect(o.apiVersion, file).toBeTypeOf('string');
        expect(o.kind, file).toBeTypeOf('string');
      }
    }
  });

  it('the stub can fail on broken YAML', () => {
    const broken = 'kind: X\nmetadata:\n  name: {{ .x }}\n   labels: [\n';
    expect(parseAllDocuments(stubTemplate(broken)).some((d) => d.errors.length > 0)).toBe(true);
  });

  it('DaemonSet: host id from spec.nodeName, config and secrets, privileged, probes', () => {
    const ds = daemonSet();
    const pod = ds.spec.template.spec;
    const container = pod.containers[0]!;
    const env = new Map(container.env.map((e) => [e.name, e]));
    expect(env.get('AGENT_HOST_ID')?.valueFrom?.fieldRef?.fieldPath).toBe('spec.nodeName');
    expect(env.get('AGENT_CONFIG')?.value).toBe('/etc/clvm-snapshot-agent/agent.json');
    expect(env.get('AGENT_BROKER_URLS')?.valueFrom?.secretKeyRef?.key).toBe('AGENT_BROKER_URLS');
    expect(env.get('AGENT_SIGNING_KEY')?.valueFrom?.secretKeyRef?.key).toBe('AGENT_SIGNING_KEY');
    expect(container.securityContext.privileged).toBe(true);
    expect(container.livenessProbe.httpGet).toEqual({ path: '/livez', port: 'http-metrics' });
    expect(container.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'http-metrics' });
    expect(container.ports[0]?.name).toBe('http-metrics');
    expect(pod).toHaveProperty('nodeSelector');
    expect(pod).toHaveProperty('tolerations');
    expect(pod).toHaveProperty('terminationGracePeriodSeconds');
    expect(ds.spec.updateStrategy).toHaveProperty('type');
    expect(templates['daemonset.yaml']).toContain('configMap:');
    expect(templates['configmap.yaml']).toContain('agent.json: |');
  });

  it('DaemonSet mounts what the agent needs, store and pool roots with HostToContainer', () => {
    const ds = daemonSet();
    const container = ds.spec.template.spec.containers[0]!;
    const mounts = new Map(container.volumeMounts.map((m) => [m.name, m]));
    for (const [name, path] of [
      ['dev', '/dev'],
      ['lvm-run', '/run/lvm'],
      ['lvm-lock', '/run/lock/lvm'],
      ['lvm-config', '/etc/lvm'],
      ['libvirt-run', '/run/libvirt'],
    ]) {
      expect(mounts.get(name!)?.mountPath, name).toBe(path);
    }
    const volumes = new Map(ds.spec.template.spec.volumes.map((v) => [v.name, v]));
    for (const name of ['dev', 'lvm-run', 'lvm-lock', 'lvm-config', 'libvirt-run', 'state']) {
      expect(volumes.get(name)?.hostPath, name).toBeDefined();
    }
    // Store and pool mounts come from a range over agentConfig; one stubbed item of each here.
    const propagated = container.volumeMounts.filter((m) => m.mountPropagation);
    expect(propagated.map((m) => m.mountPropagation)).toEqual(['HostToContainer', 'HostToContainer']);
    expect(templates['daemonset.yaml']).toMatch(/range \$i, \$root := \.Values\.agentConfig\.store\.roots/);
    expect(templates['daemonset.yaml']).toMatch(
      /range \$i, \$root := \.Values\.agentConfig\.pools\.fileRoots/,
    );
  });

  it('uses the Kubernetes recommended labels', () => {
    for (const label of [
      'app.kubernetes.io/name',
      'app.kubernetes.io/instance',
      'app.kubernetes.io/version',
      'app.kubernetes.io/component',
      'app.kubernetes.io/part-of',
      'app.kubernetes.io/managed-by',
      'helm.sh/chart',
    ]) {
      expect(templates['_helpers.tpl']).toContain(`${label}:`);
    }
    for (const file of templateFiles) {
      expect(templates[file], file).toContain('include "clvm-snapshot-agent.labels" . | nindent 4');
    }
  });
});

describe('Grafana dashboard', () => {
  const dashboard = JSON.parse(readFileSync(`${CHART}dashboards/clvm-snapshot-agent.json`, 'utf8')) as {
    panels: Array<{ title: string; targets: Array<{ expr: string }> }>;
  };

  it('every metric it queries is one the agent exports', async () => {
    const metrics = createMetrics({ defaultMetrics: true });
    const exported = new Set((await metrics.registry.getMetricsAsJSON()).map((m) => m.name));
    const queried = new Set<string>();
    for (const panel of dashboard.panels) {
      for (const target of panel.targets) {
        for (const m of target.expr.matchAll(/\bclvm_agent_[a-z0-9_]+/g))
          queried.add(m[0].replace(/_(bucket|sum|count)$/, ''));
      }
    }
    expect(queried.size).toBeGreaterThan(5);
    const unknown = [...queried].filter((name) => !exported.has(name));
    expect(unknown).toEqual([]);
    // Every metric the agent defines has a panel.
    const own = [...exported].filter((n) => !/^clvm_agent_(process|nodejs)_/.test(n));
    expect(own.filter((n) => !queried.has(n))).toEqual([]);
  });
});

describe('alert rules (PrometheusRule) and their dashboard panels', () => {
  const dashboard = JSON.parse(readFileSync(`${CHART}dashboards/clvm-snapshot-agent.json`, 'utf8')) as {
    panels: Array<{ title: string; description?: string; targets: Array<{ expr: string }> }>;
  };
  const rule = parseAllDocuments(stubTemplate(templates['prometheusrule.yaml']!))
    .map(
      (d) =>
        d.toJS() as {
          kind: string;
          spec: { groups: Array<{ rules: Array<{ alert: string; expr: string; for: string }> }> };
        },
    )
    .find((d) => d?.kind === 'PrometheusRule');
  const alerts = rule?.spec.groups.flatMap((g) => g.rules) ?? [];
  const metricNames = (expr: string) => [...expr.matchAll(/\bclvm_agent_[a-z0-9_]+/g)].map((m) => m[0]);

  it('has the three alerts operators asked for, on metrics the agent exports', async () => {
    expect(alerts.map((a) => a.alert).sort()).toEqual([
      'ClvmOutboxStuck',
      'ClvmStoreUnhealthy',
      'ClvmVolumeSnapshotTooOld',
    ]);
    const exported = new Set(
      (await createMetrics({ defaultMetrics: false }).registry.getMetricsAsJSON()).map((m) => m.name),
    );
    for (const a of alerts) {
      expect(metricNames(a.expr).length, a.alert).toBeGreaterThan(0);
      for (const name of metricNames(a.expr)) expect(exported.has(name), `${a.alert}: ${name}`).toBe(true);
      expect(a.for, a.alert).toMatch(/^\d+m$/);
    }
    // The thresholds come from values.yaml, which the schema bounds.
    expect(templates['prometheusrule.yaml']).toContain(
      '{{ .Values.prometheusRule.snapshotMaxAgeHours }} * 3600',
    );
    expect(templates['prometheusrule.yaml']).toContain('{{- if .Values.prometheusRule.enabled }}');
  });

  it('the dashboard shows each alert: a panel named by it that queries the same metrics', () => {
    for (const a of alerts) {
      const panel = dashboard.panels.find((p) => p.description?.startsWith(`Alert ${a.alert}:`));
      expect(panel, `a panel for ${a.alert}`).toBeDefined();
      const queried = panel!.targets.flatMap((t) => metricNames(t.expr));
      for (const name of metricNames(a.expr)) expect(queried, a.alert).toContain(name);
    }
  });
});
