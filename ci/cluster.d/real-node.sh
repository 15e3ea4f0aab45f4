# shellcheck shell=bash
# Real node mode of ci/cluster (FACILITY_NODES=real): this machine is the one node. containerd
# and runc (Debian) run the pods, Debian's CNI plugins give them a bridge network, kubelet and
# kube-proxy come from the project's multi-call binary. Everything lives in the state dir, so
# `down` removes it; the images the pods need come from ci/images (`ci/images load`).
#
# Sourced by ci/cluster, which provides: state, pki, log, die, start, wait_healthy, cert,
# write_kubeconfig, node_name, advertise_ip, service_cidr and the ports.

pod_cidr=10.244.0.0/24
cluster_dns=10.96.0.10
containerd_socket() { echo "$state/containerd/containerd.sock"; }

real_node_packages() {
  local tool missing=()
  for tool in containerd runc iptables /usr/lib/cni/bridge; do
    command -v "$tool" >/dev/null || [ -x "$tool" ] || missing+=("$tool")
  done
  [ ${#missing[@]} -eq 0 ] ||
    die "real nodes need ${missing[*]}: run ci/prereqs (Debian: containerd runc containernetworking-plugins iptables)"
}

real_node_pki() {
  # The node's identity (the Node authorizer knows system:node:<name>), kube-proxy's, and the
  # apiserver's client certificate for kubelets (logs, exec, port-forward).
  cert kubelet ca "/O=system:nodes/CN=system:node:$node_name" clientAuth,serverAuth \
    "IP:$advertise_ip,IP:127.0.0.1,DNS:$node_name"
  cert kube-proxy ca /CN=system:kube-proxy clientAuth
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

start_real_node() {
  real_node_pki
  write_containerd_config
  write_kubelet_config
  local name
  for name in kubelet kube-proxy; do write_kubeconfig "$state/$name.kubeconfig" "$name"; done
  start containerd containerd --config "$state/containerd/config.toml"
  wait_healthy containerd 30
  # The node's own images; the facility's are loaded by whoever installs it (ci/up, tests).
  "$root/ci/images" load "$(containerd_socket)" pause coredns ||
    failed containerd "could not be given the pause and coredns images (build them: ci/images build pause coredns)"
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

clean_real_node() {
  # containerd's shims outlive it: any left (a pod that was not drained) is stopped with its
  # containers.
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $(containerd_socket)" || true); do
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  done
  kube-proxy --cleanup >/dev/null 2>&1 || true
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
