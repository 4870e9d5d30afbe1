"""Security settings reach every client configuration."""

from __future__ import annotations

import ssl

import pytest

from actors.gallery.server import make_client
from core.settings import Settings
from streams.app import faust_config
from streams.security import aiokafka_kwargs

SASL = {
    "kafka__security": {
        "protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "facestream",
        "sasl_password": "s3cret",
    }
}


def sasl_settings() -> Settings:
    return Settings(**{"kafka": {"security": SASL["kafka__security"]}})


def test_plaintext_is_the_embedded_default() -> None:
    assert aiokafka_kwargs(Settings().kafka.security) == {"security_protocol": "PLAINTEXT"}
    assert faust_config(Settings())["broker_credentials"] is None


def test_sasl_ssl_reaches_aiokafka_clients() -> None:
    kwargs = aiokafka_kwargs(sasl_settings().kafka.security)
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert (
        kwargs["sasl_mechanism"],
        kwargs["sasl_plain_username"],
        kwargs["sasl_plain_password"],
    ) == ("SCRAM-SHA-512", "facestream", "s3cret")
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)


def test_sasl_ssl_reaches_faust() -> None:
    creds = faust_config(sasl_settings())["broker_credentials"]
    assert (creds.username, creds.password, creds.mechanism.value) == (
        "facestream",
        "s3cret",
        "SCRAM-SHA-512",
    )
    assert isinstance(creds.ssl_context, ssl.SSLContext)


def test_sasl_without_credentials_is_refused() -> None:
    with pytest.raises(ValueError, match="sasl_username"):
        Settings(kafka={"security": {"protocol": "SASL_PLAINTEXT"}})


def test_password_is_masked_in_reprs_but_reaches_child_processes() -> None:
    settings = sasl_settings()
    assert "s3cret" not in repr(settings)
    assert settings.env()["FACESTREAM_KAFKA__SECURITY__SASL_PASSWORD"] == "s3cret"


def test_ssl_client_certificates_are_loaded() -> None:
    settings = Settings(kafka={"security": {"protocol": "SSL", "ssl_cafile": "/nonexistent"}})
    with pytest.raises(FileNotFoundError):
        aiokafka_kwargs(settings.kafka.security)


def test_qdrant_api_key_and_tls_reach_the_client() -> None:
    client = make_client("https://qdrant.example:6333", api_key="k3y")
    rest = client._client
    assert rest._api_key == "k3y" and rest._https is True


def test_metrics_endpoint_is_bound_to_localhost_by_default() -> None:
    assert Settings().metrics.host == "127.0.0.1"
