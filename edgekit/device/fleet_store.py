"""The registry a device resolves against: the fleet service's HTTP API, as a ``ComponentStore``.

See docs/local-fleet.md (the HTTP API for devices).
"""

from __future__ import annotations

import copy
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

import semantic_version

from edgekit.device.download import ArtifactShare, open_url
from edgekit.device.errors import DeviceError
from edgekit.errors import RecipeError
from edgekit.greengrass.recipe import normalize_recipe
from edgekit.greengrass.resolve import ComponentStore
from edgekit.parsing import ParseError, loads_json

__all__ = ["THING_HEADER", "RegistryClient", "RegistryStore"]

THING_HEADER = "X-Edgekit-Thing"


class RegistryClient:
    """Blocking JSON calls to the registry, with the device's thing header."""

    def __init__(self, base_url: str, thing: str, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.thing = thing
        self.timeout_s = timeout_s

    @property
    def headers(self) -> dict[str, str]:
        """The headers of every request to the fleet service (API calls add ``Accept``)."""
        return {THING_HEADER: self.thing}

    def _get_json(self, path: str, *, missing_ok: bool = False) -> Any:
        url = f"{self.base_url}{path}"
        request = urllib.request.Request(url, headers={**self.headers, "Accept": "application/json"})
        try:
            with open_url(request, self.timeout_s) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 404 and missing_ok:
                return None
            if exc.code == 404:
                raise DeviceError(("CLOUD_API_ERROR", "RESOURCE_NOT_FOUND"), f"the registry has no {path} (404)") from exc
            code = "SERVER_ERROR" if exc.code >= 500 else "BAD_REQUEST"
            raise DeviceError(("CLOUD_API_ERROR", code), f"GET {url} answered HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DeviceError("NETWORK_ERROR", f"the registry at {self.base_url} can't be reached: {reason}") from exc
        try:
            return loads_json(body)
        except ParseError as exc:
            raise DeviceError(("CLOUD_API_ERROR", "BAD_REQUEST"), f"GET {url}: the answer {exc}") from None

    def versions(self, name: str) -> list[str]:
        """Published versions of ``name`` (``[]`` if the registry doesn't know it)."""
        data = self._get_json(f"/v1/components/{urllib.parse.quote(name, safe='')}", missing_ok=True)
        if data is None:
            return []
        versions = data.get("versions") if isinstance(data, Mapping) else None
        if not isinstance(versions, list):
            raise DeviceError(("CLOUD_API_ERROR", "BAD_REQUEST"), f"the registry's answer for '{name}' has no 'versions' list")
        return [str(v) for v in versions]

    def recipe(self, name: str, version: str) -> dict[str, Any]:
        """The normalized recipe of ``name`` ``version``."""
        q = urllib.parse.quote
        data = self._get_json(f"/v1/components/{q(name, safe='')}/{q(version, safe='')}/recipe")
        if not isinstance(data, Mapping):
            raise DeviceError("RECIPE_PARSE_ERROR", f"the recipe of {name} {version} is not a JSON object")
        recipe = normalize_recipe(dict(data))
        if recipe.get("ComponentName") != name or str(recipe.get("ComponentVersion")) != version:
            raise DeviceError(
                "RECIPE_METADATA_PARSE_ERROR",
                f"asked for {name} {version}, the registry sent {recipe.get('ComponentName')} {recipe.get('ComponentVersion')}",
            )
        return recipe


class RegistryStore(ComponentStore):
    """A :class:`ComponentStore` that asks the registry, once per name and per recipe.

    Its calls block: run the resolution in a worker thread (``asyncio.to_thread``). ``shared``: recipes other
    ``share`` (simulated devices of one process): the recipes other devices fetched
    (a published version never changes), and versions lists asked for at the same time asked once.
    """

    def __init__(
        self,
        client: RegistryClient,
        known: Iterable[Mapping[str, Any]] = (),
        *,
        share: ArtifactShare | None = None,
    ) -> None:
        super().__init__()
        self._client = client
        self._share = share
        self._versions: dict[str, list[semantic_version.Version]] = {}
        self._recipes: dict[tuple[str, str], Mapping[str, Any]] = {}
        for recipe in known:  # recipes already on the device: never fetched again
            self._recipes[(str(recipe.get("ComponentName")), str(recipe.get("ComponentVersion")))] = recipe

    def versions(self, name: str) -> list[semantic_version.Version]:
        if name not in self._versions:
            share, client = self._share, self._client
            listed = client.versions(name) if share is None else share.ask((client.base_url, name), lambda: client.versions(name))
            self._versions[name] = sorted(semantic_version.Version(v) for v in listed if semantic_version.validate(v))
        return list(self._versions[name])

    def recipe(self, name: str, version: str) -> Mapping[str, Any]:
        key = (name, version)
        if key not in self._recipes:
            shared_key = (self._client.base_url, name, version)
            shared = self._share.recipes if self._share is not None else None
            if shared is not None and shared_key in shared:
                self._recipes[key] = copy.deepcopy(shared[shared_key])  # this device's own to change
                return self._recipes[key]
            try:
                self._recipes[key] = self._client.recipe(name, version)
            except RecipeError as exc:
                raise DeviceError("RECIPE_PARSE_ERROR", f"the recipe of {name} {version} is invalid: {exc}") from exc
            if shared is not None:
                shared[shared_key] = copy.deepcopy(self._recipes[key])
        return self._recipes[key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.versions(name))
