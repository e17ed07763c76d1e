#!/usr/bin/env bash
# Offline install kit: on a machine with the package index, put every wheel ds_twophase needs
# beyond a named PyTorch environment (torch and torchvision, and whatever they depend on, are
# already on the node) into one folder, for a given CPython version and Linux platform.
#
# Usage (from the repository root):
#   launch/offline_kit.sh DIR [--python 3.12] [--platform manylinux_2_28_x86_64]
#                             [--torch 2.11.0] [--torchvision 0.26.0] [--extras tensorboard]
#                             [--constraints constraints.txt]
# Defaults: this interpreter's Python version, manylinux_2_28_x86_64 (glibc 2.28 or newer; older
# manylinux tags are accepted too), and the torch/torchvision versions installed here. Name the
# node's versions (python -c 'import torch, torchvision; print(torch.__version__,
# torchvision.__version__)' there) so that the kit resolves against them.
# On the node, with DIR copied there:
#   pip install --no-index --find-links DIR ds-twophase      (or "ds-twophase[tensorboard]")
# DeepSpeed is published as a source archive: it is built here into a pure-Python wheel (its ops
# are compiled on first use on the node: g++ and ninja, as on any machine).
set -euo pipefail

kit=${1:?usage: launch/offline_kit.sh DIR [--python X.Y] [--platform TAG] [--torch V] [--torchvision V] [--extras E] [--constraints FILE]}
shift
python_version=$(python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
platform=manylinux_2_28_x86_64
torch_version=$(python -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
torchvision_version=$(python -c 'import torchvision; print(torchvision.__version__.split("+")[0])' 2>/dev/null || true)
extras=""
constraints=()
while [ $# -gt 0 ]; do
  case $1 in
    --python) python_version=$2 ;;
    --platform) platform=$2 ;;
    --torch) torch_version=$2 ;;
    --torchvision) torchvision_version=$2 ;;
    --extras) extras=$2 ;;
    --constraints) constraints=(-c "$(realpath "$2")") ;;
    *) echo "offline_kit.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
if [ -z "$torch_version" ] || [ -z "$torchvision_version" ]; then
  echo "offline_kit.sh: name the node's versions with --torch and --torchvision" >&2
  exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$kit"
kit=$(realpath "$kit")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A manylinux_2_N tag also accepts wheels for older glibc; pip wants each tag named.
platforms=()
if [[ $platform =~ ^manylinux_2_([0-9]+)_(.+)$ ]]; then
  for ((glibc = BASH_REMATCH[1]; glibc >= 5; glibc--)); do
    platforms+=(--platform "manylinux_2_${glibc}_${BASH_REMATCH[2]}")
  done
  for legacy in manylinux2014 manylinux2010 manylinux1; do
    platforms+=(--platform "${legacy}_${BASH_REMATCH[2]}")
  done
else
  platforms+=(--platform "$platform")
fi
target=(--only-binary=:all: "${platforms[@]}" --python-version "$python_version" --implementation cp)

# 1. The wheels built here: the project, and DeepSpeed (a source archive on the index).
pip wheel --quiet --no-deps "${constraints[@]}" -w "$kit" "$repo"
deepspeed_req=$(python - "$repo/pyproject.toml" <<'EOF'
import re, sys
deps = re.search(r"dependencies = \[(.*?)\]", open(sys.argv[1]).read(), re.S).group(1)
print(next(d for d in re.findall(r'"([^"]+)"', deps) if d.startswith("deepspeed")))
EOF
)
pip wheel --quiet --no-deps "${constraints[@]}" -w "$kit" "$deepspeed_req"

# 2. Resolve everything for the target against the node's torch and torchvision.
project="ds-twophase${extras:+[$extras]}"
pip install --dry-run --quiet --ignore-installed --report "$work/report.json" --target "$work/t" \
  "${target[@]}" "${constraints[@]}" --find-links "$kit" \
  "$project" "torch==$torch_version" "torchvision==$torchvision_version"

# 3. Download what the node lacks: all but torch, torchvision and their own dependencies.
python - "$work/report.json" "$kit" >"$work/wanted.txt" <<'EOF'
import json, re, sys
from pathlib import Path

report, kit = json.load(open(sys.argv[1])), Path(sys.argv[2])
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
items = {norm(i["metadata"]["name"]): i for i in report["install"]}
on_node, todo = set(), ["torch", "torchvision"]
while todo:  # the closure of torch and torchvision among the resolved packages
    name = todo.pop()
    if name in on_node or name not in items:
        continue
    on_node.add(name)
    for req in items[name]["metadata"].get("requires_dist", []):
        if "extra ==" not in req:
            todo.append(norm(re.match(r"[A-Za-z0-9_.-]+", req).group(0)))
built = {norm(p.name.split("-")[0]) for p in kit.glob("*.whl")}
for name, item in sorted(items.items()):
    if name not in on_node and name not in built:
        print(f"{item['metadata']['name']}=={item['metadata']['version']}")
EOF
if [ -s "$work/wanted.txt" ]; then
  pip download --quiet --no-deps "${target[@]}" -d "$kit" -r "$work/wanted.txt"
fi
count=$(find "$kit" -name '*.whl' | wc -l)
echo "offline kit: $count wheels, $(du -sh "$kit" | cut -f1) in $kit (CPython $python_version, $platform, beyond torch $torch_version + torchvision $torchvision_version)"
echo "on the node: pip install --no-index --find-links $kit \"$project\""
