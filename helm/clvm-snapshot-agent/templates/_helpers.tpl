{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "clvm-snapshot-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release + chart, unless fullnameOverride. */}}
{{- define "clvm-snapshot-agent.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Kubernetes recommended labels. */}}
{{- define "clvm-snapshot-agent.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "clvm-snapshot-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: snapshot-agent
app.kubernetes.io/part-of: cloudstack
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the pods (never change them: a DaemonSet selector is immutable). */}}
{{- define "clvm-snapshot-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clvm-snapshot-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "clvm-snapshot-agent.secretName" -}}
{{- default (include "clvm-snapshot-agent.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{- define "clvm-snapshot-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "clvm-snapshot-agent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}
