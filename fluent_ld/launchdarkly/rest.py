"""The REST API reads behind ``fluent-ld verify`` and ``verify_on_start``: the environment, and the
project's metrics (every page). What they mean is :mod:`fluent_ld.launchdarkly.verification`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import aiohttp

from fluent_ld.launchdarkly.preset import EventRule
from fluent_ld.launchdarkly.verification import READ_PERMISSION, Report, assess, cannot_tell, wrong_keys

__all__ = ["MAX_PAGES", "verify"]

# Pages of metrics read at most (20 a page): a project with more is unusual, and the check must end.
MAX_PAGES = 500


class _CannotTell(Exception):
    pass


class _NotFound(Exception):
    pass


async def _get(session: aiohttp.ClientSession, url: str, token: str) -> Any:
    async with session.get(url, headers={"Authorization": token, "Accept": "application/json"}, allow_redirects=False) as response:
        if response.status == 404:
            raise _NotFound
        if response.status in (401, 403):
            raise _CannotTell(
                f"the REST API answered {response.status}: the token cannot read this project's metrics. Event imports may still work "
                f"(they need importEventData); {READ_PERMISSION}. Set api_token to such a token"
            )
        if response.status != 200:
            text = (await response.text(errors="replace"))[:200]
            raise _CannotTell(f"the REST API answered {response.status} to {url}: {text}")
        return await response.json(content_type=None)


async def verify(
    base: str, token: str, project: str, environment: str, events: Iterable[EventRule], timeout: float = 15.0, user_agent: str | None = None
) -> Report:
    """Check ``events`` (the mapped ones) against ``project``'s metrics and that ``environment``
    exists. Never raises for what the network or the API does: that is a CANNOT_TELL report."""
    rules = list(events)
    target = f"project {project}, environment {environment} at {base}"
    now = time.time()
    p, e = quote(project, safe=""), quote(environment, safe="")
    headers = {"User-Agent": user_agent} if user_agent else {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), headers=headers) as session:
            try:
                await _get(session, f"{base}/api/v2/projects/{p}/environments/{e}", token)
            except _NotFound:
                try:
                    found = await _get(session, f"{base}/api/v2/projects/{p}", token)
                except _NotFound:
                    return wrong_keys(project, environment, False, (), target, now)
                items = ((found or {}).get("environments") or {}).get("items") or []
                return wrong_keys(project, environment, True, [str(i.get("key")) for i in items if isinstance(i, dict)], target, now)
            metrics: list[dict[str, Any]] = []
            url: str | None = f"{base}/api/v2/metrics/{p}?limit=20"
            for _ in range(MAX_PAGES):
                if url is None:
                    break
                page = await _get(session, url, token)
                items = page.get("items") if isinstance(page, dict) else None
                if not isinstance(items, list):
                    raise _CannotTell(f"the REST API's metric list has no items: {str(page)[:200]}")
                metrics.extend(m for m in items if isinstance(m, dict))
                nxt = ((page.get("_links") or {}).get("next") or {}).get("href")
                url = urljoin(base + "/", nxt) if nxt else None
                if url is not None and urlsplit(url)[:2] != urlsplit(base)[:2]:  # the token goes with it
                    raise _CannotTell(f"the REST API's next page is on another host ({url}); not followed")
            else:
                raise _CannotTell(f"more than {MAX_PAGES} pages of metrics")
    except _CannotTell as exc:
        return cannot_tell(str(exc), target, now)
    except _NotFound:
        return cannot_tell(f"the REST API answered 404 listing the metrics of project {project!r}", target, now)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return cannot_tell(f"cannot reach the REST API at {base}: {exc or type(exc).__name__}", target, now)
    except (ValueError, TypeError, AttributeError) as exc:  # JSON of another shape than the API's
        return cannot_tell(f"the REST API at {base} answered something else than expected: {exc!r}", target, now)
    return assess(rules, metrics, target, now)
