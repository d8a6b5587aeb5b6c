{{/* Chart name, truncated to fit label values. */}}
{{- define "mps.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the prefix of every resource this release creates. */}}
{{- define "mps.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mps.injector" -}}{{ include "mps.fullname" . }}-injector{{- end }}

{{- define "mps.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "mps.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mps.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mps.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: injector
{{- end }}

{{- define "mps.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mps.injector" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image renders repository:tag or repository@digest; the tag defaults to appVersion. */}}
{{- define "mps.image" -}}
{{- $img := index . 0 }}{{- $root := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{- define "mps.sidecarClusterRole" -}}{{ include "mps.fullname" . }}-sidecar{{- end }}
{{- define "mps.servingCert" -}}{{ include "mps.injector" . }}-serving{{- end }}
{{- define "mps.servingSecret" -}}{{ include "mps.injector" . }}-tls{{- end }}
{{- define "mps.caCert" -}}{{ include "mps.fullname" . }}-ca{{- end }}

{{/* DNS names of the injector's Service. */}}
{{- define "mps.serviceDNSNames" -}}
- {{ include "mps.injector" . }}.{{ .Release.Namespace }}.svc
- {{ include "mps.injector" . }}.{{ .Release.Namespace }}.svc.cluster.local
{{- end }}

{{/* urlHost is the host of webhook.url, empty when unset. */}}
{{- define "mps.urlHost" -}}
{{- if .Values.webhook.url }}{{ (urlParse .Values.webhook.url).hostname }}{{ end }}
{{- end }}

{{/* Validate combinations the schema cannot express. */}}
{{- define "mps.validate" -}}
{{- if and (not .Values.certManager.enabled) .Values.certManager.issuerRef }}
{{- fail "certManager.issuerRef is set but certManager.enabled is false: set certManager.enabled=true to use an existing issuer, or remove certManager.issuerRef" }}
{{- end }}
{{- if .Values.webhook.url }}
{{- $u := urlParse .Values.webhook.url }}
{{- if ne $u.scheme "https" }}
{{- fail (printf "webhook.url %q must be an https URL: the API server only calls webhooks over TLS" .Values.webhook.url) }}
{{- end }}
{{- if not $u.hostname }}
{{- fail (printf "webhook.url %q has no host" .Values.webhook.url) }}
{{- end }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (ge (int .Values.podDisruptionBudget.minAvailable) (int .Values.replicaCount)) (gt (int .Values.replicaCount) 1) }}
{{- fail (printf "podDisruptionBudget.minAvailable (%d) must be below replicaCount (%d), or no node could ever be drained" (int .Values.podDisruptionBudget.minAvailable) (int .Values.replicaCount)) }}
{{- end }}
{{- end }}
