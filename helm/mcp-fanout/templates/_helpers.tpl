{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "mcp-fanout.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. Truncated to 52 characters so that suffixed names ("-admin",
"-migrate", "-test") stay within 63.
*/}}
{{- define "mcp-fanout.fullname" -}}
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

{{- define "mcp-fanout.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/). */}}
{{- define "mcp-fanout.labels" -}}
helm.sh/chart: {{ include "mcp-fanout.chart" . }}
{{ include "mcp-fanout.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mcp-fanout
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "mcp-fanout.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mcp-fanout.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The server pods (what the Services, PDB, NetworkPolicy and spread constraints select). */}}
{{- define "mcp-fanout.serverSelectorLabels" -}}
{{ include "mcp-fanout.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "mcp-fanout.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mcp-fanout.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the pods read credentials from: existingSecret, or the chart's own. */}}
{{- define "mcp-fanout.secretName" -}}
{{- default (include "mcp-fanout.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "mcp-fanout.adminServiceName" -}}
{{- printf "%s-admin" (include "mcp-fanout.fullname" .) }}
{{- end }}

{{- define "mcp-fanout.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "mcp-fanout.preStopSeconds" -}}
{{- if .Values.preStop.enabled }}{{ .Values.preStop.sleepSeconds | int }}{{ else }}0{{ end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the preStop sleep runs inside the grace period, before SIGTERM;
after SIGTERM the process exits within config.shutdownGraceSecs (which covers the drain).
*/}}
{{- define "mcp-fanout.terminationGracePeriodSeconds" -}}
{{- $min := add (include "mcp-fanout.preStopSeconds" . | int) (.Values.config.shutdownGraceSecs | int) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $min (.Values.terminationGraceMarginSeconds | int) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds | int }}
{{- end }}
{{- end }}

{{/* FANOUT_MIGRATE: skip when the hook migrates, auto otherwise, unless set. */}}
{{- define "mcp-fanout.migrateMode" -}}
{{- if .Values.config.migrate }}
{{- .Values.config.migrate }}
{{- else if and .Values.migration.enabled (not .Values.database.inMemory) }}
{{- "skip" }}
{{- else }}
{{- "auto" }}
{{- end }}
{{- end }}

{{- define "mcp-fanout.dbCaMounted" -}}
{{- if and (not .Values.database.inMemory) (or .Values.database.caCert .Values.database.caConfigMap) }}true{{ end }}
{{- end }}

{{- define "mcp-fanout.upstreamCaMounted" -}}
{{- if and .Values.proxy.upstream (or .Values.proxy.caCert .Values.proxy.caConfigMap) }}true{{ end }}
{{- end }}

{{- define "mcp-fanout.upstreamCaFile" -}}
{{- if include "mcp-fanout.upstreamCaMounted" . }}
{{- printf "/etc/mcp-fanout/upstream-ca/%s" (ternary "upstream-ca.crt" .Values.proxy.caConfigMapKey (not (empty .Values.proxy.caCert))) }}
{{- else }}
{{- .Values.proxy.upstreamCaFile }}
{{- end }}
{{- end }}

{{- define "mcp-fanout.dbCaFile" -}}
{{- if include "mcp-fanout.dbCaMounted" . }}
{{- printf "/etc/mcp-fanout/db-ca/%s" (ternary "ca.crt" .Values.database.caConfigMapKey (not (empty .Values.database.caCert))) }}
{{- else }}
{{- .Values.config.dbCaFile }}
{{- end }}
{{- end }}

{{- define "mcp-fanout.jwtKeyMounted" -}}
{{- if .Values.subscriberAuth.jwt.publicKey }}true{{ end }}
{{- end }}

{{/* Whether the chart's Secret carries a LISTEN URL / JWT secret (or existingSecret may). */}}
{{- define "mcp-fanout.hasListenUrl" -}}
{{- if and (not .Values.database.inMemory) (or .Values.existingSecret .Values.database.listenUrl) }}true{{ end }}
{{- end }}
{{- define "mcp-fanout.hasJwtSecret" -}}
{{- if or .Values.existingSecret .Values.subscriberAuth.jwt.secret }}true{{ end }}
{{- end }}

{{/*
Checks no schema can express. Rendered (empty) at the top of the Deployment so that every
install, upgrade, lint and template fails early with a sentence saying what to change.
*/}}
{{- define "mcp-fanout.validate" -}}
{{- $v := .Values }}
{{- if $v.database.inMemory }}
  {{- if or $v.database.url $v.existingSecret }}
    {{- fail "mcp-fanout: database.inMemory=true cannot be combined with database.url or existingSecret" }}
  {{- end }}
  {{- if or (gt ($v.replicaCount | int) 1) $v.autoscaling.enabled }}
    {{- fail "mcp-fanout: database.inMemory=true runs one replica with its own log: set replicaCount=1 and autoscaling.enabled=false (or configure database.url / existingSecret)" }}
  {{- end }}
  {{- if $v.migration.enabled }}
    {{- fail "mcp-fanout: database.inMemory=true has nothing to migrate: set migration.enabled=false" }}
  {{- end }}
{{- else if not (or $v.database.url $v.existingSecret) }}
  {{- fail "mcp-fanout: set database.url (postgres://user:pass@host:5432/db?sslmode=require) or existingSecret (a Secret with DATABASE_URL and FANOUT_ADMIN_TOKENS), or database.inMemory=true with replicaCount=1 and migration.enabled=false for a throwaway single replica" }}
{{- end }}
{{- if and $v.existingSecret (or $v.database.url $v.database.listenUrl $v.database.migrationUrl $v.adminAuth.token $v.adminAuth.extraTokens $v.subscriberAuth.jwt.secret) }}
  {{- fail "mcp-fanout: with existingSecret, put the database URLs, admin tokens and JWT secret in that Secret, not in database.url / listenUrl / migrationUrl / adminAuth / subscriberAuth.jwt.secret" }}
{{- end }}
{{- if and $v.database.caCert $v.database.caConfigMap }}
  {{- fail "mcp-fanout: set database.caCert or database.caConfigMap, not both" }}
{{- end }}
{{- if and (include "mcp-fanout.dbCaMounted" .) $v.config.dbCaFile }}
  {{- fail "mcp-fanout: config.dbCaFile is set by database.caCert / database.caConfigMap; leave it empty" }}
{{- end }}
{{- if and (include "mcp-fanout.upstreamCaMounted" .) $v.proxy.upstreamCaFile }}
  {{- fail "mcp-fanout: proxy.upstreamCaFile is set by proxy.caCert / proxy.caConfigMap; leave it empty" }}
{{- end }}
{{- if and $v.proxy.caCert $v.proxy.caConfigMap }}
  {{- fail "mcp-fanout: give the upstream's CA as proxy.caCert or proxy.caConfigMap, not both" }}
{{- end }}
{{- if and $v.subscriberAuth.jwt.publicKey $v.subscriberAuth.jwt.publicKeyFile }}
  {{- fail "mcp-fanout: set subscriberAuth.jwt.publicKey or subscriberAuth.jwt.publicKeyFile, not both" }}
{{- end }}
{{- if eq $v.subscriberAuth.mode "jwt" }}
  {{- if not (or $v.subscriberAuth.jwt.secret $v.subscriberAuth.jwt.publicKey $v.subscriberAuth.jwt.publicKeyFile $v.subscriberAuth.jwt.jwks $v.existingSecret) }}
    {{- fail "mcp-fanout: subscriberAuth.mode=jwt needs subscriberAuth.jwt.secret, publicKey, publicKeyFile or jwks" }}
  {{- end }}
  {{- if and $v.subscriberAuth.jwt.audience $v.subscriberAuth.jwt.anyAudience }}
    {{- fail "mcp-fanout: set subscriberAuth.jwt.audience or subscriberAuth.jwt.anyAudience=true, not both" }}
  {{- end }}
  {{- if not (or $v.subscriberAuth.jwt.audience $v.subscriberAuth.jwt.anyAudience) }}
    {{- fail "mcp-fanout: subscriberAuth.mode=jwt needs subscriberAuth.jwt.audience (this service's identifier, e.g. its public MCP URL, so tokens made for other services of the same issuer are refused), or subscriberAuth.jwt.anyAudience=true to accept any" }}
  {{- end }}
{{- end }}
{{- if gt ($v.config.drainSecs | int) ($v.config.shutdownGraceSecs | int) }}
  {{- fail "mcp-fanout: config.drainSecs must not exceed config.shutdownGraceSecs (the drain happens inside the shutdown grace)" }}
{{- end }}
{{- if ge ($v.config.heartbeatSecs | int) ($v.config.replicaStaleSecs | int) }}
  {{- fail "mcp-fanout: config.heartbeatSecs must be less than config.replicaStaleSecs (live replicas would drop out of /admin/cluster between heartbeats)" }}
{{- end }}
{{- if eq ($v.containerPorts.http | int) ($v.containerPorts.admin | int) }}
  {{- fail "mcp-fanout: containerPorts.http and containerPorts.admin must differ (admin, probes and metrics get their own listener)" }}
{{- end }}
{{- $minGrace := add (include "mcp-fanout.preStopSeconds" . | int) ($v.config.shutdownGraceSecs | int) }}
{{- if lt (include "mcp-fanout.terminationGracePeriodSeconds" . | int) $minGrace }}
  {{- fail (printf "mcp-fanout: terminationGracePeriodSeconds must be at least preStop.sleepSeconds + config.shutdownGraceSecs = %d, or the kubelet kills replicas in the middle of their drain" $minGrace) }}
{{- end }}
{{- if and $v.preStop.enabled (not (semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version)) }}
  {{- fail (printf "mcp-fanout: preStop.enabled uses lifecycle.preStop.sleep, which needs Kubernetes >= 1.30 (this is %s); set preStop.enabled=false" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt ($v.autoscaling.minReplicas | int) ($v.autoscaling.maxReplicas | int)) }}
  {{- fail "mcp-fanout: autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and $v.httpRoute.enabled (not $v.httpRoute.parentRefs) }}
  {{- fail "mcp-fanout: httpRoute.enabled needs httpRoute.parentRefs (the Gateway to attach to)" }}
{{- end }}
{{- end }}

{{/* The server container's environment: every `mcp-fanout serve` setting. */}}
{{- define "mcp-fanout.env" -}}
{{- $v := .Values }}
{{- $secret := include "mcp-fanout.secretName" . }}
{{- $keys := $v.existingSecretKeys }}
{{- $c := $v.config -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: FANOUT_ADDR
  value: {{ printf "%s:%d" (include "mcp-fanout.hostPort" .) ($v.containerPorts.http | int) | quote }}
- name: FANOUT_ADMIN_ADDR
  value: {{ printf "%s:%d" (include "mcp-fanout.hostPort" .) ($v.containerPorts.admin | int) | quote }}
{{- if not $v.database.inMemory }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ ternary $keys.databaseUrl "DATABASE_URL" (not (empty $v.existingSecret)) }}
{{- end }}
{{- if include "mcp-fanout.hasListenUrl" . }}
- name: FANOUT_LISTEN_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ ternary $keys.listenDatabaseUrl "FANOUT_LISTEN_DATABASE_URL" (not (empty $v.existingSecret)) }}
      optional: {{ not (empty $v.existingSecret) }}
{{- end }}
- name: FANOUT_SCHEMA
  value: {{ $c.schema | quote }}
- name: FANOUT_MIGRATE
  value: {{ include "mcp-fanout.migrateMode" . | quote }}
- name: FANOUT_DB_TIMEOUT_MS
  value: {{ $c.dbTimeoutMs | int64 | quote }}
- name: FANOUT_DB_POOL_SIZE
  value: {{ $c.dbPoolSize | int64 | quote }}
{{- with include "mcp-fanout.dbCaFile" . }}
- name: FANOUT_DB_CA_FILE
  value: {{ . | quote }}
{{- end }}
- name: FANOUT_RETENTION_INTERVAL_SECS
  value: {{ $c.retentionIntervalSecs | int64 | quote }}
- name: FANOUT_RETENTION_SECS
  value: {{ $c.retentionSecs | int64 | quote }}
- name: FANOUT_RETENTION_MAX_EVENTS
  value: {{ $c.retentionMaxEvents | int64 | quote }}
- name: FANOUT_ADMIN_TOKENS
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ ternary $keys.adminTokens "FANOUT_ADMIN_TOKENS" (not (empty $v.existingSecret)) }}
{{- with $c.adminTokenFile }}
- name: FANOUT_ADMIN_TOKEN_FILE
  value: {{ . | quote }}
{{- end }}
- name: FANOUT_ADMIN_FAILED_ATTEMPTS
  value: {{ $v.adminAuth.failedAttempts | int64 | quote }}
- name: FANOUT_ADMIN_FAILED_ATTEMPTS_PER_MIN
  value: {{ $v.adminAuth.failedAttemptsPerMin | int64 | quote }}
- name: FANOUT_MEMORY_EVENTS
  value: {{ $c.memoryEvents | int64 | quote }}
- name: FANOUT_MEMORY_BYTES
  value: {{ $c.memoryBytes | int64 | quote }}
- name: FANOUT_WRITE_STALL_SECS
  value: {{ $c.writeStallSecs | int64 | quote }}
- name: FANOUT_MAX_LAG_BYTES
  value: {{ $c.maxLagBytes | int64 | quote }}
{{- if not (kindIs "invalid" $c.maxSubscribers) }}
- name: FANOUT_MAX_SUBSCRIBERS
  value: {{ $c.maxSubscribers | int64 | quote }}
{{- end }}
{{- if not (kindIs "invalid" $c.maxSubscribersPerClient) }}
- name: FANOUT_MAX_SUBSCRIBERS_PER_CLIENT
  value: {{ $c.maxSubscribersPerClient | int64 | quote }}
{{- end }}
- name: FANOUT_MAX_LAG_SECS
  value: {{ $c.maxLagSecs | int64 | quote }}
- name: FANOUT_DRAIN_SECS
  value: {{ $c.drainSecs | int64 | quote }}
- name: FANOUT_SHUTDOWN_GRACE_SECS
  value: {{ $c.shutdownGraceSecs | int64 | quote }}
- name: FANOUT_KEEPALIVE_SECS
  value: {{ $c.keepaliveSecs | int64 | quote }}
- name: FANOUT_RETRY_MS
  value: {{ $c.retryMs | int64 | quote }}
- name: FANOUT_MAX_STREAM_SECS
  value: {{ $c.maxStreamSecs | int64 | quote }}
- name: FANOUT_COALESCE_MS
  value: {{ $c.coalesceMs | int64 | quote }}
- name: FANOUT_MAX_PAYLOAD_BYTES
  value: {{ $c.maxPayloadBytes | int64 | quote }}
- name: FANOUT_MAX_BATCH
  value: {{ $c.maxBatch | int64 | quote }}
{{- if not (kindIs "invalid" $c.maxBodyBytes) }}
- name: FANOUT_MAX_BODY_BYTES
  value: {{ $c.maxBodyBytes | int64 | quote }}
{{- end }}
- name: FANOUT_MAX_REQUEST_BYTES
  value: {{ $c.maxRequestBytes | int64 | quote }}
- name: FANOUT_MAX_PROXY_REQUEST_BYTES
  value: {{ $c.maxProxyRequestBytes | int64 | quote }}
- name: FANOUT_FIRST_REQUEST_SECS
  value: {{ $c.firstRequestSecs | int64 | quote }}
- name: FANOUT_IDLE_SECS
  value: {{ $c.idleSecs | int64 | quote }}
- name: FANOUT_BODY_TIMEOUT_SECS
  value: {{ $c.bodyTimeoutSecs | int64 | quote }}
- name: FANOUT_MAX_SESSIONS
  value: {{ $c.maxSessions | int64 | quote }}
- name: FANOUT_SESSION_CLAIMS_PER_MIN
  value: {{ $c.sessionClaimsPerMin | int64 | quote }}
{{- if not (kindIs "invalid" $c.sessionWritesPerClientPerMin) }}
- name: FANOUT_SESSION_WRITES_PER_CLIENT_PER_MIN
  value: {{ $c.sessionWritesPerClientPerMin | int64 | quote }}
{{- end }}
- name: FANOUT_BODY_MEMORY_BYTES
  value: {{ $c.bodyMemoryBytes | int64 | quote }}
- name: FANOUT_HTTP2_MAX_STREAMS
  value: {{ $c.http2MaxStreams | int64 | quote }}
{{- if not (kindIs "invalid" $c.maxConnections) }}
- name: FANOUT_MAX_CONNECTIONS
  value: {{ $c.maxConnections | int64 | quote }}
{{- end }}
{{- if not (kindIs "invalid" $c.maxConnectionsPerClient) }}
- name: FANOUT_MAX_CONNECTIONS_PER_CLIENT
  value: {{ $c.maxConnectionsPerClient | int64 | quote }}
{{- end }}
{{- with $c.allowedOrigins }}
- name: FANOUT_ALLOWED_ORIGINS
  value: {{ join "," . | quote }}
{{- end }}
{{- with $c.allowedHosts }}
- name: FANOUT_ALLOWED_HOSTS
  value: {{ join "," . | quote }}
{{- end }}
{{- if not (kindIs "invalid" $c.trustedProxies) }}
- name: FANOUT_TRUSTED_PROXIES
  value: {{ if $c.trustedProxies }}{{ join "," $c.trustedProxies | quote }}{{ else }}"none"{{ end }}
{{- end }}
{{- if and $c.clientAddressHeader (ne $c.clientAddressHeader "x-forwarded-for") }}
- name: FANOUT_CLIENT_ADDRESS_HEADER
  value: {{ $c.clientAddressHeader | quote }}
{{- end }}
{{- $sa := $v.subscriberAuth }}
- name: FANOUT_SUBSCRIBER_AUTH
  value: {{ $sa.mode | quote }}
- name: FANOUT_TENANT_HEADER
  value: {{ $sa.tenantHeader | quote }}
{{- if include "mcp-fanout.hasJwtSecret" . }}
- name: FANOUT_JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ ternary $keys.jwtSecret "FANOUT_JWT_SECRET" (not (empty $v.existingSecret)) }}
      optional: {{ not (empty $v.existingSecret) }}
{{- end }}
{{- if include "mcp-fanout.jwtKeyMounted" . }}
- name: FANOUT_JWT_PUBLIC_KEY_FILE
  value: /etc/mcp-fanout/jwt/public.pem
{{- else if $sa.jwt.publicKeyFile }}
- name: FANOUT_JWT_PUBLIC_KEY_FILE
  value: {{ $sa.jwt.publicKeyFile | quote }}
{{- end }}
{{- with $sa.jwt.jwks }}
- name: FANOUT_JWT_JWKS
  value: {{ . | quote }}
{{- end }}
{{- with $sa.jwt.issuer }}
- name: FANOUT_JWT_ISSUER
  value: {{ . | quote }}
{{- end }}
{{- with $sa.jwt.audience }}
- name: FANOUT_JWT_AUDIENCE
  value: {{ . | quote }}
{{- end }}
{{- if $sa.jwt.anyAudience }}
- name: FANOUT_JWT_ANY_AUDIENCE
  value: "true"
{{- end }}
- name: FANOUT_JWT_TENANT_CLAIM
  value: {{ $sa.jwt.tenantClaim | quote }}
- name: FANOUT_JWT_LEEWAY_SECS
  value: {{ $sa.jwt.leewaySecs | int64 | quote }}
- name: FANOUT_JWKS_REFETCH_SECS
  value: {{ $sa.jwt.jwksRefetchSecs | int64 | quote }}
{{- with $v.proxy.upstream }}
- name: FANOUT_UPSTREAM
  value: {{ . | quote }}
{{- end }}
{{- with include "mcp-fanout.upstreamCaFile" . }}
- name: FANOUT_UPSTREAM_CA_FILE
  value: {{ . | quote }}
{{- end }}
- name: FANOUT_UPSTREAM_HTTP2
  value: {{ $v.proxy.http2 | quote }}
{{- if not (kindIs "invalid" $v.proxy.maxConnections) }}
- name: FANOUT_UPSTREAM_MAX_CONNECTIONS
  value: {{ $v.proxy.maxConnections | int64 | quote }}
{{- end }}
- name: FANOUT_CONNECTION_WORKERS
  value: {{ $v.proxy.connectionWorkers | int64 | quote }}
{{- if not (kindIs "invalid" $v.proxy.maxRequestsPerClient) }}
- name: FANOUT_MAX_PROXY_REQUESTS_PER_CLIENT
  value: {{ $v.proxy.maxRequestsPerClient | int64 | quote }}
{{- end }}
- name: FANOUT_MINT_SESSION_IDS
  value: {{ $v.proxy.mintSessionIds | quote }}
- name: FANOUT_ADVERTISE_LIST_CHANGED
  value: {{ $v.proxy.advertiseListChanged | quote }}
- name: FANOUT_BRIDGE_2026_CLIENTS
  value: {{ $v.proxy.bridge2026Clients | quote }}
- name: FANOUT_UPSTREAM_TIMEOUT_SECS
  value: {{ $v.proxy.timeoutSecs | int64 | quote }}
- name: FANOUT_UPSTREAM_REWRITE_MAX_BYTES
  value: {{ $v.proxy.rewriteMaxBytes | int64 | quote }}
- name: FANOUT_BRIDGE_MAX_SESSIONS
  value: {{ $v.proxy.bridgeMaxSessions | int64 | quote }}
- name: FANOUT_PROXY_FORWARDED_HEADERS
  value: {{ $v.proxy.forwardedHeaders | quote }}
- name: FANOUT_LOG_FORMAT
  value: {{ $c.logFormat | quote }}
- name: FANOUT_ADVERTISE_ADDR
  {{- if $c.advertiseAddr }}
  value: {{ $c.advertiseAddr | quote }}
  {{- else if contains ":" $v.bindAddress }}
  value: {{ printf "[$(POD_IP)]:%d" ($v.containerPorts.http | int) | quote }}
  {{- else }}
  value: {{ printf "$(POD_IP):%d" ($v.containerPorts.http | int) | quote }}
  {{- end }}
- name: FANOUT_REPLICA_STALE_SECS
  value: {{ $c.replicaStaleSecs | int64 | quote }}
- name: FANOUT_HEARTBEAT_SECS
  value: {{ $c.heartbeatSecs | int64 | quote }}
- name: RUST_LOG
  value: {{ $c.rustLog | quote }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* "0.0.0.0", or "[::]" for an IPv6 bind address. */}}
{{- define "mcp-fanout.hostPort" -}}
{{- if contains ":" .Values.bindAddress }}{{ printf "[%s]" .Values.bindAddress }}{{ else }}{{ .Values.bindAddress }}{{ end }}
{{- end }}
