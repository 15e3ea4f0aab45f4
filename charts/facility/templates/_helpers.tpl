{{/* Names, labels and shared pod settings. Every template takes its names from here. */}}

{{- define "facility.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The base of every object name: <release>-<chart>, or the release alone if it holds the chart name. */}}
{{- define "facility.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "facility.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The name of one component's object: (dict "root" $ "component" "hub") -> <fullname>-hub. */}}
{{- define "facility.componentName" -}}
{{- printf "%s-%s" (include "facility.fullname" .root | trunc 50 | trimSuffix "-") .component -}}
{{- end -}}

{{- define "facility.selectorLabels" -}}
app.kubernetes.io/name: {{ include "facility.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
The labels that select one component's pods: (dict "root" $ "component" "hub"). The chart's own
pods carry its selector labels. The pods others make carry the release's instance label and
their component alone: the users' servers (KubeSpawner: hub_config.spawner) and the Dask
schedulers and workers (the operator: LABEL_INSTANCE and LABEL_COMPONENT of
facility_client.contract).
*/}}
{{- define "facility.podSelectorLabels" -}}
{{- if has .component (list "singleuser-server" "dask-scheduler" "dask-worker") -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- else -}}
{{ include "facility.selectorLabels" . }}
{{- end -}}
{{- end -}}

{{/* NetworkPolicy peers: the pods of each component, (dict "root" $ "components" (list "hub")). */}}
{{- define "facility.podPeers" -}}
{{- range $i, $component := .components }}
{{- if $i }}{{ "\n" }}{{ end -}}
- podSelector:
    matchLabels:
      {{- include "facility.podSelectorLabels" (dict "root" $.root "component" $component) | nindent 6 }}
{{- end }}
{{- end -}}

{{- define "facility.labels" -}}
{{ include "facility.selectorLabels" . }}
app.kubernetes.io/part-of: {{ include "facility.name" .root }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
A Service in front of one component's pods: (dict "root" $ "component" "edge" "service"
.Values.edge.service "ports" (list (dict "name" "websecure" "port" 443))). "service" gives the
type (default ClusterIP) and annotations, and for a NodePort or LoadBalancer Service its
externalTrafficPolicy, loadBalancerIP and loadBalancerSourceRanges. Each port targets the
container port of its name unless it gives targetPort, and may give a nodePort. "selects" names
the component whose pods it reaches, when that is not "component".
*/}}
{{- define "facility.service" -}}
{{- $svc := .service | default dict -}}
{{- $type := $svc.type | default "ClusterIP" -}}
{{- /* The site's own annotations win over the scrape annotations. */ -}}
{{- $annotations := merge (dict) ($svc.annotations | default dict) (include "facility.scrapeAnnotations" . | fromYaml) -}}
apiVersion: v1
kind: Service
metadata:
  {{- include "facility.metadata" . | nindent 2 }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $type }}
  {{- if ne $type "ClusterIP" }}
  externalTrafficPolicy: {{ $svc.externalTrafficPolicy }}
  {{- end }}
  {{- if eq $type "LoadBalancer" }}
  {{- with $svc.loadBalancerIP }}
  loadBalancerIP: {{ . }}
  {{- end }}
  {{- with $svc.loadBalancerSourceRanges }}
  loadBalancerSourceRanges:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- end }}
  selector:
    {{- include "facility.podSelectorLabels" (dict "root" .root "component" (.selects | default .component)) | nindent 4 }}
  ports:
    {{- range .ports }}
    - name: {{ .name }}
      port: {{ .port }}
      targetPort: {{ .targetPort | default .name }}
      {{- with .nodePort }}
      nodePort: {{ . }}
      {{- end }}
    {{- end }}
{{- end -}}

{{/* metadata: name, namespace and labels of one component's object. */}}
{{- define "facility.metadata" -}}
name: {{ include "facility.componentName" . }}
namespace: {{ .root.Release.Namespace }}
labels:
  {{- include "facility.labels" . | nindent 2 }}
{{- end -}}

{{/* An image reference from {repository, tag}: (dict "root" $ "image" .Values.hub.image). */}}
{{- define "facility.image" -}}
{{- $repository := .image.repository -}}
{{- with .root.Values.imageRegistry }}{{ $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}{{ end -}}
{{- printf "%s:%s" $repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/*
The pod-level part of a spec shared by every component: pull secrets, scheduling, and the
security context of Pod Security "restricted". (dict "root" $ "values" .Values.hub)
*/}}
{{- define "facility.podCommon" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
securityContext:
  runAsNonRoot: true
  runAsUser: 1000
  runAsGroup: 1000
  fsGroup: 1000
  seccompProfile:
    type: RuntimeDefault
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The container security context of Pod Security "restricted", shared by every container. */}}
{{- define "facility.containerSecurityContext" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: [ALL]
{{- end -}}

{{/* The Secret holding the hub's cookie secret and proxy token. */}}
{{- define "facility.hubSecretName" -}}
{{- .Values.hub.existingSecret | default (include "facility.componentName" (dict "root" . "component" "hub-secret")) -}}
{{- end -}}

{{/* The public URL of the hub (with the node port when the edge is a NodePort Service). */}}
{{- define "facility.publicUrl" -}}
{{- $svc := .Values.edge.service -}}
{{- $host := .Values.edge.host | default (eq $svc.type "NodePort" | ternary "<node address>" "<edge address>") -}}
{{- $port := toString $svc.port -}}
{{- if eq $svc.type "NodePort" }}{{ $port = $svc.nodePort | default "<node port>" | toString }}{{ end -}}
{{- printf "https://%s%s" $host (eq $port "443" | ternary "" (printf ":%s" $port)) -}}
{{- end -}}

{{/* NetworkPolicy egress rule: cluster DNS. */}}
{{- define "facility.egressDns" -}}
# Cluster DNS.
- ports:
    - {port: {{ .Values.networkPolicy.dnsPort }}, protocol: UDP}
    - {port: {{ .Values.networkPolicy.dnsPort }}, protocol: TCP}
{{- end -}}

{{/* NetworkPolicy egress rule: the Kubernetes API server. */}}
{{- define "facility.egressKubeApi" -}}
# The Kubernetes API server.
- ports:
    {{- range .Values.networkPolicy.kubeApiPorts }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
{{- end -}}

{{/* Egress to the Dask operator's user API (a hub service): from notebooks (FacilityCluster),
the proxy (/services/dask/) and the hub (its service check); only when operator.enabled. */}}
{{- define "facility.egressOperator" -}}
# The Dask operator's user API.
- to:
    {{- include "facility.podPeers" (dict "root" . "components" (list "operator")) | nindent 4 }}
  ports:
    - port: {{ .Values.operator.apiPort }}
{{- end -}}

{{/* Where the edge's files are (its ConfigMap and certificate), which its file provider reads. */}}
{{- define "facility.edgeFilesDir" -}}
/etc/facility/edge
{{- end -}}

{{/*
The Prometheus endpoint of each component that has one, as YAML, {component: {port, number,
path, service, tokenSecret}}: port is the container port's name (which the NetworkPolicy admits
and, on the Service, the monitor names), number its number (the scrape annotations give
numbers), path the HTTP path, service the component of the Service in front of it (without it,
a PodMonitor selects the component's pods), tokenSecret a Secret whose key "token" the scraper
presents. The one list that the NetworkPolicies (facility.ingressScraper), the Services
(facility.scrapeAnnotations) and templates/metrics/monitors.yaml read: a component that gains
metrics gets its entry here, and nothing else changes.
*/}}
{{- define "facility.metricsEndpoints" -}}
# JupyterHub's own metrics, on the hub's port, where JupyterHub asks for a token.
hub: {port: http, number: {{ .Values.hub.port }}, path: /hub/metrics, service: hub
  {{- with .Values.metrics.hub.tokenSecret }}, tokenSecret: {{ . | quote }}{{ end }}}
# Traefik's, on an entrypoint of their own, behind a Service of their own: the edge's own
# Service is the public entrypoint.
edge: {port: metrics, number: {{ .Values.edge.containerPorts.metrics }}, path: /metrics, service: edge-metrics}
{{- if .Values.operator.enabled }}
operator: {port: metrics, number: {{ .Values.operator.metricsPort }}, path: /metrics, service: operator}
# Dask's own metrics on the dashboard port (plain HTTP) of the scheduler pods the operator makes
# (facility_operator.resources), by its name there: no Service of the chart's is in front of them.
dask-scheduler: {port: dashboard, path: /metrics}
{{- end }}
# XCache: none yet; its exporter sidecar adds its entry here (the cache's NetworkPolicy already
# asks for it). The proxy: none (configurable-http-proxy's own metrics are not switched on).
{{- end -}}

{{/*
NetworkPolicy ingress rule: the site's Prometheus (metrics.scraper) on the component's metrics
port, and nothing else; (dict "root" $ "component" "hub"). Nothing when no scraper is named or
the component has no metrics endpoint (facility.metricsEndpoints).
*/}}
{{- define "facility.ingressScraper" -}}
{{- $scraper := .root.Values.metrics.scraper -}}
{{- $endpoint := get (include "facility.metricsEndpoints" .root | fromYaml) .component -}}
{{- if and $endpoint (or $scraper.namespaceSelector $scraper.podSelector) -}}
{{- /* One peer with both selectors: pods of those labels in namespaces of those labels. */ -}}
{{- $peer := dict -}}
{{- with $scraper.namespaceSelector }}{{ $_ := set $peer "namespaceSelector" . }}{{ end -}}
{{- with $scraper.podSelector }}{{ $_ := set $peer "podSelector" . }}{{ end -}}
# The site's Prometheus (metrics.scraper): the metrics port alone.
- from:
    {{- toYaml (list $peer) | nindent 4 }}
  ports:
    - port: {{ $endpoint.port }}
{{- end -}}
{{- end -}}

{{/*
The conventional scrape annotations (prometheus.io/scrape, port, path) of a Service, (dict "root"
$ "component" "hub"): for the Service in front of a metrics endpoint, unless the monitors
(metrics.serviceMonitors) are made instead, which a Prometheus that also honours the
annotations would duplicate.
*/}}
{{- define "facility.scrapeAnnotations" -}}
{{- if not .root.Values.metrics.serviceMonitors.enabled -}}
{{- range $component, $endpoint := include "facility.metricsEndpoints" .root | fromYaml -}}
{{- if eq ($endpoint.service | default "") $.component }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ $endpoint.number | quote }}
prometheus.io/path: {{ $endpoint.path }}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
NetworkPolicy ingress rule: the `helm test` Pods (component helm-test, templates/tests/) on the
one port their check of this component asks, (dict "root" $ "port" "http"); nothing when
tests.enabled is false. The edge admits anyone on its HTTPS port already, and the proxy is
reached through the edge: neither needs it.
*/}}
{{- define "facility.ingressTests" -}}
{{- if .root.Values.tests.enabled -}}
# `helm test`'s check of this component: that port alone.
- from:
    {{- include "facility.podPeers" (dict "root" .root "components" (list "helm-test")) | nindent 4 }}
  ports:
    - port: {{ .port }}
{{- end -}}
{{- end -}}

{{/*
One `helm test` Pod: (dict "root" $ "check" "hub" "image" .Values.hub.image "command" (list ...)),
with optional "volumes" and "volumeMounts" (lists). Named <fullname>-test-<check>, so that
`helm test`'s report of a failure names the component; labelled component helm-test, which its
NetworkPolicy (templates/tests/networkpolicy.yaml) selects. before-hook-creation: a rerun replaces
it, and until then the last result (its phase and its log line) stays to be read.
*/}}
{{- define "facility.testPod" -}}
{{- $root := .root -}}
{{- $tests := $root.Values.tests -}}
apiVersion: v1
kind: Pod
metadata:
  name: {{ include "facility.componentName" (dict "root" $root "component" (printf "test-%s" .check)) }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "facility.labels" (dict "root" $root "component" "helm-test") | nindent 4 }}
  annotations:
    helm.sh/hook: test
    helm.sh/hook-delete-policy: before-hook-creation
spec:
  restartPolicy: Never
  activeDeadlineSeconds: {{ $tests.deadlineSeconds }}
  # A client's view: no Kubernetes credential, no Service variables (names are resolved by DNS,
  # as the components' clients do).
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- include "facility.podCommon" (dict "root" $root "values" dict) | trim | nindent 2 }}
  containers:
    - name: {{ .check }}
      image: {{ include "facility.image" (dict "root" $root "image" .image) }}
      imagePullPolicy: {{ .image.pullPolicy }}
      command:
        {{- toYaml .command | nindent 8 }}
      {{- include "facility.containerSecurityContext" $root | nindent 6 }}
      resources:
        {{- toYaml $tests.resources | nindent 8 }}
      volumeMounts:
        - {name: tmp, mountPath: /tmp}
        {{- with .volumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir: {}
    {{- with .volumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/*
The HTTP check of the `helm test` Pods, a Python script (the hub's and the operator's images have
Python; the edge's has none): python3 -c <this> CHECK URL STATUS KEY NAME. It asks GET URL and
passes when the answer has that status and, unless KEY is empty, is a JSON object with KEY. NAME
is the Host header and, over HTTPS, the TLS server name (empty: URL's host). It prints one line,
"CHECK: ok: ..." or "CHECK: FAILED: ...", and exits 1 on a failure.
*/}}
{{- define "facility.testHttpScript" -}}
import http.client, json, socket, ssl, sys, time, urllib.parse
check, url, status, key, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
parts = urllib.parse.urlsplit(url)
name = name or parts.hostname
what = f"GET {url}" + (f" as {name}" if name != parts.hostname else "") + f" answers {status}"
what += f" with JSON {key!r}" if key else ""
def fail(why):
    print(f"{check}: FAILED: {what}: {why}", flush=True)
    sys.exit(1)
def connect():
    # The rules that admit this new pod reach the node's firewall a moment after it starts
    # (kube-router: refused until then): a failed connection is tried again for 30 s.
    deadline = time.monotonic() + 30
    while True:
        try:
            return socket.create_connection((parts.hostname, parts.port), timeout=10)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
try:
    conn = connect()
    tls = ""
    if parts.scheme == "https":
        # The handshake must complete, but the certificate is not verified: the edge's may be
        # Traefik's own or a development CA's, and the chart is given no CA of it.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = context.wrap_socket(conn, server_hostname=name)
        tls = f", over {conn.version()} (certificate not verified)"
    request = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
    conn.sendall(request.encode())
    answer = http.client.HTTPResponse(conn)
    answer.begin()
    text = answer.read().decode(errors="replace")
except Exception as error:
    fail(f"{type(error).__name__}: {error}")
shown = " ".join(text.split())[:200]
if answer.status != status:
    fail(f"got {answer.status} {shown}")
if key:
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict) or key not in body:
        fail(f"no {key!r} in {shown!r}")
    shown = f"{key}: {body[key]}"
print(f"{check}: ok: {what}{tls}" + (f"; {shown}" if shown else ""), flush=True)
{{- end -}}
