"""Push credentials for tests: a Google service-account key file as the Firebase console gives it."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

PROJECT = "retention-test"


@cache
def rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def service_account_file(tmp_path: Path, token_uri: str, **fields: Any) -> Path:
    """A Google service-account key file, as the Firebase console downloads it."""
    document = {"type": "service_account", "project_id": PROJECT, "private_key_id": "0123abcd",
                "private_key": rsa_pem(), "client_email": f"push@{PROJECT}.iam.gserviceaccount.com",
                "client_id": "1234567890", "token_uri": token_uri, **fields}
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps({k: v for k, v in document.items() if v is not None}))
    return path
