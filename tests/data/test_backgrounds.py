"""Haystack backgrounds: held-out text, repeated only for haystacks that need more."""

from __future__ import annotations

import numpy as np

from memtx.data.tasks.backgrounds import background_note, haystack_background


def test_a_short_haystack_gets_the_text_itself_and_a_long_one_copies_of_it() -> None:
    text = np.arange(100, dtype=np.uint8)
    same, note = haystack_background(text, "held out", 50)
    assert same is text and note == "held out" == background_note(
        "held out", held_out=100, length=50
    )
    longer, note = haystack_background(text, "held out", 250)
    assert np.array_equal(longer, np.tile(text, 3)) and len(longer) >= 250 + 2
    assert note == "held out; repeated (3 copies) to fill the haystack"
    assert note == background_note("held out", held_out=100, length=250)
