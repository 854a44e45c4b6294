"""The offline script that writes DIVA-GRPO's ``variants`` and ``hints`` columns (spec ``specs/diva_grpo.md`` §3.1, §4).

Parsers on messy replies, the instructions, ``add_variant_columns`` with a fake backend, the Parquet round trip (images
included), the command line end to end (fake backend, ``--backend module:function``, a tiny local model) and the
OpenAI-compatible backend against a local stub server.
"""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from datasets import Dataset, load_dataset
from PIL import Image

from trl_ext.curriculum.offline_variants import (
    OpenAICompatibleBackend,
    TransformersChatBackend,
    add_variant_columns,
    answer_leaks,
    boxed_answer,
    hint_messages,
    main,
    parse_hints,
    parse_list,
    parse_rewordings,
    parse_solution_steps,
    rewording_messages,
    solution_messages,
    summarize,
    write_parquet,
)
from trl_ext.curriculum.variants import BuiltinVariantGenerator

# --------------------------------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------------------------------

PARSE_CASES = [
    ("1. Find x.\n2. Compute x.\n3. Determine x.", ["Find x.", "Compute x.", "Determine x."]),
    ("Here are two:\n\n1) Find x in [0, 1].\n2) What is x?\n\nHope this helps!", ["Find x in [0, 1].", "What is x?"]),
    ("(1) alpha\n(2) beta", ["alpha", "beta"]),
    ("1: alpha\n2: beta", ["alpha", "beta"]),
    ("- first\n- second\n* third\n• fourth", ["first", "second", "third", "fourth"]),
    ("**Step 1:** Read the base.\n**Step 2:** Read the height.", ["Read the base.", "Read the height."]),
    ("Step 1 - do a\nStep 2 - do b", ["do a", "do b"]),
    ("1. **Rewording 1:** Find y.\n2. Rewording 2: Compute y.", ["Find y.", "Compute y."]),
    ('1. "Quoted one."\n2. “Curly two.”', ["Quoted one.", "Curly two."]),
    ("1. A train leaves\n   at noon.\n2. Second.", ["A train leaves at noon.", "Second."]),
    (
        "1. Compute a.\n   - a is 3\n   - so far so good\n2. Compute b.",
        ["Compute a. - a is 3 - so far so good", "Compute b."],
    ),
    ("1.\nitem on the next line\n2.\nsecond", ["item on the next line", "second"]),
    (
        "1. Which value is x?\n\nA. 1\nB. 2\n\n2. Pick x.\nA. 1\n\nHope this helps!",
        ["Which value is x? A. 1 B. 2", "Pick x. A. 1"],
    ),
    ("# 1. heading style\n# 2. heading two", ["heading style", "heading two"]),
    ("```\n1. fenced\n2. list\n```", ["fenced", "list"]),
    (
        '```json\n["What is \\frac{1}{2} of 4?", "Compute 4 \\times \\beta."]\n```',
        ["What is \\frac{1}{2} of 4?", "Compute 4 \\times \\beta."],
    ),
    ('Sure! Here is the JSON:\n["a b", "c d"]\nDone.', ["a b", "c d"]),
    # JSON escapes are honoured, except that a \b \f \n \r \t followed by a letter is read as LaTeX (\neq, \frac).
    ('["properly \\\\escaped", "line\\n2", "x \\neq y"]', ["properly \\escaped", "line 2", "x \\neq y"]),
    ('{"rewordings": ["a b c", "d e f"]}', ["a b c", "d e f"]),
    ('[{"text": "from dict"}, {"step": "second"}]', ["from dict", "second"]),
    ("['python one', 'python two']", ["python one", "python two"]),
    ("<think>1. hidden\n2. hidden</think>\n1. real one\n2. real two", ["real one", "real two"]),
    ("scratch work</think>\n1. after the template's think", ["after the template's think"]),
    ("<think>1. reasoning cut off by max_new_tokens", []),
    (
        "1. The interval [0, 1] contains x.\n2. Another with {braces}.",
        ["The interval [0, 1] contains x.", "Another with {braces}."],
    ),
    ("[1, 2, 3]", []),
    ("[]", []),
    ("3.5 meters is the length.", []),
    ("Sorry, I cannot help with that.", []),
    ("x7#@!! ))( ]][[ {{", []),
    ("", []),
    ("   \n\n  ", []),
    (None, []),
    (42, []),
    (["not", "a", "string"], []),
]


@pytest.mark.parametrize(("reply", "expected"), PARSE_CASES)
def test_parse_list_messy_replies(reply, expected):
    assert parse_list(reply) == expected


def test_parse_list_never_raises_on_random_garbage():
    rng = random.Random(0)
    alphabet = "1234567890.-*()[]{}\"'\\:\n \tabcXYZ`<>/think"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        items = parse_list(text)
        assert isinstance(items, list) and all(isinstance(item, str) and item for item in items)
        assert isinstance(parse_rewordings(text, "q", 3, answer="12"), list)
        assert isinstance(parse_hints(text, "12"), list)


def test_parse_rewordings_drops_original_duplicates_and_caps():
    reply = "1. Find x.\n2. find X\n3. What is x?\n4. Find x!\n5. Solve for x.\n6. Give x.\n7. Determine x."
    assert parse_rewordings(reply, "What is x?", 3) == ["Find x.", "Solve for x.", "Give x."]
    assert parse_rewordings(reply, "What is x?", 1) == ["Find x."]
    assert parse_rewordings("1. What is x ?\n2.  what   is x", "What is x?", 3) == []


def test_parse_rewordings_keeps_multiline_layout_and_drops_solved_ones():
    reply = "1. Which value is x?\n   A. 1\n   B. 2\n2. Since 2x = 24, x is 12.\n3. Determine x."
    assert parse_rewordings(reply, "If 2x = 24, what is x?", 3, answer="12") == [
        "Which value is x?\nA. 1\nB. 2",
        "Determine x.",
    ]
    # The answer already occurs in the original: the rule cannot tell, nothing is dropped for it.
    assert parse_rewordings("1. Is 12 even?\n2. Tell whether 12 is even.", "Is 12 even?", 3, answer="12") == [
        "Tell whether 12 is even."
    ]


def test_answer_leak_rule():
    assert answer_leaks("so x = 12 here", "x=12")  # whitespace-insensitive
    assert answer_leaks("the ratio is \\frac{1}{2}", "$\\frac{1}{2}$")  # $...$ stripped
    assert answer_leaks("which gives 3\\sqrt{2}", "\\boxed{3\\sqrt{2}}")  # \boxed{} stripped
    assert answer_leaks("the pair 3, 4 works", ["3", "4"])  # list answers joined with ", "
    assert not answer_leaks("B is a point and 7 is a number", "B")  # 1-character answers are never checked
    assert not answer_leaks("anything", "7")
    assert not answer_leaks("anything", None)
    assert not answer_leaks("the value is 21", "12")


def test_parse_hints_answer_leak_and_announcements():
    reply = (
        "Here is the solution:\n"
        "1. Set up the equation 2x = 24.\n"
        "2. Divide both sides by 2, so x = 12.\n"  # leaks the answer
        "3. Check that the division is exact.\n"
        "4. The answer is twelve.\n"  # announces it
        "5. \\boxed{twelve}\n"
        "6. Final answer: twelve\n"
        "7. Answer: twelve\n"
        "8. Set up the equation 2x = 24.\n"  # duplicate
        "9. Simplify the result."
    )
    assert parse_hints(reply, "x=12") == [
        "Set up the equation 2x = 24.",
        "Check that the division is exact.",
        "Simplify the result.",
    ]
    # A 1-character answer is not checked (it would match everywhere); announcements still go.
    assert parse_hints("1. Compare the options A and B.\n2. The answer is B.", "B") == ["Compare the options A and B."]
    # The answer occurs in the question (a segment named AB): the leak rule is skipped.
    steps = parse_hints("1. Draw AB.\n2. Measure AB against CD.", "AB", question="Which is longer, AB or CD?")
    assert steps == ["Draw AB.", "Measure AB against CD."]
    assert parse_hints("1. Draw AB.\n2. Measure CD.", "AB", question="Which segment is longest?") == ["Measure CD."]


def test_parse_hints_caps_and_keeps_short_lists():
    reply = "\n".join(f"{i}. step number {i}" for i in range(1, 9))
    assert parse_hints(reply, "x") == [f"step number {i}" for i in range(1, 6)]
    assert parse_hints(reply, "x", max_steps=3) == [f"step number {i}" for i in range(1, 4)]
    assert parse_hints("1. only one step", "42") == ["only one step"]
    assert parse_hints("no list at all", "42") == []


def test_module_import_is_light():
    code = (
        "import sys, trl_ext.curriculum.offline_variants; "
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'trl', 'requests') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------------------------------------------------
# Instructions
# --------------------------------------------------------------------------------------------------------------------


def test_instruction_builders():
    messages = rewording_messages("  What is the area of the triangle?  ", 4)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "What is the area of the triangle?" in user and "4 different ways" in user and "answer" in user
    assert "numbered list" in user
    with pytest.raises(ValueError, match="num_rewordings"):
        rewording_messages("q", 0)

    user = hint_messages("Find x if 2x = 24.", "12")[1]["content"]
    assert "Find x if 2x = 24." in user and "Correct final answer (for your guidance only): 12" in user
    assert "3 to 5 short steps" in user and "Stop before the final answer" in user and "(12)" in user
    user = hint_messages("Find x.", None, min_steps=2, max_steps=4)[1]["content"]
    assert "Correct final answer" not in user and "2 to 4 short steps" in user
    with pytest.raises(ValueError, match="min_steps"):
        hint_messages("q", "a", min_steps=5, max_steps=3)


# --------------------------------------------------------------------------------------------------------------------
# add_variant_columns with a fake backend
# --------------------------------------------------------------------------------------------------------------------

QUESTIONS = ["What is the area of the red square?", "How many sides does the green shape have?", "Find x if 2x = 24."]
ANSWERS = ["16", "6", "12"]


class FakeBackend:
    """Canned replies keyed on the instruction kind; records every call."""

    def __init__(self):
        self.calls: list[list[list[dict]]] = []

    def __call__(self, conversations):
        self.calls.append(conversations)
        replies = []
        for messages in conversations:
            user = messages[-1]["content"]
            question = user.split("Problem:\n", 1)[1].split("\n", 1)[0].strip()
            if "different ways" in user:  # the original and a case-variant duplicate are dropped by the parser
                replies.append(
                    f"Sure:\n1. {question}\n2. Also: {question}\n3. also:  {question}\n4. Again: {question}\n"
                    f"5. More: {question}"
                )
            else:
                replies.append(f"1. Look at: {question}\n2. Think.\n3. The answer is obvious.")
        return replies

    def conversations(self):
        return [messages for call in self.calls for messages in call]


def canned_backend(conversations):
    """Module-level backend for ``--backend test_offline_variants:canned_backend``."""
    return FakeBackend()(conversations)


def _image_dataset():
    colours = [(220, 20, 20), (20, 200, 40), (30, 40, 230)]
    return Dataset.from_dict(
        {
            "prompt": [
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in QUESTIONS
            ],
            "image": [Image.new("RGB", (20 + 4 * i, 16), colour) for i, colour in enumerate(colours)],
            "answer": ANSWERS,
            "subject": ["geometry", "geometry", "algebra"],
        }
    )


def test_add_variant_columns_with_fake_backend(caplog):
    dataset = _image_dataset()
    backend = FakeBackend()
    with caplog.at_level(logging.WARNING, logger="trl_ext.curriculum.offline_variants"):
        result = add_variant_columns(dataset, backend, num_rewordings=2, batch_size=2, progress=False)
    assert "no `id` column" in caplog.text and "row index" in caplog.text

    # Batched: 2 rows (4 conversations) then 1 row (2 conversations).
    assert [len(call) for call in backend.calls] == [4, 2]
    conversations = backend.conversations()
    rewording_requests = [c[-1]["content"] for c in conversations if "different ways" in c[-1]["content"]]
    hint_requests = [c[-1]["content"] for c in conversations if "short steps" in c[-1]["content"]]
    assert len(rewording_requests) == len(hint_requests) == 3
    for question, answer, rewording, hint in zip(QUESTIONS, ANSWERS, rewording_requests, hint_requests):
        assert question in rewording and "2 different ways" in rewording and "answer (for your" not in rewording
        assert question in hint and f"Correct final answer (for your guidance only): {answer}" in hint

    assert result.column_names == ["prompt", "image", "answer", "subject", "variants", "hints", "id"]
    assert result["id"] == ["0", "1", "2"]
    assert result["subject"] == dataset["subject"] and result["answer"] == ANSWERS
    assert result["prompt"] == dataset["prompt"]
    for original, kept in zip(dataset["image"], result["image"]):
        assert kept.size == original.size and kept.getpixel((0, 0)) == original.getpixel((0, 0))
    for question, variants, hints in zip(QUESTIONS, result["variants"], result["hints"]):
        assert variants == [f"Also: {question}", f"Again: {question}"]  # original and duplicate dropped, capped at 2
        assert hints == [f"Look at: {question}", "Think."]  # the announcement step is dropped
    assert summarize(result) == {
        "rows": 3,
        "mean_rewordings_per_row": 2.0,
        "mean_hints_per_row": 2.0,
        "rows_without_rewordings": 0,
        "rows_without_hints": 0,
        "rows_without_either": 0,
    }


def test_add_variant_columns_question_column_overwrite_and_garbage():
    dataset = Dataset.from_dict(
        {
            "question": QUESTIONS,
            "solution_answer": ANSWERS,
            "id": [10, 11, 12],
            "variants": [["Kept rewording."], [], None],
            "hints": [[], ["Kept step."], []],
        }
    )
    backend = FakeBackend()
    result = add_variant_columns(
        dataset, backend, question_column="question", answer_column="solution_answer", progress=False
    )
    # Only the gaps are requested: 2 rewordings (rows 1, 2) and 2 hint lists (rows 0, 2).
    assert len(backend.conversations()) == 4
    assert result["variants"][0] == ["Kept rewording."] and result["hints"][1] == ["Kept step."]
    assert result["variants"][1] == [f"Also: {QUESTIONS[1]}", f"Again: {QUESTIONS[1]}", f"More: {QUESTIONS[1]}"]
    assert result["id"] == [10, 11, 12]  # an existing id column is left alone

    backend = FakeBackend()
    result = add_variant_columns(dataset, backend, question_column="question", answer_column=None, overwrite=True)
    assert len(backend.conversations()) == 6
    assert result["variants"][0][0] == f"Also: {QUESTIONS[0]}"
    assert all("Correct final answer" not in c[-1]["content"] for c in backend.conversations())

    # Replies that cannot be parsed give empty lists, never an error.
    garbage = lambda convs: ["garbage ]] {{"] * len(convs)  # noqa: E731
    result = add_variant_columns(
        dataset, garbage, question_column="question", answer_column="solution_answer", overwrite=True, progress=False
    )
    assert result["variants"] == [[], [], []] and result["hints"] == [[], [], []]
    assert result.features["variants"].feature.dtype == "string"


def test_add_variant_columns_errors():
    dataset = Dataset.from_dict({"question": ["q"], "answer": ["a"]})
    with pytest.raises(ValueError, match="no `prompt` column.*question_column"):
        add_variant_columns(dataset, canned_backend)
    with pytest.raises(ValueError, match="'problem'"):
        add_variant_columns(dataset, canned_backend, question_column="problem")
    with pytest.raises(ValueError, match="'final'"):
        add_variant_columns(dataset, canned_backend, question_column="question", answer_column="final")
    with pytest.raises(ValueError, match="returned 1 replies for 2 conversations"):
        add_variant_columns(dataset, lambda convs: ["1. x"], question_column="question", progress=False)
    with pytest.raises(ValueError, match="one split"):
        from datasets import DatasetDict

        add_variant_columns(DatasetDict(train=dataset), canned_backend)
    with pytest.raises(ValueError, match="backend"):
        add_variant_columns(dataset, object(), question_column="question")


def test_parquet_round_trip_keeps_columns_and_images(tmp_path):
    result = add_variant_columns(_image_dataset(), FakeBackend(), progress=False)
    paths = write_parquet(result, str(tmp_path / "out"), "train")
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["train-00000-of-00001.parquet"]
    loaded = load_dataset(str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))["train"]
    assert loaded["variants"] == result["variants"] and loaded["hints"] == result["hints"]
    assert loaded["id"] == ["0", "1", "2"] and loaded["prompt"] == result["prompt"]
    assert type(loaded.features["image"]).__name__ == "Image"
    for original, image in zip(result["image"], loaded["image"]):
        assert isinstance(image, Image.Image) and image.size == original.size
        assert image.convert("RGB").getpixel((1, 1)) == original.convert("RGB").getpixel((1, 1))
    # A rerun with more shards replaces the earlier files instead of mixing them.
    paths = write_parquet(result, str(tmp_path / "out"), "train", max_shard_size=1)
    assert len(paths) == 3 and sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.rsplit("/", 1)[-1] for p in paths
    )


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------


def _check_diva_ready(rows):
    """What the DIVA trainer expects: unique ids, list[str] variants/hints that its generator can use."""
    ids = [str(row["id"]) for row in rows]
    assert len(set(ids)) == len(ids)
    generator = BuiltinVariantGenerator()
    for row in rows:
        assert isinstance(row["variants"], list) and all(isinstance(v, str) for v in row["variants"])
        assert isinstance(row["hints"], list) and all(isinstance(h, str) for h in row["hints"])
        record = generator.build_variant(row, 6, -1, random.Random(0))  # a hint variant when hints exist
        assert record.transform == ("hint" if row["hints"] else "copy")
        record = generator.build_variant(row, 5, 0, random.Random(0))  # a rewording when rewordings exist
        assert record.transform == ("rewording" if row["variants"] else "copy")


def test_cli_end_to_end_with_injected_backend(tmp_path, capsys):
    source = tmp_path / "source"
    _image_dataset().save_to_disk(str(source))
    out = tmp_path / "out"
    code = main(["--dataset", str(source), "--out", str(out), "--limit", "2", "--num-rewordings", "2"], FakeBackend())
    assert code == 0
    printed = capsys.readouterr().out
    assert (
        "rows: 2" in printed and "mean rewordings per row: 2.00" in printed and "mean hints per row: 2.00" in printed
    )
    summary = json.loads(printed.split("summary: ", 1)[1])
    assert summary["rows"] == 2 and summary["rows_without_either"] == 0

    loaded = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))["train"]
    assert loaded.num_rows == 2 and loaded["id"] == ["0", "1"]
    assert loaded["variants"] == [[f"Also: {q}", f"Again: {q}"] for q in QUESTIONS[:2]]
    assert isinstance(loaded[0]["image"], Image.Image)
    _check_diva_ready(list(loaded))


def test_cli_backend_escape_hatch_and_json_source(tmp_path, capsys):
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in zip(QUESTIONS, ANSWERS)))
    out = tmp_path / "out"
    argv = [
        "--dataset", "json", "--data-files", str(data), "--cache-dir", str(tmp_path / "cache"),
        "--question-column", "question", "--split", "train[:2]",
        "--backend", "test_offline_variants:canned_backend", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    assert "rows: 2" in capsys.readouterr().out
    loaded = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))["train"]  # "train[:2]" -> split "train"
    assert loaded["question"] == QUESTIONS[:2] and loaded["id"] == ["0", "1"]
    assert loaded["hints"] == [[f"Look at: {q}", "Think."] for q in QUESTIONS[:2]]


def test_cli_argument_errors(tmp_path, capsys):
    source = tmp_path / "source"
    _image_dataset().save_to_disk(str(source))
    with pytest.raises(SystemExit):
        main(["--dataset", str(source), "--out", str(tmp_path / "o")])  # no backend
    assert "exactly one of --model, --base-url, --backend" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--dataset", str(source), "--out", str(tmp_path / "o"), "--base-url", "http://127.0.0.1:9"])
    assert "--server-model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--dataset", str(source), "--out", str(tmp_path / "o"), "--model", "m", "--backend", "a:b"])
    with pytest.raises(ValueError, match="'question'"):
        main(["--dataset", str(source), "--out", str(tmp_path / "o"), "--question-column", "question"], canned_backend)


def test_transformers_backend_folds_system_prompt_for_templates_without_system_role():
    class NoSystemTokenizer:
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            if any(m["role"] == "system" for m in messages):
                raise ValueError("System role not supported")
            return "|".join(f"{m['role']}:{m['content']}" for m in messages)

    backend = TransformersChatBackend.__new__(TransformersChatBackend)  # no model needed to render
    backend.tokenizer = NoSystemTokenizer()
    rendered = backend._render([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert rendered == "user:S\n\nU"


def test_cli_with_tiny_transformers_model(tmp_path, tiny_checkpoint, capsys):
    source = tmp_path / "source"
    _image_dataset().save_to_disk(str(source))
    out = tmp_path / "out"
    argv = [
        "--dataset", str(source), "--out", str(out), "--model", tiny_checkpoint, "--device", "cpu",
        "--max-new-tokens", "12", "--limit", "2", "--num-rewordings", "2",
    ]  # fmt: skip
    assert main(argv) == 0
    assert "rows: 2" in capsys.readouterr().out
    loaded = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))["train"]
    assert loaded.num_rows == 2 and isinstance(loaded[0]["image"], Image.Image)
    _check_diva_ready(list(loaded))  # a random model's replies are garbage: the lists may be empty


# --------------------------------------------------------------------------------------------------------------------
# OpenAI-compatible backend against a local stub server
# --------------------------------------------------------------------------------------------------------------------


class _StubServer:
    def __init__(self, failures_before_success=0, status=500):
        self.requests: list[tuple[str, dict, str | None]] = []
        self.failures = failures_before_success
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append((self.path, body, self.headers.get("Authorization")))
                if stub.failures > 0:
                    stub.failures -= 1
                    self.send_response(status)
                    self.end_headers()
                    self.wfile.write(b"try again")
                    return
                content = "1. echo " + body["messages"][-1]["content"].split("Problem:\n", 1)[1]
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_openai_compatible_backend_against_stub_server():
    with _StubServer() as server:
        backend = OpenAICompatibleBackend(server.url + "/v1/", "served-model", api_key="k", max_concurrency=3)
        conversations = [rewording_messages(f"question {i}", 2) for i in range(5)]
        replies = backend(conversations)
        assert replies == [f"1. echo question {i}" for i in range(5)]  # input order kept under concurrency
        path, body, auth = server.requests[0]
        assert path == "/v1/chat/completions" and auth == "Bearer k"
        assert (
            body["model"] == "served-model" and body["max_tokens"] == 1024 and body["messages"][0]["role"] == "system"
        )
        # It plugs into add_variant_columns like any backend.
        result = add_variant_columns(
            Dataset.from_dict({"prompt": ["What is x?"], "answer": ["12"]}), backend, progress=False
        )
        assert result["variants"] == [["echo What is x?"]] and result["hints"] == [["echo What is x?"]]

    with _StubServer(failures_before_success=2) as server:  # 5xx is retried
        backend = OpenAICompatibleBackend(server.url, "m", max_retries=2, retry_backoff=0.01)
        assert backend([rewording_messages("q", 1)]) == ["1. echo q"] and len(server.requests) == 3

    with _StubServer(failures_before_success=5) as server:
        backend = OpenAICompatibleBackend(server.url, "m", max_retries=1, retry_backoff=0.01)
        with pytest.raises(RuntimeError, match=r"/v1/chat/completions failed after 2 attempt.*HTTP 500"):
            backend([rewording_messages("q", 1)])

    with _StubServer(failures_before_success=1, status=404) as server:  # other 4xx fail at once
        backend = OpenAICompatibleBackend(server.url, "m", max_retries=3, retry_backoff=0.01)
        with pytest.raises(RuntimeError, match="HTTP 404"):
            backend([rewording_messages("q", 1)])
        assert len(server.requests) == 1

    with _StubServer() as server:
        dead_url = server.url
    backend = OpenAICompatibleBackend(dead_url, "m", max_retries=1, retry_backoff=0.01, timeout=2)
    with pytest.raises(RuntimeError, match=f"POST {dead_url}/v1/chat/completions failed after 2 attempt"):
        backend([rewording_messages("q", 1)])


# --------------------------------------------------------------------------------------------------------------------
# The authors' hint mode: full solutions ending in \boxed{}, kept only when right
# --------------------------------------------------------------------------------------------------------------------


def test_solution_messages_ask_for_a_boxed_solution_without_the_answer():
    user = solution_messages("Find x if 2x = 24.", min_steps=3, max_steps=5)[1]["content"]
    assert "Find x if 2x = 24." in user and "3 to 5 short steps" in user and "\\boxed{...}" in user
    assert "Correct final answer" not in user and "Stop before the final answer" not in user


@pytest.mark.parametrize(
    ("reply", "answer", "kept"),
    [
        ("1. Divide by 2.\n2. x = 12.\n3. So \\boxed{12}.", "12", 3),
        ("1. Divide by 2.\n2. So \\boxed{12.0}.", "12", 2),  # numbers compare as numbers
        ("1. Halve.\n2. So \\boxed{\\frac{1}{2}}.", "$\\frac{1}{2}$", 2),  # wrappers and spaces ignored
        ("1. Divide by 2.\n2. So \\boxed{13}.", "12", 0),  # wrong answer: the hint is rejected
        ("1. Divide by 2.\n2. x is twelve.", "12", 0),  # no boxed answer
        ("1. So \\boxed{12}.", "", 0),  # no gold answer to check against
        (None, "12", 0),
    ],
)
def test_parse_solution_steps_keeps_only_right_solutions(reply, answer, kept):
    steps = parse_solution_steps(reply, answer)
    assert len(steps) == kept
    if kept:
        assert "\\boxed" in steps[-1]  # the final step, with the answer, is kept (shown at the largest offsets)


def test_boxed_answer_balances_braces_and_takes_the_last():
    assert boxed_answer("\\boxed{1} then \\boxed{\\frac{a}{b}} end") == "\\frac{a}{b}"
    assert boxed_answer("\\boxed{unclosed") is None and boxed_answer("none") is None


class AuthorsBackend:
    """Full solutions: right for the first two questions, wrong for the third."""

    def __call__(self, conversations):
        replies = []
        for messages in conversations:
            user = messages[-1]["content"]
            question = user.split("Problem:\n", 1)[1].split("\n", 1)[0].strip()
            if "different ways" in user:
                replies.append("\n".join(f"{k}. In other words (take {k}), {question}" for k in range(1, 6)))
            else:
                answer = ANSWERS[QUESTIONS.index(question)]
                boxed = answer if question != QUESTIONS[2] else "13"
                replies.append(f"1. Read: {question}\n2. Work it out.\n3. The result is \\boxed{{{boxed}}}.")
        return replies


def test_cli_authors_mode_asks_for_five_rewordings_and_checks_solutions(tmp_path, capsys, caplog):
    source = tmp_path / "source"
    _image_dataset().save_to_disk(str(source))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="trl_ext.curriculum.offline_variants"):
        code = main(["--dataset", str(source), "--out", str(out), "--hint-mode", "authors"], AuthorsBackend())
    assert code == 0
    assert "1 solution(s) had no boxed answer matching `answer`" in caplog.text
    loaded = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))["train"]
    assert [len(v) for v in loaded["variants"]] == [5, 5, 5]  # the authors' 5 rewordings
    assert loaded["hints"][0] == [f"Read: {QUESTIONS[0]}", "Work it out.", "The result is \\boxed{16}."]
    assert loaded["hints"][2] == []  # the wrong solution is not a hint


def test_authors_mode_needs_the_answer_column():
    with pytest.raises(ValueError, match="hint_mode='authors' checks each solution"):
        add_variant_columns(_image_dataset(), AuthorsBackend(), answer_column=None, hint_mode="authors")
    with pytest.raises(ValueError, match="`hint_mode` must be one of"):
        add_variant_columns(_image_dataset(), AuthorsBackend(), hint_mode="paper")
