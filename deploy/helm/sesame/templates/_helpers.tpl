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
{{/* Refers to a managed Secret in any field that can name a Secret; the
same fields as src/inject/pod.rs, one line per term (joined with spaces). */}}
{{- define "sesame.usesManagedSecret" -}}
has(object.spec) && (
(has(object.spec.volumes) && object.spec.volumes.exists(v,
(has(v.secret) && has(v.secret.secretName) && v.secret.secretName.startsWith('sesame-')) ||
(has(v.projected) && has(v.projected.sources) && v.projected.sources.exists(s, has(s.secret) && has(s.secret.name) && s.secret.name.startsWith('sesame-'))) ||
(has(v.csi) && has(v.csi.nodePublishSecretRef) && has(v.csi.nodePublishSecretRef.name) && v.csi.nodePublishSecretRef.name.startsWith('sesame-')) ||
(has(v.cephfs) && has(v.cephfs.secretRef) && has(v.cephfs.secretRef.name) && v.cephfs.secretRef.name.startsWith('sesame-')) ||
(has(v.rbd) && has(v.rbd.secretRef) && has(v.rbd.secretRef.name) && v.rbd.secretRef.name.startsWith('sesame-')) ||
(has(v.iscsi) && has(v.iscsi.secretRef) && has(v.iscsi.secretRef.name) && v.iscsi.secretRef.name.startsWith('sesame-')) ||
(has(v.flexVolume) && has(v.flexVolume.secretRef) && has(v.flexVolume.secretRef.name) && v.flexVolume.secretRef.name.startsWith('sesame-')) ||
(has(v.scaleIO) && has(v.scaleIO.secretRef) && has(v.scaleIO.secretRef.name) && v.scaleIO.secretRef.name.startsWith('sesame-')) ||
(has(v.storageos) && has(v.storageos.secretRef) && has(v.storageos.secretRef.name) && v.storageos.secretRef.name.startsWith('sesame-')) ||
(has(v.cinder) && has(v.cinder.secretRef) && has(v.cinder.secretRef.name) && v.cinder.secretRef.name.startsWith('sesame-')) ||
(has(v.azureFile) && has(v.azureFile.secretName) && v.azureFile.secretName.startsWith('sesame-')))) ||
(has(object.spec.imagePullSecrets) && object.spec.imagePullSecrets.exists(s, has(s.name) && s.name.startsWith('sesame-'))) ||
(has(object.spec.containers) && object.spec.containers.exists(c,
(has(c.env) && c.env.exists(e, has(e.valueFrom) && has(e.valueFrom.secretKeyRef) && has(e.valueFrom.secretKeyRef.name) && e.valueFrom.secretKeyRef.name.startsWith('sesame-'))) ||
(has(c.envFrom) && c.envFrom.exists(e, has(e.secretRef) && has(e.secretRef.name) && e.secretRef.name.startsWith('sesame-')))
)) ||
(has(object.spec.initContainers) && object.spec.initContainers.exists(c,
(has(c.env) && c.env.exists(e, has(e.valueFrom) && has(e.valueFrom.secretKeyRef) && has(e.valueFrom.secretKeyRef.name) && e.valueFrom.secretKeyRef.name.startsWith('sesame-'))) ||
(has(c.envFrom) && c.envFrom.exists(e, has(e.secretRef) && has(e.secretRef.name) && e.secretRef.name.startsWith('sesame-')))
)) ||
(has(object.spec.ephemeralContainers) && object.spec.ephemeralContainers.exists(c,
(has(c.env) && c.env.exists(e, has(e.valueFrom) && has(e.valueFrom.secretKeyRef) && has(e.valueFrom.secretKeyRef.name) && e.valueFrom.secretKeyRef.name.startsWith('sesame-'))) ||
(has(c.envFrom) && c.envFrom.exists(e, has(e.secretRef) && has(e.secretRef.name) && e.secretRef.name.startsWith('sesame-')))
)))
{{- end -}}

{{/* What the webhooks are sent: a Pod that asks, or that uses a managed Secret. */}}
{{- define "sesame.sentToSesame" -}}
({{ include "sesame.asksForSesame" . }}) || {{ include "sesame.usesManagedSecret" . | replace "\n" " " }}
{{- end -}}

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
{{- if and .Values.clientAuth.enabled (empty .Values.clientAuth.caBundle) (empty .Values.clientAuth.existingConfigMap) -}}
{{- fail "clientAuth.enabled needs clientAuth.caBundle or clientAuth.existingConfigMap: the CA bundle the API server's client certificate chains to" -}}
{{- end -}}
{{- if and .Values.clientAuth.caBundle .Values.clientAuth.existingConfigMap -}}
{{- fail "clientAuth.caBundle and clientAuth.existingConfigMap exclude each other: the chart renders the bundle, or you provide the ConfigMap" -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled (empty .Values.networkPolicy.apiServerCIDRs) -}}
{{- fail "networkPolicy.enabled needs networkPolicy.apiServerCIDRs: without them the API server cannot call the webhook" -}}
{{- end -}}
{{- end -}}
