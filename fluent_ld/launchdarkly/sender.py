"""The one place that talks to LaunchDarkly: POST a frozen batch to the metric event import API."""

from __future__ import annotations

import io
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from fluent_ld.encode import gzip_body
from fluent_ld.store import Batch

__all__ = ["KNOWN_HOSTS", "Answer", "Sender", "base_url"]

# The documented ingestion hosts: US (default), EU, US federal.
KNOWN_HOSTS = ("events.launchdarkly.com", "events.eu.launchdarkly.com", "events.launchdarkly.us")
# The User-Agent the import API's documentation asks for: LaunchDarkly attributes imports by it.
USER_AGENT = "MetricImport-Datafly-int/1.0"
STREAM_BODY = 256 * 1024  # bodies over this many bytes are written in pieces (see Sender.post)


def base_url(events_host: str) -> str:
    """``events.launchdarkly.com`` -> ``https://events.launchdarkly.com``; a full URL stays (tests
    and proxies: ``http://127.0.0.1:8080``)."""
    if events_host.startswith(("http://", "https://")):
        return events_host.rstrip("/")
    return f"https://{events_host}"


@dataclass(frozen=True, slots=True)
class Answer:
    """What LaunchDarkly said: a status (None when no answer came) and its text."""

    status: int | None
    text: str
    retry_after: str | None = None


class Sender:
    def __init__(
        self,
        events_host: str,
        project_key: str,
        environment_key: str,
        token: str,
        compress: bool,
        timeout: float,
        max_concurrent: int,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.url = f"{base_url(events_host)}/v2/event-data-import/{quote(project_key, safe='')}/{quote(environment_key, safe='')}"
        self.token = token
        self.compress = compress
        self.timeout = timeout
        self.max_concurrent = max_concurrent
        self.user_agent = user_agent
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=self.max_concurrent, keepalive_timeout=30),
            headers={"User-Agent": self.user_agent},
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def headers(self, batch: Batch) -> dict[str, str]:
        headers = {
            "Authorization": self.token,  # raw, no Bearer prefix, as the import API documents
            "Content-Type": "application/json",
            "X-LaunchDarkly-Event-Schema": "4",
            "User-Agent": self.user_agent,
            "X-LaunchDarkly-Payload-ID": batch.payload_id,
        }
        if self.compress:
            headers["Content-Encoding"] = "gzip"
        return headers

    async def post(self, batch: Batch) -> Answer:
        """Send a batch once. Network failures and timeouts are an :class:`Answer` with no status."""
        body = batch.body
        if self.compress:
            body = gzip_body(body)  # deterministic: the same bytes on every attempt
        try:
            # A redirect is an answer, not a delivery: following it would take a proxy's page (or
            # another environment's import path) answering 2xx for LaunchDarkly accepting the batch.
            # A large body goes out in 64 KiB pieces, the loop free between them: written whole,
            # asyncio copies what the socket does not take at once into its buffer and moves the
            # rest along after each send (tens of ms of the loop for a 9 MB body).
            data = aiohttp.BytesIOPayload(io.BytesIO(body)) if len(body) > STREAM_BODY else body
            assert self.session is not None, "post before start"
            async with self.session.post(self.url, data=data, headers=self.headers(batch), allow_redirects=False) as response:
                text = await response.text(errors="replace")
                return Answer(response.status, text[:2000], response.headers.get("Retry-After"))
        except TimeoutError:
            return Answer(None, f"no answer within {self.timeout:g}s")
        except aiohttp.ClientError as exc:
            return Answer(None, f"{type(exc).__name__}: {exc}")
