#!/usr/bin/env bash
# Submit a sweep to a running Ray cluster (README: "On a cluster: `ray job submit`").
#   jobs/submit_sweep.sh [SPACE.yaml] [more `mllm4wtal sweep` flags]
# RAY_API_SERVER_ADDRESS  the cluster's dashboard (else RAY_ADDRESS, as `ray job submit` reads
#                         them; default http://127.0.0.1:8265)
# MLLM4WTAL_STORAGE       where experiments go: the job's working directory is temporary, so
#                         an absolute path every node sees, or a URI (default ~/mllm4wtal/sweeps)
# Token authentication: the cluster says whether it wants a token; this client's token is the
# one of RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (`ray get-auth-token` on the
# head prints the cluster's). A missing or wrong one is refused here, in one line.
set -euo pipefail
cd "$(dirname "$0")/.."
space="${1:-search_spaces/quickstart.yaml}"
[ $# -gt 0 ] && shift
address="${RAY_API_SERVER_ADDRESS:-${RAY_ADDRESS:-http://127.0.0.1:8265}}"
storage="${MLLM4WTAL_STORAGE:-$HOME/mllm4wtal/sweeps}"
# line 1: the job's runtime env (jobs/runtime_env.yaml + this checkout's git commit and dirty
# flag, since the job's copy has no .git); line 2: the cluster's authentication mode
checked="$(python jobs/submit_check.py "$address" jobs/runtime_env.yaml)"
runtime_env="${checked%%$'\n'*}"
if [ "${checked##*$'\n'}" = token ]; then
    export RAY_AUTH_MODE=token  # Ray's client sends the token only then
fi
exec ray job submit --address "$address" --runtime-env-json "$runtime_env" --working-dir . \
    -- mllm4wtal sweep "$space" --storage "$storage" "$@"
