"""The hub's run-time secret values (hub_config.secret)."""

from __future__ import annotations

import string

from hub_config.secret import new_secret_data


def test_values_are_64_hex_characters() -> None:
    data = new_secret_data()
    assert set(data) == {"cookie-secret", "crypt-key", "proxy-token"}
    for value in data.values():
        assert len(value) == 64
        assert set(value) <= set(string.hexdigits)


def test_values_are_fresh_every_time() -> None:
    first, second = new_secret_data(), new_secret_data()
    assert first["cookie-secret"] != second["cookie-secret"]
    assert first["cookie-secret"] != first["proxy-token"]
