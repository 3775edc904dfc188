{{/*
Names. The full name is capped at 52 characters because the StatefulSet's pods carry a
`controller-revision-hash` label "<statefulset>-<10-char hash>" that must fit in 63, and
"<fullname>-operator" / "<fullname>-peers" must stay valid DNS labels.
*/}}
{{- define "ringkv.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "ringkv.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ringkv.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The headless Service that gives every node a stable DNS name (the StatefulSet's serviceName). */}}
{{- define "ringkv.peerServiceName" -}}
{{- printf "%s-peers" (include "ringkv.fullname" .) }}
{{- end }}

{{/* Created and owned by the operator, never rendered here, so `helm upgrade` cannot reset membership. */}}
{{- define "ringkv.membershipConfigMap" -}}
{{- printf "%s-membership" (include "ringkv.fullname" .) }}
{{- end }}

{{- define "ringkv.operatorName" -}}
{{- printf "%s-operator" (include "ringkv.fullname" .) }}
{{- end }}

{{- define "ringkv.secretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-tokens" (include "ringkv.fullname" .)) }}
{{- end }}

{{- define "ringkv.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- .Values.serviceAccount.name | default (include "ringkv.operatorName" .) }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ringkv.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* app.kubernetes.io/version: the version actually deployed, made a valid label value. */}}
{{- define "ringkv.version" -}}
{{- regexReplaceAll "[^-A-Za-z0-9_.]" (.Values.image.tag | default .Chart.AppVersion) "_" | trunc 63 | trimAll "-_." }}
{{- end }}

{{/*
Selector labels: stable for the life of a release (selectors and volumeClaimTemplates are
immutable). Call with (dict "ctx" $ "component" "node"); component may be empty.
*/}}
{{- define "ringkv.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ringkv.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* Full label set for metadata. Call like ringkv.selectorLabels. */}}
{{- define "ringkv.labels" -}}
helm.sh/chart: {{ include "ringkv.chart" .ctx }}
{{ include "ringkv.selectorLabels" . }}
app.kubernetes.io/version: {{ include "ringkv.version" .ctx | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: ringkv
{{- end }}

{{/* The node pods' selector as a label-selector string, for the operator (RINGKV_POD_SELECTOR). */}}
{{- define "ringkv.nodePodSelector" -}}
{{- $parts := list }}
{{- range $k, $v := include "ringkv.selectorLabels" (dict "ctx" . "component" "node") | fromYaml }}
{{- $parts = append $parts (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $parts }}
{{- end }}

{{/* Restricted Pod Security Standard, shared by node, operator and test pods. */}}
{{- define "ringkv.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "ringkv.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Token env vars from the Secret. The node needs both; the operator only the cluster token
(it talks to the internal port and the open health endpoints).
*/}}
{{- define "ringkv.clusterTokenEnv" -}}
- name: RINGKV_CLUSTER_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "ringkv.secretName" . }}
      key: cluster-token
{{- end }}

{{/*
The Secret's data (base64 values) as JSON: the live Secret's when `lookup` finds it, else
new random tokens. Memoized in the root context, because every template that includes it
must see the same random values (the Secret and the checksum annotation of the pods).
*/}}
{{- define "ringkv.tokens" -}}
{{- if not (hasKey . "ringkvTokens") }}
{{- $live := lookup "v1" "Secret" .Release.Namespace (include "ringkv.secretName" .) }}
{{- $data := (get ($live | default dict) "data") | default dict }}
{{- $_ := set . "ringkvTokens" (dict
      "api-token" (get $data "api-token" | default (randAlphaNum 40 | b64enc))
      "cluster-token" (get $data "cluster-token" | default (randAlphaNum 40 | b64enc))) }}
{{- end }}
{{- get . "ringkvTokens" | toJson }}
{{- end }}

{{/*
`checksum/tokens` for the node and operator pod templates: a changed token rolls them (a
pod reads the Secret into its environment only when it starts). For `auth.existingSecret`
it is the live Secret's data, or just its name when there is no cluster to ask.
*/}}
{{- define "ringkv.tokensChecksum" -}}
{{- if .Values.auth.existingSecret }}
{{- $live := lookup "v1" "Secret" .Release.Namespace .Values.auth.existingSecret }}
{{- (get ($live | default dict) "data") | default .Values.auth.existingSecret | toJson | sha256sum }}
{{- else }}
{{- include "ringkv.tokens" . | sha256sum }}
{{- end }}
{{- end }}

{{- define "ringkv.apiTokenEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "ringkv.secretName" .ctx }}
      key: api-token
{{- end }}

{{/* Extra env from a name -> value map, rendered in a stable (sorted) order. */}}
{{- define "ringkv.extraEnv" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* TLS files from the `tls.secretName` Secret (tls.crt, tls.key, ca.crt), mounted at /tls. */}}
{{- define "ringkv.tlsEnv" -}}
{{- if .Values.tls.enabled }}
- name: RINGKV_TLS_CERT_FILE
  value: /tls/tls.crt
- name: RINGKV_TLS_KEY_FILE
  value: /tls/tls.key
- name: RINGKV_TLS_CA_FILE
  value: /tls/ca.crt
{{- end }}
{{- end }}

{{- define "ringkv.tlsVolumeMount" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "ringkv.tlsVolume" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
{{- end }}
{{- end }}

{{/*
"true" when the StatefulSet gets a persistentVolumeClaimRetentionPolicy (Kubernetes 1.27+
with the API list known); empty otherwise, and older clusters always retain the claims.
*/}}
{{- define "ringkv.hasRetentionPolicy" -}}
{{- if and .Values.persistence.enabled (.Capabilities.APIVersions.Has "apps/v1/StatefulSet") (semverCompare ">=1.27-0" .Capabilities.KubeVersion.Version) }}true{{ end }}
{{- end }}

{{/* http or https, as the nodes serve their API. */}}
{{- define "ringkv.scheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/* An egress rule for DNS: names of peers, and of the API server, resolve through it. */}}
{{- define "ringkv.dnsEgress" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
  {{- with .Values.networkPolicy.egress.dnsTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* The client Service as this release's own pods reach it. */}}
{{- define "ringkv.apiUrl" -}}
{{ include "ringkv.scheme" . }}://{{ include "ringkv.fullname" . }}:{{ .Values.service.port }}
{{- end }}

{{- define "ringkv.backupClaimName" -}}
{{- .Values.backup.persistence.existingClaim | default (printf "%s-backups" (include "ringkv.fullname" .)) }}
{{- end }}

{{/*
The pod of a Job that runs the ringkv CLI against this release with a claim of backups
mounted at /backups: the scheduled backup and the restore. Call with (dict "ctx" $
"component" "backup" "args" (list ...) "claim" NAME "readOnly" BOOL "resources" MAP).
*/}}
{{- define "ringkv.cliJobPod" -}}
{{- $ctx := .ctx -}}
restartPolicy: Never
automountServiceAccountToken: false
enableServiceLinks: false
{{- with $ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "ringkv.podSecurityContext" $ctx | nindent 2 }}
containers:
  - name: {{ .component }}
    image: {{ include "ringkv.image" $ctx }}
    imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
    command:
      {{- toYaml (concat (list "ringkv" .component "--url" (include "ringkv.apiUrl" $ctx)) .args) | nindent 6 }}
    env:
      {{- include "ringkv.apiTokenEnv" (dict "ctx" $ctx "name" "RINGKV_TOKEN") | nindent 6 }}
      {{- if $ctx.Values.tls.enabled }}
      - name: RINGKV_CACERT
        value: /tls/ca.crt
      {{- end }}
    {{- with .resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      {{- include "ringkv.containerSecurityContext" $ctx | nindent 6 }}
    volumeMounts:
      - name: backups
        mountPath: /backups
        {{- if .readOnly }}
        readOnly: true
        {{- end }}
      - name: tmp
        mountPath: /tmp
      {{- include "ringkv.tlsVolumeMount" $ctx | nindent 6 }}
volumes:
  - name: backups
    persistentVolumeClaim:
      claimName: {{ .claim }}
      {{- if .readOnly }}
      readOnly: true
      {{- end }}
  - name: tmp
    emptyDir: {}
  {{- include "ringkv.tlsVolume" $ctx | nindent 2 }}
{{- end }}

{{/* Cross-field checks the JSON schema cannot express. */}}
{{- define "ringkv.validate" -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName: a Secret with tls.crt, tls.key and ca.crt" }}
{{- end }}
{{- if gt (int .Values.replication.rf) (int .Values.replicaCount) }}
{{- fail (printf "replication.rf (%d) must not exceed replicaCount (%d)" (int .Values.replication.rf) (int .Values.replicaCount)) }}
{{- end }}
{{- if .Values.podDisruptionBudget.enabled }}
{{- $rf := int .Values.replication.rf }}
{{- $spare := sub $rf (add (div $rf 2) 1) }}
{{- if gt (int .Values.podDisruptionBudget.maxUnavailable) (int $spare) }}
{{- fail (printf "podDisruptionBudget.maxUnavailable (%d) would let a drain take a quorum of rf=%d away; use at most %d (or disable the PDB)" (int .Values.podDisruptionBudget.maxUnavailable) $rf $spare) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Series selectors of the alert rules: by namespace and pod name, the two labels both a
ServiceMonitor and the usual annotation-based scrape configuration attach, so the rules
work whichever way the nodes are scraped and whatever the job is called.
*/}}
{{- define "ringkv.metrics.nodes" -}}
namespace="{{ .Release.Namespace }}", pod=~"{{ include "ringkv.fullname" . }}-[0-9]+"
{{- end }}

{{- define "ringkv.metrics.operator" -}}
namespace="{{ .Release.Namespace }}", pod=~"{{ include "ringkv.operatorName" . }}-.+"
{{- end }}

{{/* Annotations for annotation-based scraping of a pod's /metrics on `port`. */}}
{{- define "ringkv.scrapeAnnotations" -}}
{{- if .ctx.Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
prometheus.io/scheme: {{ .scheme }}
{{- end }}
{{- end }}
