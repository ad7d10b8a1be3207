"""What jobs/submit_sweep.sh checks and computes before `ray job submit`.

    python jobs/submit_check.py DASHBOARD_ADDRESS RUNTIME_ENV.yaml

Prints two lines: the job's runtime environment as JSON (the YAML file, plus this
checkout's git commit and dirty flag in its env_vars: the job's copy of the code has no
.git), and the cluster's authentication mode (`token` or `disabled`). Refuses with one line
on stderr and exit status 2 when no Ray dashboard answers at the address, or when the cluster
wants a token and this client has none or a wrong one: Ray's client sends a token only with
RAY_AUTH_MODE=token, and then refuses with a long message, after uploading the code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from mllm4wtal.config import load_yaml
from mllm4wtal.errors import UserError
from mllm4wtal.ray_session import TOKEN_FIX
from mllm4wtal.sweep.mlflow_names import GIT_COMMIT_ENV, GIT_DIRTY_ENV, git_state

TIMEOUT_S = 10.0
PROG = "submit_sweep.sh"


class Refused(Exception):
    """One line for the user; the script exits 2."""


def dashboard(address: str) -> str:
    """``address`` as an http(s) URL without a trailing slash (no scheme: http, as Ray does)."""
    if address.startswith("ray://"):
        raise Refused(f"{address} is a Ray Client address; `ray job submit` needs the "
                      "cluster's dashboard: set RAY_API_SERVER_ADDRESS=http://HEAD:8265")
    return (address if "://" in address else f"http://{address}").rstrip("/")


def request(url: str, token: str | None = None) -> tuple[int, str]:
    """Status and body of a GET (or, with a token, of the dashboard's token check)."""
    req = urllib.request.Request(url, method="POST" if token else "GET")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def auth_mode(base: str) -> str:
    """The cluster's authentication mode, as its dashboard says (a public endpoint)."""
    try:
        status, body = request(f"{base}/api/authentication_mode")
        mode = json.loads(body)["authentication_mode"] if status == 200 else None
    except (OSError, ValueError, KeyError) as e:
        reason = getattr(e, "reason", None) or e
        raise Refused(f"no Ray dashboard answers at {base} ({reason}); start the head "
                      "(README: `ray start --head ...`) or set RAY_API_SERVER_ADDRESS to its "
                      "dashboard address (http://HEAD:8265)") from None
    if mode is None:
        raise Refused(f"{base} answered {status}, not as a Ray dashboard; "
                      "set RAY_API_SERVER_ADDRESS to the head's dashboard address "
                      "(http://HEAD:8265)")
    return str(mode)


def client_token() -> str | None:
    """The token Ray's client would send (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token), as `ray get-auth-token` reads it; None when there is none."""
    out = subprocess.run(["ray", "get-auth-token"], capture_output=True, text=True,
                         timeout=120, check=False)
    token = out.stdout.strip()
    return token if out.returncode == 0 and token else None


def check_token(base: str) -> None:
    """Refuse when the cluster would refuse this client's token."""
    token = client_token()
    if token is None:
        raise Refused(f"the Ray cluster at {base} uses token authentication and this client "
                      f"has no token: {TOKEN_FIX}")
    status, body = request(f"{base}/api/authenticate", token)
    if status != 200:
        raise Refused(f"the Ray cluster at {base} refused this client's token ({status}: "
                      f"{body.strip()[:120]}): {TOKEN_FIX}")


def runtime_env(path: Path) -> dict:
    """The YAML runtime env with this checkout's git commit and dirty flag added."""
    env = load_yaml(path.read_text(), str(path))
    commit, dirty = git_state(Path.cwd())
    env["env_vars"] = {**(env.get("env_vars") or {}), GIT_COMMIT_ENV: commit,
                       GIT_DIRTY_ENV: dirty}
    return env


def main(argv: list[str]) -> int:
    address, env_file = argv
    try:
        base = dashboard(address)
        mode = auth_mode(base)
        if mode == "token":
            check_token(base)
        env = runtime_env(Path(env_file))
    except (Refused, UserError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(env))
    print(mode)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
