{{/*
Object names: <release>-<chart>, or the release name alone when it already
contains the chart name (so `helm install aspen-operator` gives
"aspen-operator"), cut to 63 characters.
*/}}
{{- define "aspen-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aspen-operator.fullname" -}}
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

{{- define "aspen-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "aspen-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: aspen
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "aspen-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aspen-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "aspen-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aspen-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Lease the replicas elect a leader with, one per release. */}}
{{- define "aspen-operator.leaseName" -}}
{{- include "aspen-operator.fullname" . }}
{{- end }}

{{/* Leader election is on exactly when more than one replica runs. */}}
{{- define "aspen-operator.leaderElection" -}}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- end }}

{{/*
Labels of the Aspen node pods, as the operator sets them
(operator/src/resources.rs): the PodMonitor selects on them.
*/}}
{{- define "aspen-operator.nodePodLabels" -}}
app.kubernetes.io/name: aspen
app.kubernetes.io/component: node
app.kubernetes.io/managed-by: aspen-operator
{{- end }}
