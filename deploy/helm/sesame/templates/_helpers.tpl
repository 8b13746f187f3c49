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

{{/* The ServiceAccount Sesame runs as (and the RBAC binds). */}}
{{- define "sesame.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "sesame.fullname" .) -}}
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
{{- if or (lt $t 1) (gt $t 30) -}}
{{- fail "webhook.timeoutSeconds must be between 1 and 30 (the API server's limit)" -}}
{{- end -}}
{{- /* resolveTimeout in whole seconds or milliseconds; other forms are left to Sesame's own check. */ -}}
{{- $rt := toString (.Values.config.resolveTimeout | default "3s") -}}
{{- $ms := -1 -}}
{{- if regexMatch "^[0-9]+ms$" $rt -}}
{{- $ms = int (trimSuffix "ms" $rt) -}}
{{- else if regexMatch "^[0-9]+s$" $rt -}}
{{- $ms = mul (int (trimSuffix "s" $rt)) 1000 -}}
{{- end -}}
{{- if ge $ms (mul $t 1000) -}}
{{- fail (printf "config.resolveTimeout (%s) must be below webhook.timeoutSeconds (%d s), so that Sesame answers before the API server gives up" $rt $t) -}}
{{- end -}}
{{- if not (has .Values.certificates.mode (list "self-managed" "cert-manager")) -}}
{{- fail "certificates.mode must be self-managed or cert-manager" -}}
{{- end -}}
{{- if and (not .Values.serviceAccount.create) (empty .Values.serviceAccount.name) -}}
{{- fail "serviceAccount.create=false needs serviceAccount.name: the ServiceAccount Sesame runs as" -}}
{{- end -}}
{{- if eq (int .Values.ports.webhook) (int .Values.ports.admin) -}}
{{- fail "ports.webhook and ports.admin must differ" -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled (empty .Values.networkPolicy.apiServerCIDRs) -}}
{{- fail "networkPolicy.enabled needs networkPolicy.apiServerCIDRs: without them the API server cannot call the webhook" -}}
{{- end -}}
{{- end -}}
