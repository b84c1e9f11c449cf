"""Which inbound texts are the STOP, START and HELP keywords."""

from __future__ import annotations

import pytest

from app.services.opt_out import classify_keyword


@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        *((w, "stop") for w in ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT")),
        *((w, "stop") for w in ("REVOKE", "OPTOUT", "OPT OUT")),
        *((w, "start") for w in ("START", "UNSTOP", "YES")),
        *((w, "help") for w in ("HELP", "INFO")),
        # Any case; whitespace and punctuation around the word do not count.
        ("Stop.", "stop"),
        (" opt out ", "stop"),
        ("\tRevoke!\n", "stop"),
        ("\u201cquit\u201d", "stop"),
        ("...yes...", "start"),
        ("Info?", "help"),
        ("\uff33\uff34\uff2f\uff30", "stop"),  # full-width letters
        # Between the two words of OPT OUT, any run of spaces (or a dash).
        ("opt   out", "stop"),
        ("Opt-Out", "stop"),
        # Not a keyword alone: a sentence, a longer word, nothing at all.
        ("stop please", None),
        ("please stop", None),
        ("STOPPED", None),
        ("opt out of what?", None),
        ("optout now", None),
        ("yes, at 3pm", None),
        ("helpful", None),
        ("", None),
        ("?!", None),
    ],
)
def test_keywords(text: str, keyword: str | None) -> None:
    assert classify_keyword(text) == keyword


def test_long_texts_are_read_in_one_pass() -> None:
    assert classify_keyword(" " * 200_000 + "stop" + "!" * 200_000) == "stop"
    assert classify_keyword("stop " + " " * 200_000 + " now") is None
    assert classify_keyword("a" + "-" * 200_000 + "b") is None
