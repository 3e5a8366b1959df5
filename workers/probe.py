"""Readiness probe for container orchestrators: `python -m workers.probe` exits 0 when the local API's /readyz is 200.

/readyz needs a viewer token and a kubelet's httpGet probe cannot read a Secret, so the probe runs inside the API
container and mints a one-minute viewer token with the container's own LIFELINE_JWT_SECRET.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from api.auth import mint_token
from infra.settings import get_settings


def main() -> int:
    settings = get_settings()
    token = mint_token(settings.jwt_secret.get_secret_value(), subject="readiness-probe",
                       org=os.environ.get("LIFELINE_PROBE_ORG", "default"), roles=["viewer"], ttl_seconds=60,
                       issuer=settings.jwt_issuer)
    port = int(os.environ.get("LIFELINE_API_PORT", str(settings.api_port)))
    request = urllib.request.Request(f"http://127.0.0.1:{port}/readyz", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        sys.stderr.write(f"readyz: {exc.code} {exc.read().decode(errors='replace')[:200]}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"readyz: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
