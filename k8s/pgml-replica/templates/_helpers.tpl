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

{{/* The ML replica's image: the GPU variant is the same repository with gpu.tagSuffix. */}}
{{- define "pgml-replica.mlImage" -}}
{{- $ml := .Values.mlReplica }}
{{- $tag := $ml.image.tag | default .Chart.AppVersion }}
{{- if $ml.gpu.enabled }}
{{- $tag = printf "%s%s" $tag $ml.gpu.tagSuffix }}
{{- end }}
{{- printf "%s:%s" $ml.image.repository $tag }}
{{- end }}

{{/* Where the ML replica's volume is mounted and where PGDATA is inside it, by the image's
     PostgreSQL major: the official images' layout (18 moved PGDATA to
     /var/lib/postgresql/<major>/docker and the volume to /var/lib/postgresql). Up to 17 PGDATA
     is a subdirectory of the mount, as on 18, so a volume's lost+found never meets initdb. */}}
{{- define "pgml-replica.mlDataMount" -}}
{{- if ge (int .Values.mlReplica.postgresMajor) 18 }}/var/lib/postgresql{{ else }}/var/lib/postgresql/data{{ end }}
{{- end }}

{{- define "pgml-replica.mlPgdata" -}}
{{- $major := int .Values.mlReplica.postgresMajor }}
{{- if ge $major 18 }}{{ printf "/var/lib/postgresql/%d/docker" $major }}{{ else }}/var/lib/postgresql/data/pgdata{{ end }}
{{- end }}

{{/* The ML replica's resources, with gpu.count GPUs as a limit (extended resources are
     requested by their limit) when gpu.enabled. */}}
{{- define "pgml-replica.mlResources" -}}
{{- $ml := .Values.mlReplica }}
{{- $resources := deepCopy ($ml.resources | default dict) }}
{{- if $ml.gpu.enabled }}
{{- $limits := deepCopy ($resources.limits | default dict) }}
{{- $_ := set $limits $ml.gpu.resourceName (int $ml.gpu.count) }}
{{- $_ := set $resources "limits" $limits }}
{{- end }}
{{- toYaml $resources }}
{{- end }}

{{/* Scheduling of the ML replica's pods: its own, plus what GPU nodes need. Pod-spec keys
     at the template's indentation; `affinity` as is (GPU nodes are chosen by nodeSelector). */}}
{{- define "pgml-replica.mlScheduling" -}}
{{- $ml := .Values.mlReplica }}
{{- $nodeSelector := deepCopy ($ml.nodeSelector | default dict) }}
{{- $tolerations := $ml.tolerations | default list }}
{{- $runtimeClass := $ml.runtimeClassName }}
{{- if $ml.gpu.enabled }}
{{- $nodeSelector = merge $nodeSelector ($ml.gpu.nodeSelector | default dict) }}
{{- $tolerations = concat $tolerations ($ml.gpu.tolerations | default list) }}
{{- $runtimeClass = $ml.gpu.runtimeClassName | default $runtimeClass }}
{{- end }}
{{- with $runtimeClass }}
runtimeClassName: {{ . | quote }}
{{- end }}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ml.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pods allowed to the ML replica's Postgres and the sidecar's HTTP port under the
     NetworkPolicies: the sidecar, this release's `helm test` pod. */}}
{{- define "pgml-replica.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "pgml-replica.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}

{{- define "pgml-replica.cnpg" -}}
{{- if and .Values.mlReplica.enabled .Values.mlReplica.readReplicas.cnpg.enabled }}true{{ end }}
{{- end }}

{{/* The ML replica's Postgres pods: the StatefulSet's, or every instance of the CNPG Cluster. */}}
{{- define "pgml-replica.mlPodSelector" -}}
{{- if include "pgml-replica.cnpg" . }}
cnpg.io/cluster: {{ include "pgml-replica.mlName" . }}
{{- else }}
{{- include "pgml-replica.mlSelectorLabels" . }}
{{- end }}
{{- end }}

{{/* The sidecar's target host: the StatefulSet's headless Service, or CNPG's read-write one. */}}
{{- define "pgml-replica.mlHost" -}}
{{- if include "pgml-replica.cnpg" . }}
{{- printf "%s-rw" (include "pgml-replica.mlName" .) }}
{{- else }}
{{- include "pgml-replica.mlName" . }}
{{- end }}
{{- end }}

{{/* The key of the postgres password in the ML Secret: CNPG reads a basic-auth Secret. */}}
{{- define "pgml-replica.mlPasswordKey" -}}
{{- if include "pgml-replica.cnpg" . }}password{{ else }}postgres-password{{ end }}
{{- end }}
