{{/* The base name of every object: the release name, or release-chart. */}}
{{- define "sesame.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sesame.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "sesame.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: sesame
app.kubernetes.io/managed-by: {{ .Release.Service }}
sesame.dev/certificates: {{ .Values.certificates.mode }}
{{- end -}}

{{- define "sesame.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* Annotation prefix, from the configuration. */}}
{{- define "sesame.prefix" -}}
{{- .Values.config.annotationPrefix | default "sesame.dev" -}}
{{- end -}}

{{/* True for a Pod with a request annotation (any but the marker). */}}
{{- define "sesame.asksForSesame" -}}
{{- $p := include "sesame.prefix" . -}}
has(object.metadata.annotations) && object.metadata.annotations.exists(k, k.startsWith('{{ $p }}/') && k != '{{ $p }}/injected')
{{- end -}}

{{/* Namespaces never sent to Sesame nor guarded. */}}
{{- define "sesame.excludedNamespaces" -}}
- key: kubernetes.io/metadata.name
  operator: NotIn
  values:
    {{- range (append .Values.webhook.excludedNamespaces .Release.Namespace | uniq) }}
    - {{ . | quote }}
    {{- end }}
- key: sesame.dev/ignore
  operator: NotIn
  values: ["true"]
{{- end -}}

{{/* Fails the render on values that would install a broken webhook. */}}
{{- define "sesame.validate" -}}
{{- if not (has .Values.webhook.failurePolicy (list "Fail" "Ignore")) -}}
{{- fail "webhook.failurePolicy must be Fail or Ignore" -}}
{{- end -}}
{{- $t := int .Values.webhook.timeoutSeconds -}}
{{- if or (lt $t 1) (gt $t 10) -}}
{{- fail "webhook.timeoutSeconds must be between 1 and 10 (the API server's limit)" -}}
{{- end -}}
{{- if not (has .Values.certificates.mode (list "self-managed" "cert-manager")) -}}
{{- fail "certificates.mode must be self-managed or cert-manager" -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled (empty .Values.networkPolicy.apiServerCIDRs) -}}
{{- fail "networkPolicy.enabled needs networkPolicy.apiServerCIDRs: without them the API server cannot call the webhook" -}}
{{- end -}}
{{- end -}}
