"""Kafka security settings as each client library wants them."""

from __future__ import annotations

from ssl import SSLContext
from typing import Any

from aiokafka.helpers import create_ssl_context

from core.settings import KafkaSecurity


def ssl_context(sec: KafkaSecurity) -> SSLContext | None:
    if "SSL" not in sec.protocol:
        return None
    return create_ssl_context(
        cafile=str(sec.ssl_cafile) if sec.ssl_cafile else None,
        certfile=str(sec.ssl_certfile) if sec.ssl_certfile else None,
        keyfile=str(sec.ssl_keyfile) if sec.ssl_keyfile else None,
    )


def aiokafka_kwargs(sec: KafkaSecurity) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer / AIOKafkaConsumer / AIOKafkaAdminClient."""
    kwargs: dict[str, Any] = {"security_protocol": sec.protocol}
    if context := ssl_context(sec):
        kwargs["ssl_context"] = context
    if sec.protocol.startswith("SASL"):
        kwargs |= {
            "sasl_mechanism": sec.sasl_mechanism,
            "sasl_plain_username": sec.sasl_username,
            "sasl_plain_password": sec.sasl_password.get_secret_value(),
        }
    return kwargs


def faust_credentials(sec: KafkaSecurity) -> Any:
    """``broker_credentials`` for the Faust app (None for PLAINTEXT)."""
    import faust

    if sec.protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=sec.sasl_username,
            password=sec.sasl_password.get_secret_value(),
            mechanism=sec.sasl_mechanism,
            ssl_context=ssl_context(sec),
        )
    if sec.protocol == "SSL":
        return faust.SSLCredentials(ssl_context(sec))
    return None
