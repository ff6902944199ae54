"""accounts.audit's small rules: which fields are secret, the caller's address behind proxies."""

import pytest

from accounts.audit import REDACTED, changes_between, client_ip, is_secret_field


@pytest.mark.parametrize("name", ["password", "password1", "token", "hashed_secret", "secret", "recovery_codes", "totp_secret"])
def test_secret_fields_are_redacted(name):
    assert is_secret_field(name)
    assert changes_between({name: "old"}, {name: "new"}) == {name: [REDACTED, REDACTED]}


@pytest.mark.parametrize("name", ["max_output_tokens", "tokens_per_minute", "name", "prefix", "api_key_env", "enabled"])
def test_ordinary_fields_keep_their_values(name):
    assert not is_secret_field(name)
    assert changes_between({name: 1}, {name: 2}) == {name: [1, 2]}


def test_unchanged_fields_are_left_out():
    assert changes_between({"a": 1, "b": "x"}, {"a": 1, "b": "y"}) == {"b": ["x", "y"]}


def test_the_address_is_the_connection_s_unless_proxies_are_trusted(settings):
    meta = {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 203.0.113.7"}
    settings.PARLEY_TRUSTED_PROXIES = 0
    assert client_ip(meta) == "10.0.0.2"  # a client's own X-Forwarded-For is not believed
    settings.PARLEY_TRUSTED_PROXIES = 1
    assert client_ip(meta) == "203.0.113.7"  # what our proxy saw, not what the client claimed before it
    settings.PARLEY_TRUSTED_PROXIES = 3
    assert client_ip(meta) == "10.0.0.2"  # fewer hops than proxies: the header is not trusted
    assert client_ip({"REMOTE_ADDR": "not an address"}) is None
