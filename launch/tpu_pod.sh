#!/usr/bin/env bash
# Shell front end for launch/tpu_vm.py (same subcommands and flags), e.g.
#   launch/tpu_pod.sh create --name=lsgm --zone=us-central2-b --accelerator-type=v4-32
#   launch/tpu_pod.sh setup  --name=lsgm --zone=us-central2-b --accelerator-type=v4-32
#   launch/tpu_pod.sh run    --name=lsgm --zone=us-central2-b --accelerator-type=v4-32 \
#     --config=configs/cifar10_vp.py --workdir=gs://bucket/runs/cifar10_vp --background=tmux
#   launch/tpu_pod.sh delete --name=lsgm --zone=us-central2-b
# Add --dry-run to print the gcloud commands instead of running them.
# PYTHON=python3.11 launch/tpu_pod.sh ... picks the local interpreter.
set -euo pipefail
here="${BASH_SOURCE[0]%/*}"
[[ "${here}" == "${BASH_SOURCE[0]}" ]] && here=.
exec "${PYTHON:-python3}" "${here}/tpu_vm.py" "$@"
