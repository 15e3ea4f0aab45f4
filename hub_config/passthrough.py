"""`hub.config`: any JupyterHub configuration, as {ClassName: {trait: value}}, checked first.

A section that is not a configurable class, or a trait the class does not have, stops the hub
with an error naming it: traitlets alone would ignore it without a word.
"""

from __future__ import annotations

from typing import Any

from traitlets.config import Config, Configurable

from hub_config.facility import ConfigError


def configurable_classes() -> dict[str, type[Configurable]]:
    """Every configurable class of JupyterHub, KubeSpawner and OAuthenticator, by name."""
    # Imported for their side effect: defining the classes that the walk below finds.
    import jupyterhub.app  # noqa: F401
    import kubespawner  # noqa: F401
    import oauthenticator.cilogon
    import oauthenticator.generic  # noqa: F401

    found: dict[str, type[Configurable]] = {}
    pending: list[type[Configurable]] = [Configurable]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            if sub.__name__ not in found:
                found[sub.__name__] = sub
                pending.append(sub)
    return found


def apply(c: Config, sections: dict[str, Any]) -> None:
    classes = configurable_classes()
    for name, traits in sections.items():
        cls = classes.get(name)
        if cls is None:
            raise ConfigError(
                f"hub.config.{name}: {name} is not a JupyterHub configurable class (such as "
                "JupyterHub, KubeSpawner, GenericOAuthenticator); the facility's own options "
                "live at the top level of the values, not under hub.config"
            )
        known = cls.class_traits(config=True)
        for trait, value in traits.items():
            if trait not in known:
                raise ConfigError(
                    f"hub.config.{name}.{trait}: {name} has no configurable trait {trait!r}"
                )
            c[name][trait] = value
