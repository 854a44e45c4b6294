"""Client for a Search-R1-style retrieval server (CalibAdv's HTTP retriever).

Request: ``POST url`` with the JSON body ``{"queries": [...], "topk": k, "return_scores": true}`` updated with the
extra ``payload`` fields (``calibadv_retriever_payload``; the CalibAdv rerank server needs
``{"topk_retrieval": 20, "topk_rerank": 3}``). Payload fields override the defaults.

Response: ``{"result": [[item, ...], ...]}``, one list per query. An item is ``{"document": doc, "score": s}``
(``return_scores``) or the ``doc`` itself; ``doc`` is a dict with ``contents`` = ``"title\\ntext"`` (and optionally
``id``; ``title``/``text`` keys are accepted too) or a plain ``contents`` string.

Failure: a connection error, a timeout, an HTTP status >= 400 or a body that is not JSON is retried
``max_retries`` times with exponential backoff (``backoff * 2**attempt`` seconds, capped at ``max_backoff``), then a
``RuntimeError`` naming the URL is raised. A JSON body of the wrong shape raises a ``RuntimeError`` naming the URL at
once (a server bug, not a transient failure). Failure never turns into empty results.

Decision: a server that returns more than ``top_k`` documents for a query is cut to the first ``top_k``.

Health check: :meth:`HTTPRetriever.check` sends one real query (``top_k`` 1) with the same retries and parses the
answer as training would. :class:`~trl_ext.trainers.calibadv.CalibAdvTrainer` calls it once per process at start
(``calibadv_retriever_check``, default on), so a server that is down or speaks another protocol stops the run before
the first model update, not at the model's first ``<search>`` hours in. A server that answers the health query with no
document (an empty or unloaded index) gets a warning: legal, but every observation would be empty.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from typing import Any

from trl_ext.retrieval.base import Document, check_top_k

__all__ = ["HTTPRetriever"]


class HTTPRetriever:
    """Batch retrieval from a Search-R1-style HTTP server.

    Args:
        url: the endpoint (``calibadv_retriever_url``), e.g. ``"http://127.0.0.1:8000/retrieve"``.
        timeout: seconds to wait for one response (``calibadv_retriever_timeout``, > 0; default 30).
        max_retries: retries after the first attempt (``calibadv_retriever_max_retries``, >= 0; default 3).
        payload: extra JSON fields merged into every request (``calibadv_retriever_payload``; default none).
        backoff: seconds before the first retry, doubled after each (>= 0; default 1).
        max_backoff: cap on one wait, in seconds (default 30).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        payload: Mapping[str, Any] | None = None,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError(f"calibadv_retriever_url must be a non-empty URL string, got {url!r}")
        if not (isinstance(timeout, int | float) and timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"calibadv_retriever_timeout must be a number of seconds > 0, got {timeout!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"calibadv_retriever_max_retries must be an integer >= 0, got {max_retries!r}")
        if not backoff >= 0 or not max_backoff >= 0:
            raise ValueError(f"backoff and max_backoff must be >= 0 seconds, got {backoff!r} and {max_backoff!r}")
        if payload is not None and not isinstance(payload, Mapping):
            raise ValueError(f"calibadv_retriever_payload must be a JSON object (dict), got {payload!r}")
        self.url = url
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.payload = dict(payload or {})
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._session = None

    def _post(self, body: dict[str, Any]) -> Any:
        import requests

        if self._session is None:
            self._session = requests.Session()
        last_error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))
            try:
                response = self._session.post(self.url, json=body, timeout=self.timeout)
                response.raise_for_status()
                return response.json()
            except (requests.RequestException, ValueError) as error:  # JSON decode errors are ValueErrors
                last_error = error
        raise RuntimeError(
            f"retrieval server {self.url} failed after {self.max_retries + 1} attempts "
            f"({self.max_retries} retries, timeout {self.timeout:g} s): {last_error!r}"
        ) from last_error

    def search(self, queries: list[str], top_k: int) -> list[list[Document]]:
        """POST the queries and parse the server's answer (see the module docstring)."""
        check_top_k(top_k)
        queries = [str(query) for query in queries]
        if not queries:
            return []
        body = {"queries": queries, "topk": top_k, "return_scores": True, **self.payload}
        data = self._post(body)
        result = data.get("result") if isinstance(data, Mapping) else None
        if not isinstance(result, list) or len(result) != len(queries):
            raise RuntimeError(
                f"retrieval server {self.url} returned a malformed response: expected {{'result': [...]}} with "
                f"{len(queries)} lists, got {str(data)[:200]!r}"
            )
        parsed = []
        for items in result:
            if not isinstance(items, list):
                raise RuntimeError(f"retrieval server {self.url} returned a non-list result entry: {items!r:.200}")
            docs = []
            for item in items[:top_k]:
                doc = item["document"] if isinstance(item, Mapping) and "document" in item else item
                try:
                    docs.append(Document.coerce(doc))
                except ValueError as error:
                    raise RuntimeError(
                        f"retrieval server {self.url} returned a malformed document: {error}"
                    ) from error
            parsed.append(docs)
        return parsed

    __call__ = search

    #: The query :meth:`check` sends.
    HEALTH_QUERY = "health check"

    def check(self) -> None:
        """One query through the full request/parse path; raises ``RuntimeError`` saying what was wrong.

        Raises:
            RuntimeError: naming the URL, the failure (unreachable, HTTP error, not JSON, wrong response shape) and
                how to skip the check (``calibadv_retriever_check=False``).
        """
        try:
            results = self.search([self.HEALTH_QUERY], 1)
        except RuntimeError as error:
            raise RuntimeError(
                f"calibadv_retriever_url={self.url!r}: the retrieval server failed the health query sent at trainer "
                f"start ({error}). Start the server, fix the URL or calibadv_retriever_payload, or set "
                "calibadv_retriever_check=false to skip this check"
            ) from error
        if not results[0]:
            # Legal (an empty list means "no match"), but a dense index answers every query with top_k documents:
            # a server with an empty or unloaded index would show the model empty observations at every search.
            warnings.warn(
                f"calibadv_retriever_url={self.url!r}: the retrieval server answered the health query "
                f"{self.HEALTH_QUERY!r} with no document. If it answers every query so, every <search> shows the "
                "model an empty <information> block; check the server's index and corpus. Training goes on; the "
                "metric calibadv/empty_observation_frac shows the share of searches answered with nothing",
                UserWarning,
                stacklevel=2,
            )
