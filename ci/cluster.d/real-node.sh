# shellcheck shell=bash disable=SC2154 # (ci/cluster, which sources this file, sets the variables)
# Real node mode of ci/cluster (FACILITY_NODES=real): this machine is the one node. containerd
# and runc (Debian) run the pods, Debian's CNI plugins give them a bridge network, kubelet and
# kube-proxy come from the project's multi-call binary, and local-path-provisioner (ci/tools)
# serves the default StorageClass. Everything lives in the state dir, volumes included, so `down`
# removes it; the images the pods need come from ci/images (`ci/images load`).
#
# Sourced by ci/cluster, which provides: state, pki, log, die, start, wait_healthy, failed, cert,
# write_kubeconfig, node_name, advertise_ip, service_cidr and the ports.

pod_cidr=10.244.0.0/24
cluster_dns=10.96.0.10
containerd_socket() { echo "$state/containerd/containerd.sock"; }

real_node_packages() {
  local tool missing=()
  for tool in containerd runc iptables ipset /usr/lib/cni/bridge local-path-provisioner kube-router; do
    command -v "$tool" >/dev/null || [ -x "$tool" ] || missing+=("$tool")
  done
  [ ${#missing[@]} -eq 0 ] ||
    die "real nodes need ${missing[*]}: run ci/prereqs (Debian: containerd runc containernetworking-plugins iptables ipset) and ci/tools (local-path-provisioner, kube-router)"
}

# Made once, before the apiserver starts: the apiserver rereads its kubelet client certificate
# and takes a changed file for a rotation, closing every kubelet connection, the one being
# opened included (the first `kubectl logs` or `exec` after a rewrite failed: "use of closed
# network connection" in the apiserver, "TLS handshake error ... EOF" in the kubelet).
real_node_pki() {
  # The node's identity (the Node authorizer knows system:node:<name>), kube-proxy's, the
  # storage provisioner's (its RBAC: local-path.yaml), the policy agent's (kube-router.yaml),
  # and the apiserver's client certificate
  # for kubelets (logs, exec, port-forward).
  cert kubelet ca "/O=system:nodes/CN=system:node:$node_name" clientAuth,serverAuth \
    "IP:$advertise_ip,IP:127.0.0.1,DNS:$node_name"
  cert kube-proxy ca /CN=system:kube-proxy clientAuth
  cert local-path-provisioner ca /CN=facility:local-path-provisioner clientAuth
  cert kube-router ca /CN=facility:kube-router clientAuth
  cert apiserver-kubelet-client ca /O=system:masters/CN=kube-apiserver-kubelet-client clientAuth
}

# containerd's own configuration: its root, state, socket and runc root in the state dir, the
# locally built pause image, the CNI folders, cgroupfs (cgroup v1 here). Containers may not
# lower their OOM score below containerd's own: this machine refuses it ("failed to update
# /proc/self/oom_score_adj: Permission denied" from runc otherwise).
write_containerd_config() {
  local dir=$state/containerd
  mkdir -p "$dir" "$state/cni/net.d"
  cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$(containerd_socket)"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$state/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
      Root = "$dir/runc"
EOF
  # One bridge for the node's pods; the node's own address is the gateway.
  cat >"$state/cni/net.d/10-facility.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "facility", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_cidr"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$state/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}]}
EOF
}

write_kubelet_config() {
  cat >"$state/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
# Kubernetes 1.34 still runs on cgroup v1, which this machine has (1.35 refuses it by default).
failCgroupV1: false
containerRuntimeEndpoint: unix://$(containerd_socket)
clusterDomain: cluster.local
clusterDNS: [$cluster_dns]
failSwapOn: false
address: $advertise_ip
port: $kubelet_port
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz_port
readOnlyPort: 0
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
# A development machine's disk is often fuller than a node's: do not evict for it.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: /etc/resolv.conf
EOF
}

# The storage helper pods' image: the Debian base that ci/images makes with debootstrap for all
# its images (sh, mkdir, chmod, rm), imported as an image of its own: no image of ci/images is
# just that, and the smallest Debian one is over twice its size. Its rootfs tarball becomes the
# one layer of a docker-save archive, streamed to containerd without a copy.
load_helper_image() {
  local store=${XDG_CACHE_HOME:-$HOME/.cache}/facility/images base diff_id meta=$state/helper-image
  base=$(find "$store" -maxdepth 1 -name 'debian-*.tar' -printf '%T@ %f\n' 2>/dev/null |
    sort -n | tail -n 1 | cut -d' ' -f2)
  [ -n "$base" ] ||
    failed containerd "has no Debian base for the storage helper pods (make it: ci/images build pause coredns)"
  HELPER_IMAGE=localhost/facility/debian:${base#debian-}
  HELPER_IMAGE=${HELPER_IMAGE%.tar}
  mkdir -p "$meta"
  diff_id=$(sha256sum <"$store/$base" | cut -c1-64)
  printf '{"architecture":"%s","os":"linux","config":{"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}\n' \
    "$(dpkg --print-architecture)" "$diff_id" >"$meta/config.json"
  printf '[{"Config":"config.json","RepoTags":["%s"],"Layers":["%s"]}]\n' "$HELPER_IMAGE" "$base" >"$meta/manifest.json"
  tar -cf - -C "$meta" config.json manifest.json -C "$store" "$base" |
    ctr --address "$(containerd_socket)" --namespace k8s.io images import - >"$state/logs/helper-image.log" 2>&1 ||
    failed containerd "could not import $HELPER_IMAGE from $store/$base (log: $state/logs/helper-image.log)"
}

start_real_node() {
  write_containerd_config
  write_kubelet_config
  local name
  for name in kubelet kube-proxy; do write_kubeconfig "$state/$name.kubeconfig" "$name"; done
  start containerd containerd --config "$state/containerd/config.toml"
  wait_healthy containerd 30
  # The node's own images; the facility's are loaded by whoever installs it (ci/up, tests).
  "$root/ci/images" load "$(containerd_socket)" pause coredns ||
    failed containerd "could not be given the pause and coredns images (build them: ci/images build pause coredns)"
  load_helper_image
  start kubelet kubelet --config="$state/kubelet.yaml" --kubeconfig="$state/kubelet.kubeconfig" \
    --node-ip="$advertise_ip" --hostname-override="$node_name" --root-dir="$state/kubelet" \
    --cert-dir="$state/kubelet-pki"
  start kube-proxy kube-proxy --kubeconfig="$state/kube-proxy.kubeconfig" \
    --hostname-override="$node_name" --cluster-cidr="$pod_cidr" --proxy-mode=iptables \
    --conntrack-max-per-core=0 --bind-address=127.0.0.1 \
    --healthz-bind-address="127.0.0.1:$proxy_healthz_port" \
    --metrics-bind-address="127.0.0.1:$proxy_metrics_port"
  wait_healthy kubelet 60
  wait_healthy kube-proxy 60
}

# Cluster DNS, once the node is Ready.
start_cluster_dns() {
  sed "s|image: IMAGE|image: $COREDNS_IMAGE|" "$here/cluster.d/coredns.yaml" |
    kubectl --kubeconfig="$kubeconfig" apply -f - >/dev/null
  kubectl --kubeconfig="$kubeconfig" -n kube-system rollout status deployment/coredns --timeout=120s >/dev/null ||
    failed kubelet "did not run cluster DNS (CoreDNS) within 120s"
  log "cluster DNS (CoreDNS) ready at $cluster_dns"
}

# NetworkPolicy enforcement, once the node is Ready (the bridge alone lets every pod reach every
# other, whatever the policies say): kube-router's firewall on the host, iptables and ipset
# rules per policy. (kube-network-policies, the smaller choice, needs nft's queue expression,
# which this kernel lacks: CONFIG_NFT_QUEUE is not set.)
start_network_policies() {
  write_kubeconfig "$state/kube-router.kubeconfig" kube-router
  kubectl --kubeconfig="$kubeconfig" apply -f "$here/cluster.d/kube-router.yaml" >/dev/null
  start kube-router kube-router --kubeconfig="$state/kube-router.kubeconfig" \
    --run-firewall=true --run-router=false --run-service-proxy=false \
    --hostname-override="$node_name" --service-cluster-ip-range="$service_cidr" \
    --health-port="$policy_health_port" --metrics-port=0
  wait_healthy kube-router 60
  log "NetworkPolicies enforced (kube-router's firewall)"
}

# Storage, once the node is Ready: local-path-provisioner on the host (like the control plane)
# makes each volume a folder under the state dir, through a helper pod on the node. The helper
# runs as root with no capability but DAC_OVERRIDE (teardown removes what the pods' users wrote).
start_storage() {
  local dir=$state/local-path
  mkdir -p "$dir" "$state/volumes"
  printf '{"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": ["%s"]}]}\n' \
    "$state/volumes" >"$dir/config.json"
  cat >"$dir/helper-pod.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata: {name: helper-pod}
spec:
  priorityClassName: system-node-critical
  containers:
  - name: helper-pod
    image: $HELPER_IMAGE
    imagePullPolicy: Never
    securityContext:
      runAsUser: 0
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL], add: [DAC_OVERRIDE]}
      seccompProfile: {type: RuntimeDefault}
EOF
  write_kubeconfig "$state/local-path-provisioner.kubeconfig" local-path-provisioner
  kubectl --kubeconfig="$kubeconfig" apply -f "$here/cluster.d/local-path.yaml" >/dev/null
  # (It logs an error after each helper pod: it reads their logs with an in-cluster client.)
  start local-path-provisioner local-path-provisioner start --config="$dir/config.json" \
    --helper-pod-file="$dir/helper-pod.yaml" --helper-image="$HELPER_IMAGE" \
    --kubeconfig="$state/local-path-provisioner.kubeconfig" --namespace=local-path-storage \
    --service-account-name=local-path-helper
  wait_healthy local-path-provisioner 60
  log "default StorageClass 'local-path' (local-path-provisioner; volumes in $state/volumes)"
}

# Before the processes stop: pods go first (kubelet unmounts their volumes), then what the
# node left in the kernel: kube-proxy's rules, the bridge, leftover mounts under the state dir.
drain_real_node() {
  if alive kubelet && alive kube-apiserver; then
    # Controllers first, or they would replace the pods deleted next (CoreDNS's Deployment).
    kubectl --kubeconfig="$kubeconfig" delete deployments,statefulsets,daemonsets,replicasets,jobs,cronjobs \
      --all --all-namespaces --wait=true --timeout=60s >/dev/null 2>&1 || true
    kubectl --kubeconfig="$kubeconfig" delete pods --all --all-namespaces --wait=true --grace-period=10 \
      --timeout=60s >/dev/null 2>&1 || log "warning: not every pod went away before shutdown"
  fi
}

# kube-router's firewall: the jumps to its chains, its chains, its address sets (its own
# --cleanup-config leaves the top chains behind and then crashes in the service proxy's part).
# A later node's pods reuse the addresses they name. kube-proxy's chains are named otherwise.
clean_policy_rules() {
  local rule rules chain chains set
  rules=$(iptables-save -t filter | sed -n -E 's/^-A ((INPUT|FORWARD|OUTPUT) .*-j KUBE-ROUTER-.*)/-D \1/p')
  while read -r rule; do
    [ -z "$rule" ] || eval "iptables -t filter $rule" || true
  done <<<"$rules"
  chains=$(iptables-save -t filter | sed -n -E 's/^:((KUBE-ROUTER|KUBE-NWPLCY|KUBE-POD-FW)-[^ ]*) .*/\1/p')
  for chain in $chains; do iptables -t filter -F "$chain" || true; done
  for chain in $chains; do iptables -t filter -X "$chain" || true; done
  for set in $(ipset list -n 2>/dev/null | grep -E '^(KUBE-SRC|KUBE-DST|kube-router)' || true); do
    ipset destroy "$set" || true
  done
}

clean_real_node() {
  # containerd's shims outlive it: any left (a pod that was not drained) is stopped with its
  # containers.
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $(containerd_socket)" || true); do
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  done
  kube-proxy --cleanup >/dev/null 2>&1 || true
  clean_policy_rules
  ip link del cni0 2>/dev/null || true
  # Pod network namespaces that containerd could not remove (one real node per machine: the
  # cni- ones are this node's).
  local netns
  for netns in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do ip netns del "$netns" || true; done
  local mount
  { grep -o " $state/[^ ]*" /proc/mounts || true; } | sort -r | while read -r mount; do
    umount -l "$mount" 2>/dev/null || true
  done
}
