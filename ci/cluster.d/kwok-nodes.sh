# shellcheck shell=bash disable=SC2154 # (ci/cluster, which sources this file, sets the variables)
# Simulated node mode of ci/cluster (FACILITY_NODES=kwok, the default): kwok makes Node objects
# live (heartbeats, Ready) and plays the kubelet for their pods (Running, Ready, deleted), so the
# API server, scheduler and controllers all work for real while no container runs.
#
# Sourced by ci/cluster, which provides: state, kubeconfig, log, start, wait_healthy, failed,
# service_cidr, kwok_nodes and kwok_port.

kwok_pod_cidr=10.245.0.0/16 # fake pod IPs, kept apart from 10.244/16, the usual real pod network
# The Stages that make kwok's nodes and pods live. The kwok binary has no defaults (only
# kwokctl embeds them), so point it at the very files kwokctl embeds, from the kwok module
# that ci/tools built kwok from: node-initialize and lease heartbeats, pod ready/complete/delete.
gomodcache=${XDG_CACHE_HOME:-$HOME/.cache}/facility/go/mod
kwok_stages=$gomodcache/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage

# The simulated pods' and Services' addresses lead nowhere in kwok mode. A blackhole route
# makes anything sent to them fail at once on this machine, instead of leaving it through the
# default route. Shared by every kwok cluster here: removed with the last one.
guard_routes() {
  local cidr
  for cidr in "$kwok_pod_cidr" "$service_cidr"; do
    ip route replace blackhole "$cidr" 2>/dev/null || log "warning: cannot add a blackhole route for $cidr (not root?)"
  done
}

unguard_routes() {
  pgrep -f "kwok .*--cidr=$kwok_pod_cidr" >/dev/null && return 0 # another kwok cluster still runs
  local cidr
  for cidr in "$kwok_pod_cidr" "$service_cidr"; do
    ip route del blackhole "$cidr" 2>/dev/null || true
  done
}

# The default StorageClass of kwok mode: Kubernetes' own host-path provisioner (enabled in the
# controller manager), so that PVCs bind.
hostpath_storage_class() {
  kubectl --kubeconfig="$kubeconfig" apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF
  log "default StorageClass 'standard' (host-path) created"
}

start_kwok_nodes() {
  # kwok manages only nodes annotated as fake, so real kubelets can join the same cluster later.
  local stages
  stages=$(printf '%s,' "$kwok_stages"/node/fast/node-initialize.yaml \
    "$kwok_stages"/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    "$kwok_stages"/pod/fast/pod-{ready,complete,delete}.yaml)
  start kwok kwok --kubeconfig="$kubeconfig" --config="${stages%,}" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds=40 --cidr="$kwok_pod_cidr" --server-address="127.0.0.1:$kwok_port"
  wait_healthy kwok 60
  local i node
  for ((i = 0; i < kwok_nodes; i++)); do
    node=kwok-node-$i
    kubectl --kubeconfig="$kubeconfig" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $node
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: $node
    type: kwok
status:
  capacity: {cpu: "16", memory: 64Gi, ephemeral-storage: 200Gi, pods: "110"}
  allocatable: {cpu: "16", memory: 64Gi, ephemeral-storage: 200Gi, pods: "110"}
EOF
  done
  kubectl --kubeconfig="$kubeconfig" wait --for=condition=Ready node -l type=kwok --timeout=60s >/dev/null ||
    failed kwok "did not make the kwok nodes Ready within 60s"
  log "$kwok_nodes kwok node(s) Ready"
}
