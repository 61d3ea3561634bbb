#!/usr/bin/env bash
# Generates the ConfigMap (cluster file, node files) and the Secret (node
# keys) for deploy/k8s/statefulset.yaml: keys from `bftnet init`, the
# nodes advertising their Services' fixed ClusterIPs (services.yaml) and
# listening on every interface of their pod.
#
#   deploy/k8s/generate.sh OUT_DIR [BFTNET]
#   kubectl apply -f deploy/k8s/services.yaml -f OUT_DIR/config.yaml \
#       -f OUT_DIR/keys.yaml -f deploy/k8s/statefulset.yaml
#
# OUT_DIR/keys.yaml holds secret keys: keep it out of version control.
set -euo pipefail
out="${1:?usage: generate.sh OUT_DIR [BFTNET]}"
bftnet="${2:-bftnet}"
hosts="${BFTD_K8S_HOSTS:-10.96.100.10,10.96.100.11,10.96.100.12,10.96.100.13}"
mkdir -p "$out"
gen="$out/generated"
"$bftnet" init --hosts "$hosts" --bind-all --out "$gen" >/dev/null
n=$(ls -d "$gen"/node* | wc -l)
files=(--from-file=cluster.toml="$gen/cluster.toml")
keys=()
for ((i = 0; i < n; i++)); do
    # In the pod: the key comes from the Secret at /keys, the store is the
    # claim at /data. The stores bftnet init created are not used (the
    # pod creates its own at first start).
    sed -e "s|^key_file = .*|key_file = \"/keys/node$i.key\"|" \
        -e 's|^data_dir = .*|data_dir = "/data"|' \
        "$gen/node$i/node.toml" > "$out/node$i.toml"
    files+=(--from-file=node$i.toml="$out/node$i.toml")
    keys+=(--from-file=node$i.key="$gen/node$i/node.key")
done
kubectl create configmap bftd-config "${files[@]}" --dry-run=client -o yaml > "$out/config.yaml"
kubectl create secret generic bftd-keys "${keys[@]}" --dry-run=client -o yaml > "$out/keys.yaml"
echo "wrote $out/config.yaml and $out/keys.yaml (secret); client files: $gen/cluster.toml, $gen/client.key"
