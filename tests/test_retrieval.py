"""Retrievers (specs/calibadv.md §3.3, acceptance item 7): BM25 deterministic top-k with ties in corpus order; the
HTTP client against a local mock server (both response shapes, retries, the error naming the URL, timeouts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from trl_ext.retrieval import (
    BM25Retriever,
    Document,
    HTTPRetriever,
    Retriever,
    as_retriever,
    format_documents,
    load_corpus_jsonl,
)

CORPUS = [
    {"id": "d0", "title": "Apple", "text": "apple banana"},
    {"id": "d1", "title": "Cherry", "text": "cherry cherry"},
    {"id": "d2", "title": "Apple", "text": "apple banana"},  # identical to d0: a tie
    {"id": "d3", "title": "Kiwi", "text": "the kiwi is green"},
    {"id": "d4", "title": "Apple", "text": "apple banana"},  # identical to d0: a tie
    {"id": "d5", "title": "Apple pie", "text": "apple apple apple pie"},
]


# Documents ------------------------------------------------------------------------------------------------------------
def test_document_shapes_and_keys():
    assert Document.coerce({"id": 7, "contents": "Title\nline 1\nline 2"}) == Document("7", "Title", "line 1\nline 2")
    assert Document.coerce("Only a title") == Document(None, "Only a title", "")
    assert Document.coerce(("x", "T", "body")).key == "x"
    assert Document.coerce({"title": "T", "text": "body"}).key == "(Title: T) body"
    assert Document("1", "T", "body").contents == "T\nbody"
    with pytest.raises(ValueError, match="document"):
        Document.coerce(42)
    assert (
        format_documents([Document(None, "T1", "a"), {"contents": "T2\nb"}])
        == "Doc 1(Title: T1) a\nDoc 2(Title: T2) b\n"
    )


def test_load_corpus_jsonl_both_shapes(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"id": "a", "title": "T", "text": "x"}\n\n{"contents": "U\\ny"}\n')
    assert load_corpus_jsonl(path) == [Document("a", "T", "x"), Document(None, "U", "y")]
    path.write_text('{"id": "a", "title": "T", "text": "x"}\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 2"):
        load_corpus_jsonl(path)


# BM25 ----------------------------------------------------------------------------------------------------------------
def ids(results):
    return [[doc.id for doc in docs] for docs in results]


def test_bm25_top_k_ranks_and_breaks_ties_by_corpus_order():
    retriever = BM25Retriever(CORPUS)
    assert isinstance(retriever, Retriever)
    # d5 has the highest term frequency; d0, d2, d4 tie and come in corpus order.
    assert ids(retriever.search(["apple"], 3)) == [["d5", "d0", "d2"]]
    assert ids(retriever.search(["apple"], 10)) == [["d5", "d0", "d2", "d4"]]  # zero-score docs are not returned
    assert ids(retriever.search(["banana"], 2)) == [["d0", "d2"]]
    assert ids(retriever.search(["cherry", "Kiwi?", "", "the is", "durian"], 2)) == [["d1"], ["d3"], [], [], []]
    # The same corpus in another order: ties follow the new order.
    reordered = BM25Retriever([CORPUS[4], CORPUS[2], CORPUS[0]])
    assert ids(reordered.search(["banana"], 3)) == [["d4", "d2", "d0"]]


def test_bm25_is_deterministic_across_processes(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(doc) + "\n" for doc in CORPUS * 3))
    script = (
        "import sys; from trl_ext.retrieval import BM25Retriever\n"
        "r = BM25Retriever.from_jsonl(sys.argv[1])\n"
        "print([[d.id for d in docs] for docs in r.search(['apple banana', 'cherry pie', 'kiwi apple'], 5)])\n"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, OMP_NUM_THREADS="1")
        run = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env)
        assert run.returncode == 0, run.stderr
        outputs.add(run.stdout)
    local = BM25Retriever.from_jsonl(path)
    expected = str(ids(local.search(["apple banana", "cherry pie", "kiwi apple"], 5))) + "\n"
    assert outputs == {expected}


def test_bm25_errors(monkeypatch):
    retriever = BM25Retriever(CORPUS)
    with pytest.raises(ValueError, match="calibadv_topk"):
        retriever.search(["apple"], 0)
    with pytest.raises(ValueError, match="at least one document"):
        BM25Retriever([])
    assert BM25Retriever(["a", "of the"]).search(["a"], 2) == [[]]  # nothing indexable: no match, no crash
    monkeypatch.setitem(sys.modules, "bm25s", None)
    with pytest.raises(ImportError, match=r"pip install -e .\.\[retrieval\]."):
        BM25Retriever(CORPUS)


def test_as_retriever_wraps_callables_and_module_attributes():
    def fake(queries, top_k):
        return [[{"id": q, "contents": f"{q}\ntext"}] * (top_k + 1) for q in queries]

    wrapped = as_retriever(fake)
    assert wrapped.search(["a", "b"], 2) == [[Document("a", "a", "text")] * 2, [Document("b", "b", "text")] * 2]
    bm25 = BM25Retriever(CORPUS)
    assert as_retriever(bm25) is bm25
    from_string = as_retriever(f"{__name__}:fake_search")
    assert from_string.search(["q"], 1) == [[Document("q", "q", "")]]
    with pytest.raises(ValueError, match="module:attr"):
        as_retriever("bm25-without-colon")
    with pytest.raises(ValueError, match="result lists"):
        as_retriever(lambda queries, k: [])(["a"], 1)


def fake_search(queries, top_k):
    """A retriever function for `as_retriever("module:attr")`."""
    return [[(q, q, "")] for q in queries]


# HTTP ----------------------------------------------------------------------------------------------------------------
class MockServer:
    """A local retrieval server. ``responder(body) -> (status, payload, delay_s)`` decides each answer."""

    def __init__(self, responder):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                status, payload, delay = responder(body)
                time.sleep(delay)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/retrieve"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def ok(result):
    return lambda body: (200, {"result": result(body)}, 0.0)


def test_http_parses_dict_documents_with_scores_and_sends_the_payload():
    def result(body):
        return [
            [{"document": {"id": f"{q}-{i}", "contents": f"Title {i}\nbody {q}"}, "score": 1.0 - i} for i in range(5)]
            for q in body["queries"]
        ]

    with MockServer(ok(result)) as server:
        retriever = HTTPRetriever(server.url, payload={"topk_retrieval": 20, "topk_rerank": 3}, backoff=0)
        docs = retriever.search(["q1", "q2"], 3)
    assert server.requests == [
        {"queries": ["q1", "q2"], "topk": 3, "return_scores": True, "topk_retrieval": 20, "topk_rerank": 3}
    ]
    assert docs[0] == [Document(f"q1-{i}", f"Title {i}", "body q1") for i in range(3)]  # cut to top_k
    assert [d.key for d in docs[1]] == ["q2-0", "q2-1", "q2-2"]


def test_http_parses_plain_string_documents():
    with MockServer(ok(lambda body: [["T1\ntext one", "T2\ntext two"] for _ in body["queries"]])) as server:
        docs = HTTPRetriever(server.url, backoff=0).search(["q"], 3)
    assert docs == [[Document(None, "T1", "text one"), Document(None, "T2", "text two")]]
    assert docs[0][0].key == "(Title: T1) text one"


def test_http_retries_then_succeeds():
    def flaky(body):
        if len(server.requests) <= 2:
            return 503, {"error": "busy"}, 0.0
        return 200, {"result": [[{"document": "T\nx"}]]}, 0.0

    with MockServer(flaky) as server:
        docs = HTTPRetriever(server.url, max_retries=2, backoff=0).search(["q"], 1)
    assert len(server.requests) == 3
    assert docs == [[Document(None, "T", "x")]]


def test_http_failure_names_the_url_after_the_retries():
    with MockServer(lambda body: (500, "not json", 0.0)) as server:
        retriever = HTTPRetriever(server.url, max_retries=2, backoff=0)
        with pytest.raises(RuntimeError, match=server.url) as error:
            retriever.search(["q"], 3)
    assert len(server.requests) == 3  # one attempt plus calibadv_retriever_max_retries
    assert "2 retries" in str(error.value)


def test_http_timeout_is_retried_then_raises():
    with MockServer(lambda body: (200, {"result": [[]]}, 0.5)) as server:
        retriever = HTTPRetriever(server.url, timeout=0.05, max_retries=1, backoff=0)
        start = time.perf_counter()
        with pytest.raises(RuntimeError, match=server.url):
            retriever.search(["q"], 3)
        assert time.perf_counter() - start < 0.5
    assert len(server.requests) == 2


def test_http_connection_refused_and_malformed_responses():
    with MockServer(ok(lambda body: [])) as server:
        url = server.url
        with pytest.raises(RuntimeError, match="malformed"):  # one list for two queries: no silent empty result
            HTTPRetriever(url, backoff=0).search(["a", "b"], 3)
        assert len(server.requests) == 1  # a shape error is not retried
    with pytest.raises(RuntimeError, match=url):  # the server is gone
        HTTPRetriever(url, max_retries=1, backoff=0).search(["a"], 3)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"url": ""}, "calibadv_retriever_url"),
        ({"timeout": 0}, "calibadv_retriever_timeout"),
        ({"max_retries": -1}, "calibadv_retriever_max_retries"),
        ({"payload": [1]}, "calibadv_retriever_payload"),
    ],
)
def test_http_validation(kwargs, field):
    arguments = {"url": "http://127.0.0.1:1/retrieve", **kwargs}
    with pytest.raises(ValueError, match=field):
        HTTPRetriever(arguments.pop("url"), **arguments)
