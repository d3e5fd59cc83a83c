{{/* Names and labels shared by every template. */}}

{{- define "pgml-replica.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pgml-replica.fullname" -}}
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

{{- define "pgml-replica.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "pgml-replica.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pgml-replica
{{- end }}

{{- define "pgml-replica.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pgml-replica.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: sidecar
{{- end }}

{{- define "pgml-replica.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pgml-replica.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the DSNs: the user's, or the one this chart creates. Fails the
     install with what to set when there is neither. */}}
{{- define "pgml-replica.dsnSecret" -}}
{{- if .Values.connection.existingSecret }}
{{- .Values.connection.existingSecret }}
{{- else if and .Values.connection.source (or .Values.connection.target .Values.mlReplica.enabled) }}
{{- printf "%s-dsn" (include "pgml-replica.fullname" .) }}
{{- else }}
{{- fail "pgml-replica needs the source and target DSNs: set connection.existingSecret to a Secret with keys source-dsn and target-dsn (recommended), or pass connection.source and connection.target at install time (--set-file), or enable mlReplica for the target" }}
{{- end }}
{{- end }}

{{- define "pgml-replica.mlName" -}}
{{- printf "%s-ml" (include "pgml-replica.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pgml-replica.mlSecret" -}}
{{- default (printf "%s-ml" (include "pgml-replica.fullname" .)) .Values.mlReplica.existingSecret }}
{{- end }}

{{- define "pgml-replica.mlSelectorLabels" -}}
app.kubernetes.io/name: {{ include "pgml-replica.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: ml-replica
{{- end }}
