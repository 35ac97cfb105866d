"""``tbptt.sample``: the speaker lines of a text in the corpus layout, and the names probe."""

from __future__ import annotations

import math

import pytest

from tbptt.sample import NamesProbe, names_probe, speakers

PLAY = """FIRST CITIZEN:
Before we proceed any further, hear me speak.

ALL:
Speak, speak.

FIRST CITIZEN:
You are all resolved rather to die than to famish?
I say to MENENIUS: we know't.
MENENIUS:

Lady Capulet:
What, ho! Nurse!

MARCELLUS & BERNARDO:
Well.

Second Servingman:
Hark, my lord:

Here, my lord:
ROMEO: who calls?
"""


def test_speakers_are_the_names_that_open_speeches():
    # MENENIUS speaks nowhere: inside a line, and alone on a line in mid-speech; "Here, my
    # lord:" after a blank line has a comma, so it is verse; "ROMEO: who calls?" has text after
    # the colon.
    assert speakers(PLAY) == {
        "FIRST CITIZEN": 2,
        "ALL": 1,
        "Lady Capulet": 1,
        "MARCELLUS & BERNARDO": 1,
        "Second Servingman": 1,
    }


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("ROMEO:  \nHa.\n\nJULIET:\t\nHo.\n", {"ROMEO": 1, "JULIET": 1}),  # trailing spaces
        ("ROMEO:\r\nHa.\r\n\r\nJULIET:\r\nHo.\r\n", {"ROMEO": 1, "JULIET": 1}),  # Windows
        ("ROMEO:\nHa.\n   \nJULIET:\nHo.\n", {"ROMEO": 1, "JULIET": 1}),  # a blank with spaces
        ("\nROMEO:\nHa.\n\n\n\nJULIET:", {"ROMEO": 1, "JULIET": 1}),  # after the prime "\n"
        ("ROMEO:\nHa.\nJULIET:\nHo.\n", {"ROMEO": 1}),  # no blank line before JULIET
        ("ROMEO: Ha.\n\nJULIET: Ho.\n", {}),  # text after the colon: a line of verse
        ("  ROMEO:\nHa.\n", {}),  # indented
        ("1 2 3 1 2 3 ", {}),  # data=count
        ("", {}),
    ],
)
def test_speaker_lines_edge_cases(text, names):
    assert speakers(text) == names


def test_the_probe_counts_real_and_invented_speaker_lines():
    sample = "\nROMEO:\nO.\n\nROMIO:\nA.\n\nTHESEUS:\nB.\n\nROMIO:\nC.\n\nJULIET:\nD.\n\nBRUTUS"
    probe = names_probe(sample, speakers(PLAY) | {"ROMEO": 3, "JULIET": 2})
    # The unfinished last line has no colon yet: not a speaker line.
    assert probe == NamesProbe(speaker_lines=5, real=2, share=0.4, invented=["ROMIO", "THESEUS"])


def test_the_probe_accepts_a_set_and_lists_at_most_five_invented_names():
    sample = "\n\n".join(f"{name}:\nLine." for name in "A B B C D E F ROMEO".split())
    probe = names_probe(sample, {"ROMEO"})
    assert (probe.speaker_lines, probe.real) == (8, 1)
    assert probe.invented == ["B", "A", "C", "D", "E"]  # most common first, then first seen


def test_a_sample_without_speaker_lines_has_no_share():
    probe = names_probe("Thou art a villain.\nROMEO: no.\n", {"ROMEO"})
    assert (probe.speaker_lines, probe.real, probe.invented) == (0, 0, [])
    assert math.isnan(probe.share)
