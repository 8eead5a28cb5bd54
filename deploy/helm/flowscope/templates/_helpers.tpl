{{/*
Names, labels and the settings every flowscope container shares.
*/}}

{{/* Chart name, or nameOverride. */}}
{{- define "flowscope.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>" (or fullnameOverride), at most 63 characters. */}}
{{- define "flowscope.fullname" -}}
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

{{/*
The name of one component's objects, "<fullname>-<component>": call with (dict "root" $
"component" "collector"). The fullname is cut to 45 characters so that the longest name
built on it, the Service "<…>-collector-metrics", keeps within the 63 characters of a DNS
label; the component stays whole, so no two components' names can become one. A release
whose fullname is longer could not install before, so no installed name changes.
*/}}
{{- define "flowscope.componentName" -}}
{{- printf "%s-%s" (include "flowscope.fullname" .root | trunc 45 | trimSuffix "-") .component }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "flowscope.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "flowscope.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: call with (dict "root" $ "component" "collector"). */}}
{{- define "flowscope.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flowscope.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The image reference. */}}
{{- define "flowscope.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
The NATS URL: the bundled NATS chart's client Service (its fullname rule: the release
name when it already contains "nats", else "<release>-nats"), or nats.externalUrl.
*/}}
{{- define "flowscope.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- $svc := ternary .Release.Name (printf "%s-nats" .Release.Name) (contains "nats" .Release.Name) }}
{{- printf "nats://%s.%s.svc:4222" $svc .Release.Namespace }}
{{- else }}
{{- required "nats.externalUrl is required when nats.enabled is false" .Values.nats.externalUrl }}
{{- end }}
{{- end }}

{{/*
FLOWSCOPE_* variables every component gets: NATS (credentials only from Secrets), the
JetStream stream limits, logging, and the HTTP endpoint on the given port. Call with
(dict "root" $ "port" <metrics port>).

The stream limits must be identical in every component: each one creates or updates
all of flowscope's streams at start-up from its own settings, so a limit given to one
component only would be reverted by the next start of another.
*/}}
{{- define "flowscope.commonEnv" -}}
- name: FLOWSCOPE_NATS_URL
  value: {{ include "flowscope.natsUrl" .root | quote }}
- name: FLOWSCOPE_LOG_FORMAT
  value: {{ .root.Values.log.format | quote }}
- name: FLOWSCOPE_LOG_LEVEL
  value: {{ .root.Values.log.level | quote }}
{{- /* No host: every address of both families (IPv4 alone on a kernel without IPv6),
so probes and scrapes reach the pod IP in IPv4-only, IPv6-only and dual-stack clusters. */}}
- name: FLOWSCOPE_HTTP_ADDRESS
  value: {{ printf ":%v" .port | quote }}
{{- include "flowscope.checkBundledNats" .root }}
{{- with .root.Values.nats.stream }}
{{- if ne (toString .maxAge) "" }}
- name: FLOWSCOPE_NATS_STREAM_MAX_AGE
  value: {{ include "flowscope.number" .maxAge }}
{{- end }}
{{- if ne (toString .maxBytes) "" }}
- name: FLOWSCOPE_NATS_STREAM_MAX_BYTES
  value: {{ include "flowscope.number" .maxBytes }}
{{- end }}
{{- if ne (toString .replicas) "" }}
- name: FLOWSCOPE_NATS_STREAM_REPLICAS
  value: {{ include "flowscope.number" .replicas }}
{{- end }}
{{- end }}
{{- if .root.Values.nats.auth.existingSecret }}
{{- if .root.Values.nats.auth.userKey }}
- name: FLOWSCOPE_NATS_USER
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.nats.auth.existingSecret | quote }}
      key: {{ .root.Values.nats.auth.userKey | quote }}
{{- end }}
{{- if .root.Values.nats.auth.passwordKey }}
- name: FLOWSCOPE_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.nats.auth.existingSecret | quote }}
      key: {{ .root.Values.nats.auth.passwordKey | quote }}
{{- end }}
{{- if .root.Values.nats.auth.tokenKey }}
- name: FLOWSCOPE_NATS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.nats.auth.existingSecret | quote }}
      key: {{ .root.Values.nats.auth.tokenKey | quote }}
{{- end }}
{{- /* The services refuse both (one of them would be ignored). */}}
{{- if and .root.Values.nats.auth.credsKey .root.Values.nats.auth.nkeySeedKey }}
{{- fail "nats.auth: set either credsKey or nkeySeedKey, not both" }}
{{- end }}
{{- if .root.Values.nats.auth.credsKey }}
- name: FLOWSCOPE_NATS_CREDS_FILE
  value: /etc/flowscope/nats-auth/{{ .root.Values.nats.auth.credsKey }}
{{- end }}
{{- if .root.Values.nats.auth.nkeySeedKey }}
- name: FLOWSCOPE_NATS_NKEY_SEED_FILE
  value: /etc/flowscope/nats-auth/{{ .root.Values.nats.auth.nkeySeedKey }}
{{- end }}
{{- end }}
{{- if .root.Values.nats.tls.existingSecret }}
- name: FLOWSCOPE_NATS_TLS_CA
  value: /etc/flowscope/nats-tls/ca.crt
{{- if .root.Values.nats.tls.clientCertificate }}
- name: FLOWSCOPE_NATS_TLS_CERT
  value: /etc/flowscope/nats-tls/tls.crt
- name: FLOWSCOPE_NATS_TLS_KEY
  value: /etc/flowscope/nats-tls/tls.key
{{- end }}
{{- else if .root.Values.nats.tls.clientCertificate }}
{{- fail "nats.tls.clientCertificate needs nats.tls.existingSecret (the Secret holding ca.crt, tls.crt and tls.key)" }}
{{- end }}
{{- end }}

{{/*
Fails the install when the bundled NATS could not hold flowscope's streams, which every
component makes at start-up and stops without: JetStream off, or nats.stream.replicas
above the servers it runs (each replica of a stream lives on a server of its own; the
subchart runs one unless nats.config.cluster.enabled, then nats.config.cluster.replicas).
An external NATS is the operator's to size.
*/}}
{{- define "flowscope.checkBundledNats" -}}
{{- if .Values.nats.enabled }}
{{- if not .Values.nats.config.jetstream.enabled }}
{{- fail "nats.config.jetstream.enabled is false: flowscope's streams need JetStream (or set nats.enabled=false and nats.externalUrl)" }}
{{- end }}
{{- /* Without "_": Go reads "0_3" as no number (0) where the service reads 3. */}}
{{- $replicas := float64 (replace "_" "" (trim (toString .Values.nats.stream.replicas))) }}
{{- with .Values.nats.config.cluster }}
{{- if and (gt $replicas 1.0) (not .enabled) }}
{{- fail (printf "nats.stream.replicas %v needs nats.config.cluster.enabled: the bundled NATS is otherwise one server, which refuses a stream with more than one replica" $replicas) }}
{{- end }}
{{- if and .enabled (gt $replicas (float64 .replicas)) }}
{{- fail (printf "nats.stream.replicas %v exceeds nats.config.cluster.replicas %v: each replica of a stream needs a NATS server of its own" $replicas .replicas) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A setting as a quoted env value. Helm reads numbers in values as float64, which print
as 1.073741824e+09 (or 1e+06): whole ones are written through int64, others as they are.
Strings and booleans pass unchanged (the service rejects a malformed one at start-up,
naming it).
*/}}
{{- define "flowscope.number" -}}
{{- if or (kindIs "string" .) (kindIs "bool" .) }}{{ . | quote }}
{{- else if eq (float64 (int64 .)) (float64 .) }}{{ int64 . | quote }}
{{- else }}{{ . | toString | quote }}
{{- end }}
{{- end }}

{{/* Volume mounts for NATS credentials and TLS files (pairs with flowscope.natsVolumes). */}}
{{- define "flowscope.natsVolumeMounts" -}}
{{- if and .Values.nats.auth.existingSecret (or .Values.nats.auth.credsKey .Values.nats.auth.nkeySeedKey) }}
- name: nats-auth
  mountPath: /etc/flowscope/nats-auth
  readOnly: true
{{- end }}
{{- if .Values.nats.tls.existingSecret }}
- name: nats-tls
  mountPath: /etc/flowscope/nats-tls
  readOnly: true
{{- end }}
{{- end }}

{{/* Volumes for NATS credentials and TLS files. */}}
{{- define "flowscope.natsVolumes" -}}
{{- with .Values.nats.auth }}
{{- if and .existingSecret (or .credsKey .nkeySeedKey) }}
- name: nats-auth
  secret:
    secretName: {{ .existingSecret | quote }}
    items:
      {{- range $key := list .credsKey .nkeySeedKey }}
      {{- if $key }}
      - key: {{ $key | quote }}
        path: {{ $key | quote }}
      {{- end }}
      {{- end }}
{{- end }}
{{- end }}
{{- if .Values.nats.tls.existingSecret }}
- name: nats-tls
  secret:
    secretName: {{ .Values.nats.tls.existingSecret | quote }}
{{- end }}
{{- end }}

{{/*
The key of exporter.elasticsearch.auth.existingSecret that the exporter reads as a file
(passwordFileKey or apiKeyFileKey: the exporter's template refuses both), or nothing.
*/}}
{{- define "flowscope.elasticsearchAuthFile" -}}
{{- with .Values.exporter.elasticsearch.auth }}
{{- if .existingSecret }}{{ .passwordFileKey | default .apiKeyFileKey }}{{ end }}
{{- end }}
{{- end }}

{{/* Extra FLOWSCOPE_* variables from a component's extraEnv map. */}}
{{- define "flowscope.extraEnv" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ include "flowscope.number" $value }}
{{- end }}
{{- end }}

{{/* Probes on a component's HTTP endpoint. */}}
{{- define "flowscope.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 10
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: 5
{{- end }}

{{/*
The collector's AppArmor profile (collector.appArmor) as securityContext.appArmorProfile
(Kubernetes 1.30 and later), or nothing when collector.appArmor.annotation asks for the
annotation instead (flowscope.collectorAppArmorAnnotation). An empty profile sets
nothing: the runtime's default profile where AppArmor is enabled, none elsewhere (the
kubelet refuses a pod that names any profile but Unconfined on a node without AppArmor).
*/}}
{{- define "flowscope.collectorAppArmorProfile" -}}
{{- with .Values.collector.appArmor }}
{{- if and .profile (not (has .profile (list "RuntimeDefault" "Unconfined" "Localhost"))) }}
{{- fail (printf "collector.appArmor.profile must be RuntimeDefault, Unconfined, Localhost or empty, not %q" .profile) }}
{{- end }}
{{- if and (eq .profile "Localhost") (not .localhostProfile) }}
{{- fail "collector.appArmor.profile Localhost needs collector.appArmor.localhostProfile (the name of a profile loaded on every node)" }}
{{- end }}
{{- if and .profile (not .annotation) }}
appArmorProfile:
  type: {{ .profile }}
  {{- if eq .profile "Localhost" }}
  localhostProfile: {{ .localhostProfile | quote }}
  {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The collector container's seccompProfile (values: collector.seccomp). */}}
{{- define "flowscope.collectorSeccompProfile" -}}
{{- with .Values.collector.seccomp }}
{{- if and .profile (not (has .profile (list "RuntimeDefault" "Unconfined" "Localhost"))) }}
{{- fail (printf "collector.seccomp.profile must be RuntimeDefault, Unconfined, Localhost or empty, not %q" .profile) }}
{{- end }}
{{- if and (eq .profile "Localhost") (not .localhostProfile) }}
{{- fail "collector.seccomp.profile Localhost needs collector.seccomp.localhostProfile (a profile's path under the kubelet's seccomp directory)" }}
{{- end }}
{{- if .profile }}
seccompProfile:
  type: {{ .profile }}
  {{- if eq .profile "Localhost" }}
  localhostProfile: {{ .localhostProfile | quote }}
  {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The same profile as the beta annotation's value, for clusters before 1.30. */}}
{{- define "flowscope.collectorAppArmorAnnotation" -}}
{{- with .Values.collector.appArmor }}
{{- if eq .profile "RuntimeDefault" }}runtime/default
{{- else if eq .profile "Unconfined" }}unconfined
{{- else }}localhost/{{ .localhostProfile }}
{{- end }}
{{- end }}
{{- end }}
