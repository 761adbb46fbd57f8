{{/* Names and labels shared by every object of the chart. */}}
{{- define "lettuce-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lettuce-worker.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "lettuce-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lettuce-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lettuce-worker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "lettuce-worker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: worker
{{- end -}}

{{- define "lettuce-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lettuce-worker.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret every secret variable comes from: the operator's, or the one the chart makes. */}}
{{- define "lettuce-worker.secretName" -}}
{{- if .Values.existingSecret -}}
{{- .Values.existingSecret -}}
{{- else -}}
{{- include "lettuce-worker.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* terminationGracePeriodSeconds: the worker's shutdown grace, rounded up, plus a margin. */}}
{{- define "lettuce-worker.terminationGrace" -}}
{{- add (div (add (int .Values.worker.shutdownGraceMs) 999) 1000) (int .Values.worker.terminationGraceMarginSeconds) -}}
{{- end -}}

{{/* The KEDA query: replicas wanted for the runnable (and running) jobs of the watched queue. */}}
{{- define "lettuce-worker.kedaQuery" -}}
{{- $k := .Values.autoscaling.keda -}}
{{- if $k.queue -}}
SELECT lettuce.desired_workers({{ int $k.slotsPerWorker }}, '{{ $k.queue }}', {{ int $k.maxReplicas }})
{{- else -}}
SELECT lettuce.desired_workers({{ int $k.slotsPerWorker }}, NULL, {{ int $k.maxReplicas }})
{{- end -}}
{{- end -}}
