"""Generate text from a checkpoint: ``python -m tbptt.sample checkpoint=PATH [temperature=0.8]``.

Other keys: ``length`` (characters to generate), ``prime`` (text to start from), ``seed``.

Did the model learn the character names? ``speakers`` reads the names on the speaker lines of a
text in the corpus layout (``tbptt/corpus.py``), ``names_probe`` the share of a sample's speaker
lines whose name is a real speaker. A speaker line is a name and a colon alone on a line that
starts the text or follows a blank line (``FIRST CITIZEN:``, ``Messenger:``, ``MARCELLUS &
BERNARDO:``): the same pattern reads the corpus and the sample, so the two are counted alike.
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tbptt import checkpoint
from tbptt.config import check, check_seed, positive
from tbptt.data import Vocab
from tbptt.errors import ConfigError
from tbptt.evaluate import load_model
from tbptt.model import CharRNN

# Letters (any case, any script), spaces, "&" (joint speakers), "'", "." and "-"; no digits or
# commas, so that a verse line such as "Hark, my lord:" after a blank line is no speaker. "\r"
# counts as trailing space: a corpus with Windows line endings reads the same.
SPEAKER_LINE = re.compile(
    r"(?:\A|^[ \t\r]*\n)"  # the text's start, or a blank line
    r"(?P<name>[^\W\d_](?:[^\W\d_]|[ &'.-])*):[ \t\r]*$",
    re.MULTILINE,
)
INVENTED_SHOWN = 5
MAX_LENGTH = 1_000_000  # characters in one sample: minutes for a large model, not hours


@dataclass
class SampleConfig:
    checkpoint: str = "???"
    temperature: float = 0.8
    length: int = 500
    prime: str = "\n"
    seed: int = 0

    def __post_init__(self) -> None:
        check(
            positive(self.temperature),
            f"temperature must be a finite number > 0, got {self.temperature}",
        )
        check(
            1 <= self.length <= MAX_LENGTH,
            f"length must be in [1, {MAX_LENGTH}], got {self.length}",
        )
        check(self.prime != "", "prime must be at least one character (the model reads it first)")
        check_seed(self.seed)


@torch.no_grad()
def generate(model: CharRNN, vocab: Vocab, prime: str, length: int, temperature: float) -> str:
    model.eval()
    unknown = sorted(set(prime) - set(vocab.chars))
    if unknown:
        raise ConfigError(f"prime has characters the model never saw: {unknown}")
    hidden = model.init_hidden(1)
    x = vocab.encode(prime).view(-1, 1)  # (T, 1)
    out: list[int] = []
    for _ in range(length):
        logits, hidden = model(x, hidden)  # (T, 1, V)
        last = logits[-1, 0]  # (V,)
        # Shifted to a maximum of 0 first: a tiny temperature then sends the other logits to
        # -inf (probability 0), where dividing them as they are overflows to inf - inf = NaN;
        # and the maximum stays 0 where the temperature is flushed to 0 (a denormal): 0 / 0.
        scaled = ((last - last.max()) / temperature).nan_to_num(nan=0.0)  # (V,)
        probs = torch.softmax(scaled, dim=-1)  # (V,)
        token = int(torch.multinomial(probs, 1))
        out.append(token)
        x = torch.tensor([[token]])
    return vocab.decode(out)


def parse(argv: list[str]) -> SampleConfig:
    # key=value pairs taken as raw strings (so prime="ROMEO:" stays text, not YAML), then typed
    # by the schema.
    pairs = dict(arg.partition("=")[::2] for arg in argv)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(SampleConfig), pairs)
    except OmegaConfBaseException as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ConfigError("checkpoint=PATH is required (a run's checkpoint.pt)")
    opts = OmegaConf.to_object(cfg)
    assert isinstance(opts, SampleConfig)
    return opts


def sample(opts: SampleConfig) -> str:
    """``opts.prime`` and the text the checkpoint's model generates after it, seeded by
    ``opts.seed`` without touching the caller's random state."""
    payload = checkpoint.load(opts.checkpoint)
    model = load_model(payload, opts.checkpoint)
    vocab = Vocab(payload["meta"]["vocab"])
    with torch.random.fork_rng(devices=[]):  # CPU generator only: sampling runs on the CPU
        torch.manual_seed(opts.seed)
        return opts.prime + generate(model, vocab, opts.prime, opts.length, opts.temperature)


def main(argv: list[str]) -> str:
    return sample(parse(argv))


# -- did it learn the character names? ------------------------------------------------------


def speakers(text: str) -> Counter[str]:
    """How many speeches each name on a speaker line of ``text`` opens."""
    return Counter(m.group("name").strip() for m in SPEAKER_LINE.finditer(text))


@dataclass
class NamesProbe:
    """The speaker lines of a sample: how many, how many name a real speaker (``share``: their
    fraction, NaN when there are none), and the most common invented names."""

    speaker_lines: int
    real: int
    share: float
    invented: list[str]


def names_probe(generated: str, known: set[str] | Counter[str]) -> NamesProbe:
    """The probe of ``generated`` against ``known``, the corpus's speakers (``speakers``)."""
    names = speakers(generated)
    lines = sum(names.values())
    real = sum(n for name, n in names.items() if name in known)
    invented = Counter({name: n for name, n in names.items() if name not in known})
    return NamesProbe(
        speaker_lines=lines,
        real=real,
        share=real / lines if lines else math.nan,
        invented=[name for name, _ in invented.most_common(INVENTED_SHOWN)],
    )


if __name__ == "__main__":
    try:
        print(main(sys.argv[1:]))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
