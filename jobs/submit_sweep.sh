#!/usr/bin/env bash
# Submit a sweep to a running Ray cluster (`ray start --head` on one machine, or any cluster).
#   jobs/submit_sweep.sh [SPACE.yaml] [more `mllm4wtal sweep` flags]
# RAY_ADDRESS        the cluster's dashboard (default http://127.0.0.1:8265)
# MLLM4WTAL_STORAGE  where experiments go: the job's working directory is temporary, so an
#                    absolute path every node sees, or a URI (default ~/mllm4wtal/sweeps)
# Token authentication (Ray 2.60 clusters started with RAY_AUTH_MODE=token, and local ones by
# default): `ray job submit` sends the token of RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
# ~/.ray/auth_token; `ray get-auth-token` on the head node prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
space="${1:-search_spaces/quickstart.yaml}"
[ $# -gt 0 ] && shift
storage="${MLLM4WTAL_STORAGE:-$HOME/mllm4wtal/sweeps}"
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" \
    --runtime-env jobs/runtime_env.yaml --working-dir . \
    -- mllm4wtal sweep "$space" --storage "$storage" "$@"
