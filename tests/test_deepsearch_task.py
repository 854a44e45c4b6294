"""The built-in ``deepsearch`` task: a deterministic synthetic multi-hop QA dataset and corpus, BM25 over it, and the
F1 x format reward (specs/calibadv.md §2.3, §5.3)."""

from __future__ import annotations

import re

import pytest

from trl_ext.data import get_task, list_tasks
from trl_ext.data.deepsearch import (
    DEEPSEARCH_ALPHABET,
    DEEPSEARCH_TEMPLATES,
    build_deepsearch_world,
    deepsearch_corpus,
    deepsearch_questions,
    make_deepsearch_dataset,
    make_search_prompt,
    write_deepsearch_corpus_jsonl,
)
from trl_ext.retrieval import BM25Retriever
from trl_ext.rewards import make_qa_f1_format_reward, qa_f1_format_reward


def words(text):
    return set(re.findall(r"\w+", text.lower()))


@pytest.fixture(scope="module")
def retriever():
    return BM25Retriever(deepsearch_corpus())


def test_task_is_registered_with_the_reward():
    assert "deepsearch" in list_tasks()
    task = get_task("deepsearch")
    assert task.reward_funcs == [qa_f1_format_reward]
    assert not task.binary_rewards
    assert task.metadata["corpus"]() == deepsearch_corpus()


def test_dataset_is_deterministic_with_the_expected_columns():
    first, again = make_deepsearch_dataset(64, 3), make_deepsearch_dataset(64, 3)
    assert first.to_dict() == again.to_dict()
    assert first.to_dict() != make_deepsearch_dataset(64, 4).to_dict()
    assert set(first.column_names) == {"prompt", "question", "golden_answers", "id", "hops", "supporting_doc_ids"}
    row = first[0]
    assert row["prompt"] == make_search_prompt(row["question"])
    assert "<search>" in row["prompt"] and "<answer>" in row["prompt"] and row["question"] in row["prompt"]
    assert isinstance(row["golden_answers"], list) and all(isinstance(a, str) for a in row["golden_answers"])
    assert row["hops"] in (2, 3) and len(row["supporting_doc_ids"]) == row["hops"]
    # Same id, same question and answers.
    by_id = {}
    for r in make_deepsearch_dataset(512, 0):
        assert by_id.setdefault(r["id"], (r["question"], r["golden_answers"])) == (r["question"], r["golden_answers"])
    # The world depends on its own seed only.
    assert build_deepsearch_world(0) == build_deepsearch_world(0)
    assert deepsearch_corpus(1) != deepsearch_corpus(0)
    conversational = make_deepsearch_dataset(4, 0, prompt_builder=lambda q: [{"role": "user", "content": q}])
    assert conversational[0]["prompt"][0]["content"] == conversational[0]["question"]
    with pytest.raises(ValueError, match="num_rows"):
        make_deepsearch_dataset(0, 0)


def test_every_question_needs_at_least_two_hops():
    corpus = {doc.id: doc for doc in deepsearch_corpus()}
    questions = deepsearch_questions()
    assert len(questions) == len({q.id for q in questions}) == 224
    assert {q.template for q in questions} == set(DEEPSEARCH_TEMPLATES)
    for question in questions:
        assert question.hops >= 2 and len(question.supporting_doc_ids) == question.hops
        answer = words(question.golden_answers[0])
        # No document that mentions the question's entity contains the answer: one search cannot answer it.
        mentioning = [doc for doc in corpus.values() if question.entity in doc.title + " " + doc.text]
        assert [doc.id for doc in mentioning] == [question.supporting_doc_ids[0]]
        assert not answer & words(mentioning[0].contents), question
        assert not answer & words(question.question)
        # The chain: each document names the next one's title, and the last one holds the answer.
        chain = [corpus[doc_id] for doc_id in question.supporting_doc_ids]
        for current, following in zip(chain, chain[1:]):
            assert following.title in current.text
        assert answer <= words(chain[-1].text)


def test_bm25_finds_each_hop_document(retriever):
    corpus = {doc.id: doc for doc in deepsearch_corpus()}
    for question in deepsearch_questions():
        # First hop: the question itself retrieves the named entity's document first.
        top = retriever.search([question.question], 3)[0]
        assert top[0].id == question.supporting_doc_ids[0], question
        # Later hops: searching the bridge entity's name (read in the previous document) finds the next document.
        for doc_id in question.supporting_doc_ids[1:]:
            assert retriever.search([corpus[doc_id].title], 1)[0][0].id == doc_id


def test_alphabet_covers_prompts_corpus_and_answers():
    text = "".join(doc.title + doc.text for doc in deepsearch_corpus())
    text += "".join(make_search_prompt(q.question) + q.golden_answers[0] for q in deepsearch_questions())
    assert set(text) <= set(DEEPSEARCH_ALPHABET)


def test_corpus_round_trips_through_jsonl(tmp_path, retriever):
    path = write_deepsearch_corpus_jsonl(tmp_path / "corpus.jsonl")
    from_file = BM25Retriever.from_jsonl(path)
    assert from_file.documents == retriever.documents
    query = deepsearch_questions()[5].question
    assert from_file.search([query], 3) == retriever.search([query], 3)


# Reward: F1 x format -------------------------------------------------------------------------------------------------
def transcript(answer, search=True):
    steps = "<search> q </search>\n\n<information>Doc 1(Title: T) x</information>\n\n<think> b </think>\n"
    return f"<think> a </think>\n{steps if search else ''}<answer> {answer} </answer>"


def test_reward_f1_times_format():
    golds = [["Christopher Nolan"], ["beijing"], ["Paris", "City of Paris"], ["beijing"], ["x"]]
    completions = [
        transcript("Christopher Nolan director"),  # F1 0.8, valid
        transcript("The Beijing!"),  # F1 1, valid
        transcript("city of paris"),  # max over aliases
        transcript("beijing", search=False),  # right answer, invalid format (no search)
        "<think> a </think>",  # never answered
    ]
    rewards = qa_f1_format_reward(prompts=[""] * 5, completions=completions, golden_answers=golds)
    assert rewards == pytest.approx([0.8, 1.0, 1.0, 0.0, 0.0])


def test_reward_reads_the_rollout_fields_and_handles_missing_gold():
    valid = transcript("beijing")
    reward = qa_f1_format_reward(
        prompts=[""] * 4,
        completions=["ignored when a transcript is given", valid, valid, [{"role": "assistant", "content": valid}]],
        golden_answers=[["beijing"], ["beijing"], None, "beijing"],
        calibadv_transcript=[valid, None, valid, None],
        calibadv_invalid_action=[False, True, False, False],
    )
    assert reward == [1.0, 0.0, None, 1.0]  # transcript used; invalid action; unscorable; conversational
    with pytest.raises(ValueError, match="golden_answers"):
        qa_f1_format_reward(prompts=[""], completions=[valid])


def test_reward_with_prepended_think_token():
    completion = transcript("beijing")[len("<think>") :]  # the prompt ended with <think>
    think_reward = make_qa_f1_format_reward(prepend_think_token=True)
    assert think_reward.__name__ == "qa_f1_format_think"
    assert think_reward([""], [completion], golden_answers=[["beijing"]]) == [1.0]
    assert qa_f1_format_reward([""], [completion], golden_answers=[["beijing"]]) == [0.0]
