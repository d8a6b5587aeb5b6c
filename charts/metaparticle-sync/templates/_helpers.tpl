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

{{/* image renders registry/repository:tag or registry/repository@digest: the registry is the
image's own or, when empty, image.registry; the tag defaults to appVersion. */}}
{{- define "mps.image" -}}
{{- $img := index . 0 }}{{- $root := index . 1 }}
{{- $name := $img.repository }}
{{- with (default $root.Values.image.registry $img.registry) }}{{ $name = printf "%s/%s" (trimSuffix "/" .) $name }}{{ end }}
{{- if $img.digest }}
{{- printf "%s@%s" $name $img.digest }}
{{- else }}
{{- printf "%s:%s" $name (default $root.Chart.AppVersion $img.tag) }}
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
{{- if not (hasSuffix "/mutate-pods" $u.path) }}
{{- fail (printf "webhook.url %q must end with /mutate-pods: the webhook for opted-in namespaces calls the same URL ending with /mutate-pods-of-opted-in-namespaces" .Values.webhook.url) }}
{{- end }}
{{- end }}
{{- range $key, $img := dict "image" .Values.image "sidecar.image" .Values.sidecar.image }}
{{- $registry := default $.Values.image.registry $img.registry }}
{{- $first := first (splitList "/" $img.repository) }}
{{- if and $registry (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) }}
{{- fail (printf "%s.repository %q starts with a registry host, but the image registry is %q: set %s.repository to the image's name under the registry (e.g. sync-elector), or image.registry to \"\" to give the whole name" $key $img.repository $registry $key) }}
{{- end }}
{{- if contains "//" $registry }}
{{- fail (printf "image registry %q has an empty path element" $registry) }}
{{- end }}
{{- end }}
{{- if and .Values.podDisruptionBudget.maxUnavailable (ne (int .Values.podDisruptionBudget.minAvailable) 1) }}
{{- fail "podDisruptionBudget: set maxUnavailable or minAvailable, not both (minAvailable's default is 1; a PodDisruptionBudget takes one)" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not .Values.podDisruptionBudget.maxUnavailable) (ge (int .Values.podDisruptionBudget.minAvailable) (int .Values.replicaCount)) (gt (int .Values.replicaCount) 1) }}
{{- fail (printf "podDisruptionBudget.minAvailable (%d) must be below replicaCount (%d), or no node could ever be drained" (int .Values.podDisruptionBudget.minAvailable) (int .Values.replicaCount)) }}
{{- end }}
{{- end }}
