{{/* Names and labels. */}}
{{- define "coinstream.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "coinstream.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: coinstream
{{- end -}}

{{/* Selector labels of one component: (list $ "wallet"). */}}
{{- define "coinstream.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "coinstream.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* One service's settings: serviceDefaults overridden by services.<name>.
     Use: $svc := include "coinstream.service" (list $ "wallet") | fromYaml */}}
{{- define "coinstream.service" -}}
{{- $root := index . 0 -}}
{{- $own := index $root.Values.services (index . 1) -}}
{{- toYaml (mustMergeOverwrite (deepCopy $root.Values.serviceDefaults) (deepCopy $own)) -}}
{{- end -}}

{{/* The most replicas of a service: autoscaling.maxReplicas, by default the partitions. */}}
{{- define "coinstream.maxReplicas" -}}
{{- $svc := index . 1 -}}
{{- $svc.autoscaling.maxReplicas | default (index . 0).Values.kafka.topicPartitions | int -}}
{{- end -}}

{{/* KEDA's names for the client's SASL mechanism. */}}
{{- define "coinstream.kedaSasl" -}}
{{- $m := .Values.kafka.saslMechanism -}}
{{- if eq $m "PLAIN" }}plaintext{{ else if eq $m "SCRAM-SHA-256" }}scram_sha256{{ else }}scram_sha512{{ end -}}
{{- end -}}

{{- define "coinstream.kafkaUsesSasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end -}}
{{- end -}}

{{- define "coinstream.kafkaUsesTls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end -}}
{{- end -}}

{{/* Where a pod finds its secrets: one read-only projected volume. */}}
{{- define "coinstream.secretsDir" -}}/var/run/secrets/coinstream{{- end -}}
{{/* The libpq password files, copied with mode 0600 by the init container. */}}
{{- define "coinstream.passfileDir" -}}/run/coinstream{{- end -}}

{{/* A database URL for a role: (list $ "wallet"). The password stays in the passfile. */}}
{{- define "coinstream.databaseUrl" -}}
{{- $root := index . 0 -}}
{{- $role := index . 1 -}}
{{- $db := $root.Values.database -}}
{{- $url := printf "postgresql://%s@%s:%d/%s?passfile=%s/%s.pgpass" $role $db.host (int $db.port) $db.name (include "coinstream.passfileDir" $root) $role -}}
{{- if $db.caSecret.name -}}
{{- $url = printf "%s&sslmode=verify-full&sslrootcert=%s/postgres/ca.crt" $url (include "coinstream.secretsDir" $root) -}}
{{- end -}}
{{- if $db.parameters }}{{ $url }}&{{ $db.parameters }}{{ else }}{{ $url }}{{ end -}}
{{- end -}}

{{/* The Kafka client settings every pod shares (not the principal). */}}
{{- define "coinstream.kafkaEnv" -}}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
- name: KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.saslMechanism | quote }}
{{- if and (include "coinstream.kafkaUsesTls" .) .Values.kafka.caSecret.name }}
- name: KAFKA_SSL_CAFILE
  value: {{ include "coinstream.secretsDir" . }}/kafka/ca.crt
{{- end }}
- name: TOPIC_PARTITIONS
  value: {{ .Values.kafka.topicPartitions | quote }}
- name: TOPIC_REPLICATION_FACTOR
  value: {{ .Values.kafka.topicReplicationFactor | quote }}
- name: CONSUMER_GROUP_PREFIX
  value: {{ .Values.kafka.consumerGroupPrefix | quote }}
{{- end -}}

{{/* The init container that copies libpq password files with mode 0600: asyncpg and
     libpq ignore a password file group or others may read, and Kubernetes makes Secret
     files group-readable (fsGroup). Argument: (list $ (list "payment" …)). */}}
{{- define "coinstream.passfileInit" -}}
{{- $root := index . 0 -}}
- name: passfiles
  image: {{ include "coinstream.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  command:
    - install
    - -m
    - "0600"
    - -t
    - {{ include "coinstream.passfileDir" $root }}
    {{- range index . 1 }}
    - {{ include "coinstream.secretsDir" $root }}/postgres/{{ . }}.pgpass
    {{- end }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {memory: 32Mi}
  volumeMounts:
    - name: secrets
      mountPath: {{ include "coinstream.secretsDir" $root }}
      readOnly: true
    - name: passfiles
      mountPath: {{ include "coinstream.passfileDir" $root }}
{{- end -}}

{{/* Volumes every pod has beside its projected secrets. */}}
{{- define "coinstream.scratchVolumes" -}}
- name: passfiles
  emptyDir: {medium: Memory, sizeLimit: 1Mi}
- name: tmp
  emptyDir: {sizeLimit: 64Mi}
{{- end -}}

{{/* NetworkPolicy egress: DNS, Kafka, PostgreSQL, optionally HTTPS, then extraEgress.
     Argument: (list $ <needs HTTPS>), or (list $ <needs HTTPS> <needs Kafka>) for a
     pod that never talks to Kafka (the reconciliation watcher). */}}
{{- define "coinstream.egress" -}}
{{- $root := index . 0 -}}
{{- $np := $root.Values.networkPolicy -}}
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
  {{- with $np.dns.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- if or (lt (len .) 3) (index . 2) }}
- ports:
    {{- range $np.kafka.ports }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
  {{- with $np.kafka.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
- ports:
    {{- range $np.postgres.ports }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
  {{- with $np.postgres.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- if index . 1 }}
- ports:
    - {port: 443, protocol: TCP}
  {{- with $np.https.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- with $np.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* How bearer tokens are verified (auth.*): the JWT_* variables of every HTTP side,
     the services' and the reconciliation watcher's. */}}
{{- define "coinstream.jwtEnv" -}}
{{- if .Values.auth.jwksUrl -}}
- name: JWT_JWKS_URL
  value: {{ .Values.auth.jwksUrl | quote }}
{{- else -}}
- name: JWT_PUBLIC_KEY_FILE
  value: {{ include "coinstream.secretsDir" . }}/jwt/public.pem
{{- end }}
{{- with .Values.auth.issuer }}
- name: JWT_ISSUER
  value: {{ . | quote }}
{{- end }}
{{- with .Values.auth.audience }}
- name: JWT_AUDIENCE
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* The public key that verifies bearer tokens, unless a JWKS does: one projected source. */}}
{{- define "coinstream.jwtSource" -}}
{{- if not .Values.auth.jwksUrl -}}
- secret:
    name: {{ .Values.auth.publicKeySecret.name }}
    items: [{key: {{ .Values.auth.publicKeySecret.key }}, path: jwt/public.pem}]
{{- end }}
{{- end -}}

{{/* The PostgreSQL CA, when database.caSecret is set: one projected source. */}}
{{- define "coinstream.databaseCaSource" -}}
{{- with .Values.database.caSecret.name }}
- secret:
    name: {{ . }}
    items: [{key: {{ $.Values.database.caSecret.key }}, path: postgres/ca.crt}]
{{- end }}
{{- end -}}
