"""mmlens.answers: one extractor for steer, concepts and align (real models answer in sentences)."""

from __future__ import annotations

import pytest

from mmlens.answers import AnswerExtractor, normalise_text
from mmlens.errors import InputError


def test_yes_no_is_read_from_the_leading_word_as_pope_does():
    ex = AnswerExtractor()
    assert ex.extract("No, Moscow is not the capital of France.") == "no"
    assert ex.extract("Yes. There is a dog.") == "yes"
    assert ex.matches("No, Moscow is not the capital", "no")
    # a yes/no truth is never matched by containment: this sentence answers "no"
    assert not ex.matches("No, it is not yes", "yes")
    # without a leading yes/no word the text is no yes/no answer
    assert ex.extract("There is no dog") == "there is no dog"
    assert not ex.matches("There is no dog", "no")


def test_short_answers_match_by_whole_word_containment_and_long_ones_do_not():
    ex = AnswerExtractor()
    assert ex.matches("The capital of France is Paris.", "paris")
    assert ex.matches("The capital of Argentina is Buenos Aires.", "Buenos Aires")
    assert not ex.matches("The capital is Parisian", "paris")  # whole words only
    assert not ex.matches("a red square and a blue circle", "a blue circle and a red square")
    assert not AnswerExtractor(contains=False).matches("The capital of France is Paris.", "paris")
    assert not AnswerExtractor(short_words=1).matches("it is Buenos Aires", "buenos aires")


def test_a_closed_label_set_reads_the_first_label_named():
    ex = AnswerExtractor(labels=("positive", "negative"))
    assert ex.extract("The sentiment of this review is positive, not negative.") == "positive"
    assert ex.extract("Negative. Clearly not positive.") == "negative"
    assert ex.matches("The review is negative.", "negative")
    assert not ex.matches("The review is positive, not negative.", "negative")
    assert ex.extract("I cannot tell") == "i cannot tell"


def test_exact_mode_and_normalisation():
    assert normalise_text("  No no no. ") == "no"
    assert normalise_text("Red!!") == "red"
    exact = AnswerExtractor(exact=True)
    assert exact.extract("No, it is not") == "no, it is not"
    assert not exact.matches("The capital of France is Paris", "paris")
    assert exact.matches("Paris.", "paris")


def test_bad_options_are_one_line_errors():
    with pytest.raises(InputError, match="short_words"):
        AnswerExtractor(short_words=0)
    with pytest.raises(InputError, match="labels"):
        AnswerExtractor(labels=("positive", " "))


def test_align_reads_yes_no_and_short_answers_with_the_same_extractor():
    from mmlens.align.data import SFTExample
    from mmlens.align.eval import parse_yes_no
    from mmlens.align.judges import OracleJudge

    assert parse_yes_no("No, there is no cat.") == "no"
    assert parse_yes_no("Maybe") is None
    judge = OracleJudge(mentioned=lambda text: set())
    ex = SFTExample(image=None, prompt="what colour is the circle ?", answer="red")
    # a sentence naming the right colour beats a wrong one-word answer
    assert judge.judge([ex], ["The circle is red."], ["blue"]) == [0]
