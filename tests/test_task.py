import pytest

from headflow.images import fashionscenes as data
from headflow.models import llava_builder
from headflow.task.prompt import answer_token_ids, build_prompt, question_text


@pytest.fixture(scope="module")
def processor():
    return llava_builder.build_processor()


def test_prompt_is_llava15_and_role_tokens_are_separate(processor):
    prompt = build_prompt(processor, question_text("object"))
    assert prompt == "USER: <image>\nWhat is the main object in the image? Answer in one word. ASSISTANT:"
    toks = processor.tokenizer.tokenize(prompt)
    assert toks[-2:] == ["ASSISTANT", ":"]


def test_every_answer_word_is_one_distinct_token(processor):
    for words in data.ANSWER_WORDS.values():
        ids = answer_token_ids(processor, words, single_token=True)
        assert len(set(ids)) == len(words)
        assert processor.tokenizer.convert_ids_to_tokens(ids) == list(words)


def test_unknown_answer_word(processor):
    with pytest.raises(ValueError, match="'giraffe' is not in the tokenizer's vocabulary"):
        answer_token_ids(processor, ["bag", "giraffe"])


def test_ambiguous_first_tokens(processor):
    # "red bag" and "red shoe" start with the same token: the target would be ambiguous
    with pytest.raises(ValueError, match="share their first token"):
        answer_token_ids(processor, ["red bag", "red boot"])
    # first-token targets are fine when the first tokens differ
    assert len(answer_token_ids(processor, ["red bag", "blue bag"])) == 2


def test_multi_token_word_rejected_when_single_token_required(processor):
    with pytest.raises(ValueError, match="not one"):
        answer_token_ids(processor, ["red bag"], single_token=True)


def test_unknown_question_type():
    with pytest.raises(ValueError, match="unknown question type 'size'"):
        question_text("size")


def test_classes_are_the_answer_words():
    assert data.ANSWER_WORDS["object"] == data.CLASSES
