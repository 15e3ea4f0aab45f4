"""Who is calling: the user of a JupyterHub token, as the hub itself says (GET /hub/api/user).

Any token may ask the hub who it belongs to, with the owner's name, groups and the token's
scopes (JupyterHub's "identify" scopes). Only a token that may access the service
(access:services!service=<its name>, which the user's own server token carries) is accepted: a
token that a user's server got for a visitor (an admin opening it, or shared access) names the
visitor, but must not reach the visitor's clusters and keys. Answers are kept for a few seconds: a
client polls the API, and the hub should not see every poll; a revoked token therefore works
for at most that long.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import aiohttp

from facility_operator.errors import ApiError

CACHE_SECONDS = 10.0
HUB_TIMEOUT = aiohttp.ClientTimeout(total=10)


@dataclass(frozen=True)
class User:
    name: str
    groups: frozenset[str]
    admin: bool = False  # a JupyterHub admin (the hub's model says so to any of their tokens)


def token_of(authorization: str | None) -> str:
    """The token of an `Authorization: token <t>` (or `Bearer <t>`) header."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() not in {"token", "bearer"} or not token.strip():
        raise ApiError(401, "send your JupyterHub token: Authorization: token <token>")
    return token.strip()


class HubAuth:
    """Resolves tokens through the hub's REST API at api_url (Settings.hub_api_url)."""

    def __init__(self, api_url: str, session: aiohttp.ClientSession, service: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.session = session
        self.service = service
        # Keyed by the token's hash: the process holds no usable tokens.
        self.cache: dict[str, tuple[float, User]] = {}

    @property
    def scope(self) -> str:
        return f"access:services!service={self.service}"

    async def user(self, authorization: str | None) -> User:
        token = token_of(authorization)
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self.cache.get(key)
        if cached and cached[0] > now:
            return cached[1]
        user = await self.ask_hub(token)
        self.cache = {k: v for k, v in self.cache.items() if v[0] > now}
        self.cache[key] = (now + CACHE_SECONDS, user)
        return user

    async def ask_hub(self, token: str) -> User:
        headers = {"Authorization": f"token {token}"}
        try:
            async with self.session.get(
                f"{self.api_url}/user", headers=headers, timeout=HUB_TIMEOUT
            ) as answer:
                if answer.status in {401, 403}:
                    raise ApiError(401, "the hub does not accept this token")
                answer.raise_for_status()
                model = await answer.json()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ApiError(503, f"cannot ask the hub who this token is ({error})") from error
        if model.get("kind") != "user" or not model.get("name"):
            raise ApiError(403, "only a user's token may hold Dask clusters")
        scopes = model.get("scopes") or []
        if "access:services" not in scopes and self.scope not in scopes:
            raise ApiError(
                403,
                f"this token lacks the scope {self.scope}: use your own server's token "
                "(JUPYTERHUB_API_TOKEN) or a token of yours with that scope",
            )
        return User(
            name=model["name"],
            groups=frozenset(model.get("groups") or ()),
            admin=model.get("admin") is True,
        )
