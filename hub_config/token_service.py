"""The hub's token service: a user's server asks it for the user's current access token.

The identity provider's tokens live in the hub's encrypted auth_state and expire within the
hour; a user's analysis (XRootD reads, HTCondor submissions) needs a valid one as a file. The
server calls GET /services/tokens/ with its own JupyterHub token. The service asks the hub who
that is, a token-authenticated request that makes the hub refresh the user's tokens when they
are older than auth.refreshAge, and then answers with that user's access token, read from
auth_state with the service's own (least) scopes. A caller only ever gets its own user's token,
and only with a token that may access this service (access:services!service=tokens, as the
user's own server token has): a token a server got for a visitor gets 403.

JupyterHub runs this module as a managed service (hub_config.services.token_service).
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote, urlparse

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.ioloop import IOLoop

# What the service's own role needs: read a user's name and auth_state, nothing else.
SCOPES = ["read:users:name", "admin:auth_state"]
NAME = "tokens"  # hub_config.services.TOKENS_SERVICE


def may_access(scopes: list[str], service: str) -> bool:
    """Whether a token's scopes (as the hub lists them) let it use the service `service`."""
    return "access:services" in scopes or f"access:services!service={service}" in scopes


class TokenHandler(web.RequestHandler):
    def initialize(self, api_url: str, api_token: str) -> None:
        self.api_url = api_url
        self.api_token = api_token

    async def hub(self, path: str, token: str) -> dict[str, Any]:
        response = await AsyncHTTPClient().fetch(
            f"{self.api_url}{path}", headers={"Authorization": f"token {token}"}
        )
        return json.loads(response.body)

    def fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.finish({"error": message})

    async def get(self) -> None:
        caller = self.request.headers.get("Authorization", "")
        scheme, _, token = caller.partition(" ")
        if scheme.lower() not in {"token", "bearer"} or not token:
            return self.fail(401, "send your JupyterHub token: Authorization: token <token>")
        try:
            # Token-authenticated: the hub refreshes this user's tokens here if they are stale.
            who = await self.hub("/user", token)
        except HTTPClientError as error:
            return self.fail(403, f"the hub does not accept this token ({error.code})")
        name = who.get("name")
        if who.get("kind") != "user" or not name:
            return self.fail(403, "only a user's token (or its server's) gets an access token")
        if not may_access(who.get("scopes") or [], NAME):
            return self.fail(
                403,
                f"this token lacks the scope access:services!service={NAME}: use your own "
                "server's token (JUPYTERHUB_API_TOKEN) or a token of yours with that scope",
            )
        user = await self.hub(f"/users/{quote(name)}", self.api_token)
        state = user.get("auth_state") or {}
        if not state.get("access_token"):
            return self.fail(404, f"no access token for {name}: log in again through the hub")
        token_type = state.get("token_response", {}).get("token_type", "Bearer")
        self.finish({"user": name, "access_token": state["access_token"], "token_type": token_type})


def main() -> None:
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/tokens/")
    bind = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    settings = {"api_url": os.environ["JUPYTERHUB_API_URL"],
                "api_token": os.environ["JUPYTERHUB_API_TOKEN"]}  # fmt: skip
    app = web.Application([(rf"{prefix}?", TokenHandler, settings)])
    # The URL names the hub's Service, which is no local address: listen on every interface
    # (the hub's NetworkPolicy admits only the proxy to this port).
    app.listen(bind.port or 80, "")
    IOLoop.current().start()


if __name__ == "__main__":
    main()
