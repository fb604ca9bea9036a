"""A local OIDC issuer that plays the Kubernetes API server for web-identity tests.

It serves `/.well-known/openid-configuration` and the JWKS at `/openid/v1/jwks` (the
kube-apiserver layout) on 127.0.0.1, and signs Kubernetes-style service-account tokens
(RS256, `kid`, `iss`, `sub: system:serviceaccount:<ns>:<name>`, `aud` as a list, `exp`,
`nbf`, `iat`, and the `kubernetes.io` claim). It also serves an OAuth2 token endpoint at
`/token` for the Google credential tests: it verifies a service-account JWT assertion
(RFC 7523) or accepts an STS token exchange of a token it signed (RFC 8693), and answers
with an access token, so google-auth's real refresh code runs against it.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from driver.devservers import LOOPBACK

AUDIENCE = "sts.amazonaws.com"


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


class OidcIssuer:
    """Start with `with OidcIssuer() as issuer:`; `issuer.token(...)` signs a token."""

    def __init__(self) -> None:
        self.key = new_rsa_key()
        self.kid = secrets.token_hex(8)
        # Keys whose public half the /token endpoint trusts for JWT-bearer assertions.
        self.trusted_assertion_keys: dict[str, Any] = {}
        self.access_tokens: list[str] = []  # every access token handed out by /token
        self.access_token_lifetime = 3600  # seconds; short values force google-auth refreshes
        self.token_requests = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def jwks(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()
        return {"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
                          "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}]}

    def token(self, namespace: str = "default", service_account: str = "reader",
              audience: str | list[str] = AUDIENCE, lifetime: float = 3600,
              key: rsa.RSAPrivateKey | None = None, issuer: str | None = None,
              not_before: float | None = None) -> str:
        """A signed Kubernetes-style service-account token (`key` forges one)."""
        now = int(time.time())
        claims = {
            "iss": issuer or self.url,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "aud": [audience] if isinstance(audience, str) else audience,
            "iat": now,
            "nbf": int(not_before) if not_before is not None else now,
            "exp": now + int(lifetime),
            "kubernetes.io": {"namespace": namespace,
                              "serviceaccount": {"name": service_account,
                                                 "uid": secrets.token_hex(8)}},
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, key or self.key, algorithm="RS256",
                          headers={"kid": self.kid})

    # -- OAuth2 token endpoint for google-auth ------------------------------------------

    def _issue_access_token(self) -> dict[str, Any]:
        access = "ya29.test-" + secrets.token_hex(16)
        self.access_tokens.append(access)
        return {"access_token": access, "token_type": "Bearer",
                "expires_in": self.access_token_lifetime,
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}

    def handle_token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.token_requests += 1
        grant = form.get("grant_type", "")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            assertion = form.get("assertion", "")
            try:
                kid = jwt.get_unverified_header(assertion).get("kid", "")
                public = self.trusted_assertion_keys[kid]
                # google-auth addresses assertions to Google's token URL whatever token_uri is.
                jwt.decode(assertion, public, algorithms=["RS256"],
                           audience=[f"{self.url}/token", "https://oauth2.googleapis.com/token"])
            except (KeyError, jwt.PyJWTError):
                return 400, {"error": "invalid_grant"}
            return 200, self._issue_access_token()
        if grant == "urn:ietf:params:oauth:grant-type:token-exchange":
            try:
                # Like Google STS: the pod token must be for the pool provider's audience.
                jwt.decode(form.get("subject_token", ""), self.key.public_key(),
                           algorithms=["RS256"], audience=form.get("audience", ""),
                           issuer=self.url)
            except jwt.PyJWTError:
                return 400, {"error": "invalid_grant"}
            return 200, self._issue_access_token()
        return 400, {"error": "unsupported_grant_type"}

    # -- server -------------------------------------------------------------------------

    def start(self) -> OidcIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path == "/.well-known/openid-configuration":
                    self._reply(200, {
                        "issuer": issuer.url, "jwks_uri": f"{issuer.url}/openid/v1/jwks",
                        "response_types_supported": ["id_token"],
                        "subject_types_supported": ["public"],
                        "id_token_signing_alg_values_supported": ["RS256"],
                    })
                elif self.path == "/openid/v1/jwks":
                    self._reply(200, issuer.jwks())
                else:
                    self._reply(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length).decode()
                if self.path != "/token":
                    self._reply(404, {"error": "not found"})
                    return
                form = dict(urllib.parse.parse_qsl(body))
                if not form and body.startswith("{"):
                    form = json.loads(body)
                self._reply(*issuer.handle_token(form))

            def log_message(self, *args: object) -> None:  # keep tokens out of test output
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="oidc-issuer")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> OidcIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def allow(actions: list[str], *buckets: str) -> dict[str, Any]:
    """An IAM policy statement allowing `actions` on `buckets` and their objects."""
    resources = []
    for bucket in buckets:
        resources += [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    return {"Effect": "Allow", "Action": actions, "Resource": resources}


def role_arn(name: str) -> str:
    return f"arn:aws:iam::000000000000:role/{name}"


def seaweed_iam_config(issuer_url: str, roles: list[dict[str, Any]],
                       token_duration: str = "1h") -> dict[str, Any]:
    """SeaweedFS `-s3.iam.config` JSON trusting `issuer_url` for audience sts.amazonaws.com.

    Each role: {"name", "sub" (the trusted service-account subject), "statements"}.
    """
    config: dict[str, Any] = {
        "sts": {"tokenDuration": token_duration, "maxSessionLength": "12h",
                "issuer": "seaweedfs-sts",
                "signingKey": base64.b64encode(secrets.token_bytes(32)).decode()},
        "providers": [{"name": "test-k8s", "type": "oidc", "enabled": True,
                       "config": {"issuer": issuer_url, "clientId": AUDIENCE}}],
        "policy": {"defaultEffect": "Deny"},
        "roles": [],
        "policies": [],
    }
    for role in roles:
        policy_name = f"{role['name']}-policy"
        config["policies"].append({"name": policy_name, "document": {
            "Version": "2012-10-17", "Statement": role["statements"]}})
        config["roles"].append({
            "roleName": role["name"],
            "roleArn": role_arn(role["name"]),
            "trustPolicy": {"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"Federated": "test-k8s"},
                "Action": ["sts:AssumeRoleWithWebIdentity"],
                "Condition": {"StringEquals": {"oidc:sub": role["sub"]}},
            }]},
            "attachedPolicies": [policy_name],
        })
    return config
