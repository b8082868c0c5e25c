import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse, parseAllDocuments } from 'yaml';

// The chart without a helm binary: its files, values.yaml, and the templates with their actions
// stubbed to plain YAML (test/unit/helm checks them; the image test starts the image with them).

export const CHART = fileURLToPath(new URL('../../helm/clvm-snapshot-agent/', import.meta.url));
export const values = parse(readFileSync(`${CHART}values.yaml`, 'utf8')) as Record<string, unknown>;
export const templateFiles = readdirSync(`${CHART}templates`).filter((f) => f.endsWith('.yaml'));
export const templates: Record<string, string> = Object.fromEntries(
  [...templateFiles, '_helpers.tpl', 'NOTES.txt'].map((f) => [
    f,
    readFileSync(`${CHART}templates/${f}`, 'utf8'),
  ]),
);

/**
 * Template text → plain YAML: lines that hold only actions are dropped, except block outputs
 * (`| nindent N`) which become one unique stub key at that indent; inline actions become STUB.
 */
export function stubTemplate(text: string): string {
  const withoutComments = text.replace(/\{\{-?\s*\/\*[\s\S]*?\*\/\s*-?\}\}/g, '');
  return withoutComments
    .split('\n')
    .map((line, index) => {
      const onlyActions = /^\s*(\{\{[^}]*\}\}\s*)+$/.test(line);
      if (onlyActions) {
        const indent = /\b(?:nindent|indent)\s+(\d+)/.exec(line);
        return indent ? `${' '.repeat(Number(indent[1]))}stub_${index}: STUB` : null;
      }
      return line.replace(/\{\{[^}]*\}\}/g, 'STUB');
    })
    .filter((line): line is string => line !== null)
    .join('\n');
}

export interface ContainerDoc {
  env: Array<{
    name: string;
    value?: string;
    valueFrom?: { fieldRef?: { fieldPath: string }; secretKeyRef?: { key: string } };
  }>;
  securityContext: { privileged: boolean };
  livenessProbe: { httpGet: unknown };
  readinessProbe: { httpGet: unknown };
  ports: Array<{ name: string }>;
  volumeMounts: Array<{ name: string; mountPath: string; mountPropagation?: string }>;
}
export interface DaemonSetDoc {
  kind: string;
  spec: {
    updateStrategy: unknown;
    template: {
      spec: { containers: ContainerDoc[]; volumes: Array<{ name: string; hostPath?: { path: string } }> };
    };
  };
}

export function daemonSet(): DaemonSetDoc {
  const docs = parseAllDocuments(stubTemplate(templates['daemonset.yaml']!));
  const ds = docs.map((d) => d.toJS() as DaemonSetDoc | null).find((d) => d?.kind === 'DaemonSet');
  if (!ds) throw new Error('daemonset.yaml holds no DaemonSet');
  return ds;
}
